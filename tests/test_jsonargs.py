"""A class's recipe arguments checked by jsonargparse (lightning_losses._jsonargs): every value against its type hint
(also inside lists, mappings, nested `class_path` specs and `**kwargs` passed on to a parent class), before anything
trains, in one line naming the key."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import pytest
from torch import nn

import lightning_losses as ll
from lightning_losses._jsonargs import parse_init_args
from lightning_losses.cli import main
from lightning_losses.config import build_run, load_recipe
from tests.helpers.own_model import OwnNet

OWN = {"data": {"class_path": "tests.helpers.own_model.TinyData"}, "trainer": {"accelerator": "cpu"}}


class TypedNet(OwnNet):
    """``OwnNet`` with typed containers, a nested module given by ``class_path``, and ``**kwargs`` for the parent."""

    def __init__(
        self,
        widths: list[int] | None = None,
        term_weights: dict[str, float] | None = None,
        backbone: nn.Module | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.widths, self.term_weights, self.backbone = widths, term_weights, backbone


def _model(**init_args):
    return {**OWN, "model": {"class_path": "tests.test_jsonargs.TypedNet", "init_args": init_args}}


class F:
    def __init__(
        self,
        n: int = 1,
        x: float = 1.0,
        flag: bool = True,
        mode: Literal["a", "b"] | None = None,
        when: str | timedelta | None = None,
        anything=None,
        obj: timedelta | None = None,
    ) -> None: ...


def test_parse_init_args_simple_types_unions_literals():
    kwargs = {"n": 3, "x": 2, "flag": False, "mode": "b", "when": "1h", "anything": object()}
    assert parse_init_args(F, kwargs, what="`f`", prefix="f") == kwargs
    for kwargs, match in [
        ({"n": True}, r"^`f.n` must be int, got True$"),  # a bool is not an int here
        ({"n": 2.5}, r"^`f.n` must be int, got 2.5$"),
        ({"n": "3"}, r"^`f.n` must be int, got '3'$"),  # a quoted number is not read as YAML again
        ({"n": None}, r"^`f.n` must be int, got None$"),
        ({"x": "1"}, r"^`f.x` must be float, got '1'$"),
        ({"flag": 0}, r"^`f.flag` must be a bool \(True or False\), got 0$"),
        ({"flag": "yes"}, r"^`f.flag` must be a bool \(True or False\), got 'yes'$"),
        ({"mode": "c"}, r"^`f.mode` must be one of 'a', 'b' or None, got 'c'$"),
        ({"mode": "bb"}, r"^`f.mode` must be one of 'a', 'b' or None, got 'bb'; did you mean `b`\?$"),
        ({"when": 3}, r"^`f.when` must be str or timedelta or None, got 3$"),
        ({"obj": "x"}, r"^`f.obj` must be timedelta or None, got 'x'$"),
        ({"nn": 1}, r"^`f` got an unexpected argument `nn`; did you mean `n`\? Valid arguments: `n`, `x`, `flag`"),
    ]:
        with pytest.raises(ll.ConfigurationError, match=match):
            parse_init_args(F, kwargs, what="`f`", prefix="f")


class Base:
    def __init__(self, k: int = None, name: int | str = 0) -> None:  # noqa: RUF013 - an implicit Optional, on purpose
        self.k, self.name = k, name


class Child(Base):
    def __init__(self, extra: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)


class Keeps:
    def __init__(self, a: int = 0, **kwargs) -> None:  # keeps what it does not know (not passed on)
        self.kwargs = kwargs


def test_parse_init_args_follows_kwargs_and_keeps_strings_a_hint_admits():
    assert parse_init_args(Child, {"k": None, "name": "3"}, what="`c`", prefix="c") == {"k": None, "name": "3"}
    with pytest.raises(ll.ConfigurationError, match=r"^`c` got an unexpected argument `kk`; did you mean `k`\?"):
        parse_init_args(Child, {"kk": 1}, what="`c`", prefix="c")  # a parent's name, through `**kwargs`
    with pytest.raises(ll.ConfigurationError, match=r"^`c.k` must be int or None, got 'x'$"):
        parse_init_args(Child, {"k": "x"}, what="`c`", prefix="c")
    assert parse_init_args(Keeps, {"a": 1, "zz": "x"}, what="`k`", prefix="k") == {"a": 1, "zz": "x"}


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        (_model(lr="abc"), r"^`model.init_args.lr` must be float, got 'abc'$"),  # via **kwargs, to OwnNet
        (_model(hidden=[3]), r"^`model.init_args.hidden` must be int, got \[3\]$"),
        (
            _model(hiden=3),
            r"^recipe section `model` got an unexpected argument `hiden`; did you mean `hidden`\? Valid arguments: ",
        ),
        (_model(widths=[4, "a"]), r"^`model.init_args.widths` must be list\[int\] or None, got \[4, 'a'\]$"),
        (
            _model(term_weights={"focal": "x"}),
            r"^`model.init_args.term_weights` must be dict\[str, float\] or None, got \{'focal': 'x'\}$",
        ),
        (
            _model(backbone={"class_path": "torch.nn.Linearr"}),
            r"^`model.init_args.backbone.class_path`: module `torch.nn` has no `Linearr`; did you mean `Linear`\?",
        ),
        (
            _model(backbone={"class_path": "torch.nn.Linear", "init_args": {"in_features": "x", "out_features": 2}}),
            r"^`model.init_args.backbone.init_args.in_features` must be int, got 'x'$",
        ),
        (
            _model(backbone={"class_path": "torch.nn.Linear", "init_args": {"in_feature": 2, "out_features": 2}}),
            r"^`model.init_args.backbone` \(Linear\) got an unexpected argument `in_feature`; did you mean "
            r"`in_features`\?",
        ),
        (
            _model(backbone={"class_path": "torch.nn.Linear", "init_args": {"out_features": 2}}),
            r"^`model.init_args.backbone` \(Linear\) is missing required argument\(s\): `in_features`$",
        ),
        (
            _model(backbone={"class_path": "lightning.pytorch.callbacks.Callback"}),
            r"^`model.init_args.backbone.class_path` must name a subclass of `torch.nn.modules.module.Module`",
        ),
        (
            {
                "logger": {
                    "class_path": "lightning.pytorch.loggers.CSVLogger",
                    "init_args": {"flush_logs_every_n_steps": "x"},
                }
            },
            r"^`logger.init_args.flush_logs_every_n_steps` must be int, got 'x'$",
        ),
        (
            {
                "trainer": {
                    "strategy": {
                        "class_path": "lightning.pytorch.strategies.DDPStrategy",
                        "init_args": {"start_method": "fork2"},
                    }
                }
            },
            r"^`trainer.strategy.init_args.start_method` must be one of 'popen', 'spawn', 'fork', 'forkserver', got "
            r"'fork2'; did you mean `fork`\?$",
        ),
        (None, r"^`trainer.precision` must be one of .*, got '16-mixd'; did you mean `16-mixed`\?$"),
        (
            {"trainer": {"plugins": [{"class_path": "lightning.pytorch.plugins.TorchCheckpointIOO"}]}},
            r"^`trainer.plugins\[0\].class_path`: module `lightning.pytorch.plugins` has no `TorchCheckpointIOO`; did",
        ),
    ],
)
def test_values_are_checked_against_type_hints_before_training(recipe, match, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ll.ConfigurationError, match=match):
        build_run(load_recipe(recipe, [] if recipe else ["trainer.precision=16-mixd"]))


def test_nested_class_specs_are_built(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    linear = {"class_path": "torch.nn.Linear", "init_args": {"in_features": 3, "out_features": 2}}
    model = build_run(load_recipe(_model(widths=[4, 5], backbone=linear, hidden=6, lr=0.5))).model
    assert isinstance(model.backbone, nn.Linear) and model.backbone.in_features == 3
    assert model.widths == [4, 5] and model.lr == 0.5 and model.net[0].out_features == 6


def test_data_sizes_reach_a_model_that_passes_them_on_through_kwargs(tmp_path, monkeypatch):
    """`num_features` / `num_classes` are OwnNet's, reached through TypedNet's `**kwargs`: linked from the data."""
    monkeypatch.chdir(tmp_path)
    recipe = {**_model(), "data": {"class_path": "tests.helpers.own_model.TinyData", "init_args": {"num_features": 5}}}
    assert build_run(load_recipe(recipe)).model.net[0].in_features == 5
    with pytest.raises(ll.ConfigurationError, match=r"^`model.num_classes` is set from the recipe's `data`"):
        build_run(load_recipe(recipe, ["model.num_classes=3"]))


def test_a_bad_nested_value_on_the_command_line_exits_2_in_one_line(tmp_path, monkeypatch, capsys):
    import lightning as L

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("trained"))
    argv = ["fit", "--model", "tests.test_jsonargs.TypedNet", "--data", "tests.helpers.own_model.TinyData"]
    assert main([*argv, "--model.widths", "[4, a]"]) == 2
    err = capsys.readouterr().err
    assert err == "lightning-losses: error: `model.init_args.widths` must be list[int] or None, got [4, 'a']\n"
