"""`lightning-losses fit | validate | test | predict` on a user's own model and data (tests/helpers/own_model.py),
given by import path in a recipe: exact resume with `--ckpt_path last`, the saved recipe, one-line errors."""

from pathlib import Path

import pytest
import torch
import yaml

from lightning_losses.cli import main
from lightning_losses.config import load_recipe

RECIPE = """
seed: 3
model:
  class_path: tests.helpers.own_model.OwnNet
  init_args: {hidden: 12}
data:
  class_path: tests.helpers.own_model.TinyData
  init_args: {batch_size: 16}
objective: {focal: {gamma: 1.0}}
callbacks: {sam: {rho: 0.05}}
trainer: {max_epochs: 2, accelerator: cpu, enable_progress_bar: false, enable_model_summary: false}
"""


def _newest(root: Path, pattern: str) -> Path:
    return sorted(root.rglob(pattern), key=lambda p: p.stat().st_mtime_ns)[-1]


def _weights(root: Path) -> tuple[dict, int]:
    state = torch.load(_newest(root, "*.ckpt"), map_location="cpu", weights_only=False)
    return state["state_dict"], state["global_step"]


def test_own_model_fit_resume_validate_test_predict(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(RECIPE)
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    assert main(["fit", "-c", str(recipe), "--trainer.default_root_dir", str(full), "--trainer.max_epochs", "4"]) == 0
    assert "test/acc" in capsys.readouterr().out  # fit tests the fitted weights: the model has a test_step
    assert main(["fit", "-c", str(recipe), "--trainer.default_root_dir", str(resumed)]) == 0  # 2 epochs
    argv = ["fit", "-c", str(recipe), "--trainer.default_root_dir", str(resumed), "--trainer.max_epochs", "4"]
    assert main([*argv, "--ckpt_path", "last"]) == 0
    (want, want_step), (got, got_step) = _weights(full), _weights(resumed)
    assert got_step == want_step == 4 * 3  # 48 training samples / 16 per batch x 4 epochs
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)  # bit-exact resume
    first, _ = _weights(resumed.parent / "resumed" / "lightning_losses" / "version_0")
    assert not all(torch.equal(first[k], got[k]) for k in got)  # the resumed run trained on: the check has teeth

    # the full resolved recipe beside the checkpoints and in the CSV logger's hparams.yaml
    config = yaml.safe_load((resumed / "lightning_losses" / "version_1" / "config.yaml").read_text())
    assert config["model"] == {"class_path": "tests.helpers.own_model.OwnNet", "init_args": {"hidden": 12}}
    assert config["data"]["init_args"] == {"batch_size": 16} and config["seed"] == 3
    assert config["objective"] == {"focal": {"gamma": 1.0}} and config["callbacks"] == {"sam": {"rho": 0.05}}
    assert config["trainer"]["max_epochs"] == 4 and config["ckpt_path"] == "last" and config["subcommand"] == "fit"
    assert {"lightning_losses", "lightning", "torch", "python"} <= set(config["versions"])
    hparams = yaml.safe_load((resumed / "lightning_losses" / "version_1" / "hparams.yaml").read_text())
    assert hparams["trainer"] == config["trainer"] and hparams["versions"] == config["versions"]
    assert hparams["hidden"] == 12  # the model's own save_hyperparameters are kept beside it

    capsys.readouterr()
    for sub, ckpt in (("validate", "best"), ("test", "last"), ("predict", "last")):
        assert main([sub, "-c", str(recipe), "--trainer.default_root_dir", str(resumed), "--ckpt_path", ckpt]) == 0
        assert _newest(resumed, f"{sub}_results.json").parent == _newest(resumed, "config.yaml").parent
    out = capsys.readouterr().out
    assert "val/loss" in out and "test/acc" in out and "predicted batches" in out
    predictions = torch.load(_newest(resumed, "predictions.pt"), weights_only=False)
    assert torch.cat(predictions).shape == (24,)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model.class_path", "tests.helpers.own_model.OwnNett"],
            r"`model.class_path`: module `tests.helpers.own_model` has no `OwnNett`; did you mean `OwnNet`\?",
        ),
        (["--model.hiden", "3"], r"recipe section `model` got an unexpected argument `hiden`; did you mean `hidden`\?"),
        (["--model.hidden", "abc"], r"`model.init_args.hidden` must be int, got 'abc'"),
        (["--data.init_args.batch_size", "1.5"], r"`data.init_args.batch_size` must be int, got 1.5"),
        (["--model.num_classes", "3"], r"`model.num_classes` is set from the recipe's `data`"),
        (
            ["--data.class_path", "torch.nn.Linear"],
            r"`data.class_path` must name a subclass of `lightning",
        ),
        (["--ckpt_path", "last"], r"`ckpt_path` 'last': no checkpoint \(\*.ckpt\) under `.*empty`"),
        (["--ckpt_path", "nope.ckpt"], r"`ckpt_path` must be a checkpoint file, `last` or `best`, got 'nope.ckpt'"),
    ],
)
def test_own_model_errors_exit_2_in_one_line(argv, message, tmp_path, monkeypatch, capsys):
    import lightning as L

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(L.Trainer, "fit", lambda *a, **k: pytest.fail("trained"))
    (tmp_path / "mine.yaml").write_text(RECIPE)
    assert main(["fit", "-c", "mine.yaml", "--trainer.default_root_dir", "empty", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lightning-losses: error: "), err
    assert pytest.importorskip("re").search(message, err), err


def test_a_model_without_the_mixin_takes_no_objective(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    boring = ["--model", "lightning.pytorch.demos.boring_classes.BoringModel", "--data", "null"]
    fast = ["--trainer.max_steps", "2", "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]
    assert main(["fit", *boring, *fast]) == 0  # the default objective is not forced on it
    assert main(["fit", *boring, "--objective", "{focal: {}}", *fast]) == 2
    assert "`objective` configures a model that uses `lightning_losses.LossesMixin`; `BoringModel` does not" in (
        capsys.readouterr().err
    )


def test_recipes_merge_in_order_and_a_new_class_replaces_the_section(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("model: {hidden_dim: 32}\ntrainer: {max_epochs: 3}\n")
    b.write_text("model: {class_path: tests.helpers.own_model.OwnNet, hidden: 5}\ntrainer: {devices: 1}\n")
    cfg = load_recipe([a, b], ["model.lr=0.5", "vars.e=7", "trainer.max_epochs=${vars.e}"])
    assert dict(cfg.model) == {"class_path": "tests.helpers.own_model.OwnNet", "init_args": {"hidden": 5, "lr": 0.5}}
    assert cfg.trainer.max_epochs == 7 and cfg.trainer.devices == 1
    assert dict(load_recipe(a).model)["hidden_dim"] == 32  # the demo's arguments: merged onto the default's
    same = load_recipe([b, {"model": {"init_args": {"lr": 0.1}}}, {"model": {"hidden": 6}}])
    assert dict(same.model.init_args) == {"hidden": 6, "lr": 0.1}  # the same class: its arguments merge
    back = load_recipe(b, ["model.class_path=lightning_losses.demo.DigitsClassifier"])
    assert dict(back.model) == {"class_path": "lightning_losses.demo.DigitsClassifier", "init_args": {}}


def _sync_dist_warnings_on_rank(root: str) -> list[str]:
    """Validate and test the fixture model inside the initialised process group; the "sync_dist" warnings raised."""
    import warnings

    import lightning as L
    from lightning.pytorch.trainer.connectors.logger_connector import result
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from tests.helpers.own_model import OwnNet, TinyData

    result.warning_cache.clear()  # Lightning warns once per message and process: the pool's processes are reused
    data = TinyData()
    model = OwnNet(num_features=data.num_features, num_classes=data.num_classes)
    model.configure_objective({"cross_entropy": {}, "focal": {"gamma": 1.0}})  # `val/loss` and one key per term
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    # the pool's processes are reused: an earlier test may have left Lightning's rank-zero flag at this rank, which
    # would silence every warning on rank 1 (and the check below would lose its teeth there)
    previous, rank_zero_only.rank = rank_zero_only.rank, 0
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.validate(model, datamodule=data, verbose=False)
            trainer.test(model, datamodule=data, verbose=False)
    finally:
        rank_zero_only.rank = previous
    return [str(w.message) for w in caught if "sync_dist=True" in str(w.message)]


@pytest.mark.ddp
def test_no_sync_dist_warning_for_the_mixins_own_epoch_logs_under_ddp(ddp, tmp_path):
    """In a 2-process group, the mixin's epoch-level `val/loss`, `val/<term>`, `test/...` (global already) raise no
    "use sync_dist" warning; the fixture model's own unsynced `test/acc` still does (the check has teeth)."""
    for caught in ddp.run(_sync_dist_warnings_on_rank, str(tmp_path)):
        assert any("self.log('test/acc'" in m for m in caught), caught
        mixin_keys = [f"{s}/{k}" for s in ("val", "test") for k in ("loss", "cross_entropy", "focal")]
        assert not [m for m in caught if any(f"self.log('{key}'" in m for key in mixin_keys)], caught


def test_one_thread_for_the_demo_only_when_omp_num_threads_is_unset(tmp_path, monkeypatch):
    from lightning_losses.runner import run

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text(RECIPE)
    quick = ["trainer.max_steps=1", "trainer.limit_val_batches=0", "trainer.limit_test_batches=1", "logger=none"]
    before = torch.get_num_threads()
    try:
        for env, recipe, want in (("", None, 1), ("", "mine.yaml", 2), ("2", None, 2)):
            monkeypatch.setenv("OMP_NUM_THREADS", env) if env else monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
            torch.set_num_threads(2)
            run("fit", recipe, [*quick, f"trainer.default_root_dir=r{want}{env}"], print_results=False)
            assert torch.get_num_threads() == want, (env, recipe)
    finally:
        torch.set_num_threads(before)
