"""The registry stamps a reweighter's name (``strategy``); ``hparams`` (and so ``repr``) is generated from the
constructor's signature by :meth:`Reweighter.capture_hparams`, with the reprs of every built-in strategy unchanged."""

from __future__ import annotations

import inspect

import pytest
import torch

import lightning_losses as ll
from lightning_losses.registry import Registry
from lightning_losses.reweighting import REWEIGHTERS, Reweighter

# repr of each built-in strategy, as hand-built before the hparams were generated (must not change)
REPRS = [
    ("group_dro", {}, "GroupDRO(step_size=0.01, adjustment=0.0, num_groups=None)"),
    ("group_dro", {"num_groups": 3}, "GroupDRO(step_size=0.01, adjustment=0.0, num_groups=3)"),
    (
        "group_dro",
        {"group_counts": [4, 1], "adjustment": 1.0},
        "GroupDRO(step_size=0.01, adjustment=1.0, num_groups=2)",
    ),
    ("class_balanced", {}, "ClassBalanced(beta=0.999, samples_per_class=None, num_classes=None, start_epoch=0)"),
    (
        "class_balanced",
        {"samples_per_class": [3, 1], "num_samples": 10},
        "ClassBalanced(beta=0.999, samples_per_class=[3, 1], num_classes=None, start_epoch=0)",
    ),
    ("ema_class_loss", {"num_classes": 4}, "EMAClassLoss(momentum=0.9, temperature=1.0, num_classes=4)"),
    ("loss_softmax", {"temperature": 2.0}, "LossSoftmax(temperature=2.0)"),
    ("lin_upper", {}, "LinUpper(delta=1.0, temperature=1.0, warmup_steps=0)"),
    ("quadratic", {"warmup_steps": 3}, "Quadratic(delta=1.0, temperature=1.0, warmup_steps=3)"),
    ("extremes", {}, "Extremes(delta=1.0, temperature=1.0, warmup_steps=0)"),
    ("cvar", {"alpha": 0.5}, "CVaR(alpha=0.5)"),
    ("top_k", {"k": 2}, "TopK(k=2)"),
    (
        "spectral_risk",
        {"spectrum": [0.1, 0.3, 0.6]},
        "SpectralRisk(spectrum=[0.10000000149011612, 0.30000001192092896, 0.6000000238418579])",
    ),
    ("loss_truncation", {"drop_fraction": 0.1}, "LossTruncation(drop_fraction=0.1)"),
    ("per_sample_ema", {"num_samples": 8}, "PerSampleEMA(momentum=0.9, temperature=None)"),
    ("per_sample_ema", {"temperature": 0.5}, "PerSampleEMA(momentum=0.9, temperature=0.5)"),
    ("jtt", {"upweight": 5.0, "stage_epochs": 2, "num_samples": 8}, "JTT(upweight=5.0, stage_epochs=2)"),
    ("wpo", {}, "WPO(max_weight=1.0)"),
    ("wpo", {"max_weight": None}, "WPO(max_weight=None)"),
]


@pytest.mark.parametrize(("name", "kwargs", "expected"), REPRS)
def test_generated_hparams_keep_every_repr(name, kwargs, expected):
    assert repr(ll.build_reweighter(name, **kwargs)) == expected


@pytest.mark.parametrize("name", ll.list_reweighters())
def test_registry_stamps_the_strategy_name(name):
    """The name is written once, in ``@REWEIGHTERS.register(name)``: the class body does not repeat it."""
    cls = REWEIGHTERS.get(name)
    assert cls.strategy == name and vars(cls)["strategy"] == name
    assert "strategy =" not in inspect.getsource(cls), f"{cls.__name__} writes `strategy` again"


class _Tilt(Reweighter):
    def __init__(self, temperature: float = 1.0, spectrum=(1.0, 3.0), num_samples: int | None = None, **extra) -> None:
        super().__init__()
        self.temperature = float(temperature)
        self.spectrum = torch.tensor(spectrum, dtype=torch.float64)
        rounded = int(num_samples or 0)  # noqa: F841  (a local, not an argument: never captured)
        self.hparams = self.capture_hparams(locals())

    def compute(self, losses, synced, inputs):
        return torch.ones_like(losses)


def test_capture_hparams_reads_attributes_then_locals_in_signature_order():
    """Validated attribute first (``temperature`` as float, ``spectrum`` tensor as a list); ``num_samples`` and the
    ``**extra`` catch-all are left out."""
    r = _Tilt(temperature=2, spectrum=[0.5, 0.5], num_samples=8, other=1)
    assert r.hparams == {"temperature": 2.0, "spectrum": [0.5, 0.5]}
    assert repr(r) == "_Tilt(temperature=2.0, spectrum=[0.5, 0.5])"


def test_register_stamps_and_refuses_a_second_different_name():
    reg = Registry("reweighter", name_attr="strategy")

    @reg.register("tilt_one")
    class One(_Tilt):
        pass

    assert One.strategy == "tilt_one" and reg.build("tilt_one").strategy == "tilt_one"
    with pytest.raises(ll.ConfigurationError, match=r"reweighter `tilt_two`: the class sets `strategy` = 'other';"):

        @reg.register("tilt_two")
        class Two(_Tilt):
            strategy = "other"

    assert "tilt_two" not in reg

    @reg.register("tilt_three")
    class Three(_Tilt):
        strategy = "tilt_three"  # the same name written again is tolerated

    assert Three.strategy == "tilt_three"


def test_unregister_removes_the_name_and_its_aliases():
    reg = Registry("widget")
    reg.register("spinner", aliases=("top",))(type("Spinner", (), {}))
    reg.unregister("top")
    assert "spinner" not in reg and "top" not in reg and len(reg) == 0
    with pytest.raises(ll.ConfigurationError, match=r"unknown widget `spinner`"):
        reg.unregister("spinner")
