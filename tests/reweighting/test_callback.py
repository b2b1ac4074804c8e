"""The SampleReweighting callback with a real Trainer: recipes, logging, errors, checkpoint resume, and one
2-process DDP run through the command line."""

import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

import lightning_losses as ll
from lightning_losses.config import build_run, load_recipe
from lightning_losses.demo import DigitsClassifier, DigitsDataModule
from lightning_losses.errors import ConfigurationError
from lightning_losses.reweighting.callback import _Attached
from lightning_losses.reweighting.step_logs import GroupSums
from tests.helpers.trainers import LoggedMetrics

ROOT = Path(__file__).resolve().parents[2]


def _trainer(tmp_path, callbacks, **kwargs):
    defaults = dict(
        max_epochs=1,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        default_root_dir=str(tmp_path),
    )
    defaults.update(kwargs)
    return L.Trainer(callbacks=callbacks, **defaults)


def test_recipe_builds_the_callback():
    (cb,) = ll.build_callbacks({"sample_reweighting": {"strategy": "group_dro", "step_size": 0.05}})
    assert isinstance(cb, ll.SampleReweighting) and cb.reweighter.step_size == 0.05
    assert "sample_reweighting" in ll.list_callbacks()
    with pytest.raises(ConfigurationError, match="unexpected argument `stepsize`; did you mean `step_size`"):
        ll.build_callbacks({"sample_reweighting": {"strategy": "group_dro", "stepsize": 0.05}})
    cfg = load_recipe(None, ["callbacks={sample_reweighting: {strategy: cvar, alpha: 0.5}}", "data.spurious=0.9"])
    run = build_run(cfg)
    assert isinstance(run.callbacks[0].reweighter, ll.reweighting.CVaR)


def test_fit_logs_weight_and_group_statistics(tmp_path):
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=32, spurious=0.9)
    model = DigitsClassifier(num_features=dm.num_features, dropout=0.0)
    cb = ll.SampleReweighting("group_dro", step_size=0.5, log_every_n_steps=2)
    _trainer(tmp_path, [cb], limit_train_batches=6).fit(model, datamodule=dm)
    assert cb.reweighter.num_groups == 2 and int(cb.reweighter.step) == 6
    assert not torch.allclose(cb.reweighter.q, torch.full((2,), 0.5, dtype=torch.float64))
    weights = model.objective_output.weights
    assert weights.shape == (32,) and bool((weights > 0).all())


def test_fit_logged_metrics(tmp_path):
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=32, spurious=0.9)
    model = DigitsClassifier(num_features=dm.num_features, dropout=0.0)
    cb = ll.SampleReweighting("group_dro")
    trainer = _trainer(tmp_path, [cb], limit_train_batches=4, log_every_n_steps=2)
    trainer.fit(model, datamodule=dm)
    logged = trainer.callback_metrics
    for key in ("reweight/ess", "reweight/entropy", "reweight/max", "reweight/min", "reweight/q/0", "reweight/q/1"):
        assert key in logged, key
    assert "reweight/worst_group_acc" in logged and "reweight/group_acc/1" in logged
    assert 0 < float(logged["reweight/ess"]) <= 1
    assert float(logged["reweight/worst_group_acc"]) == min(
        float(logged["reweight/group_acc/0"]), float(logged["reweight/group_acc/1"])
    )


class _FirstBatchOneGroup(DigitsDataModule):
    """Spurious digits whose first batch holds group 0 only (a rare group can miss the first batch)."""

    def __init__(self, groups_known=True, **kwargs):
        super().__init__(spurious=0.95, batch_size=8, **kwargs)
        self.groups_known = groups_known

    @property
    def num_groups(self):
        return 2 if self.groups_known else 0

    def train_dataloader(self):
        self.setup()
        dataset = self.datasets["train"]
        group = dataset.tensors["group"]
        order = torch.cat([torch.nonzero(group == g).flatten()[:8] for g in (0, 1)])
        return DataLoader(torch.utils.data.Subset(dataset, order.tolist()), batch_size=8)


def test_datamodule_sizes_the_groups(tmp_path):
    assert DigitsDataModule(spurious=0.9).num_groups == 2 and DigitsDataModule().num_groups == 0
    model = DigitsClassifier(num_features=74, dropout=0.0)
    cb = ll.SampleReweighting("group_dro", step_size=0.5, log_every_n_steps=1)
    _trainer(tmp_path, [cb], limit_train_batches=2).fit(model, datamodule=_FirstBatchOneGroup())
    assert cb.reweighter.num_groups == 2 and cb._group_sums.size == 2
    assert not torch.allclose(cb.reweighter.q, torch.full((2,), 0.5, dtype=torch.float64))  # q moved, both groups
    # without a known group count training does not start (the first batch would give 1 group: too small)
    unsized = ll.SampleReweighting("group_dro", step_size=0.5)
    with pytest.raises(
        ConfigurationError, match=r"SampleReweighting\(`group_dro`\) needs `num_groups` before training"
    ):
        _trainer(tmp_path, [unsized], limit_train_batches=2).fit(model, datamodule=_FirstBatchOneGroup(False))
    assert int(unsized.reweighter.step) == 0 and unsized.reweighter.num_groups == 0  # nothing ran


def test_missing_group_names_the_key(tmp_path):
    dm = DigitsDataModule(batch_size=16)  # no spurious groups -> no `group` in the batch
    model = DigitsClassifier()
    with pytest.raises(ValueError, match=r"reweighter `group_dro` needs `group` in compute_loss"):
        cb = ll.SampleReweighting("group_dro", num_groups=2)
        _trainer(tmp_path, [cb], limit_train_batches=1).fit(model, datamodule=dm)


def test_requires_the_mixin(tmp_path):
    class Plain(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(2, 1)

    with pytest.raises(ConfigurationError, match="SampleReweighting needs a LightningModule that uses"):
        ll.SampleReweighting("cvar", alpha=0.5).setup(None, Plain(), "fit")


def test_suppressed_pass_reuses_weights():
    class Module:
        objective_logging_suppressed = False

    module, reweighter = Module(), ll.build_reweighter("group_dro", step_size=1.0)
    attached = _Attached(reweighter, module)
    inputs = {"losses": torch.tensor([1.0, 0.0]), "group": torch.tensor([0, 1])}
    first = attached(**inputs)
    module.objective_logging_suppressed = True  # the perturbed (second) pass of SAM
    second = attached(losses=torch.tensor([5.0, 0.0]), group=torch.tensor([0, 1]))
    assert second is first and int(reweighter.step) == 1


def _loader(dm):
    return DataLoader(dm.datasets["train"], batch_size=64, shuffle=False)


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("per_sample_ema", {"momentum": 0.5, "temperature": 1.0}),  # per-sample store
        ("group_dro", {"step_size": 0.5, "num_groups": 2}),  # q, moved every optimizer step
        ("jtt", {"upweight": 3.0, "stage_epochs": 1}),  # the error set recorded in epoch 0, used in epoch 1
    ],
)
def test_checkpoint_resume_continues_exactly(tmp_path, name, options):
    def model_and_data():
        torch.manual_seed(0)
        dm = DigitsDataModule(spurious=0.9)
        dm.setup()
        return DigitsClassifier(num_features=dm.num_features, dropout=0.0, cosine_schedule=False), dm

    kwargs = {"limit_train_batches": 5, "enable_checkpointing": True}
    model, dm = model_and_data()
    straight = ll.SampleReweighting(name, **options)
    _trainer(tmp_path / "a", [straight], max_epochs=2, **kwargs).fit(model, train_dataloaders=_loader(dm))

    first_model, dm = model_and_data()
    first = ll.SampleReweighting(name, **options)
    _trainer(tmp_path / "b", [first], max_epochs=1, **kwargs).fit(first_model, train_dataloaders=_loader(dm))
    (ckpt,) = (tmp_path / "b").rglob("*.ckpt")
    assert f"SampleReweighting{{'strategy': '{name}'}}" in torch.load(ckpt, weights_only=False)["callbacks"]

    resumed_model, dm = model_and_data()  # a new process: fresh model and callback, state from the checkpoint
    resumed = ll.SampleReweighting(name, **options)
    trainer = _trainer(tmp_path / "c", [resumed], max_epochs=2, **kwargs)
    trainer.fit(resumed_model, train_dataloaders=_loader(dm), ckpt_path=str(ckpt))
    final, reference = resumed.reweighter.state_dict(), straight.reweighter.state_dict()
    for key in reference:
        torch.testing.assert_close(final[key], reference[key], msg=key)
    for p, q in zip(resumed_model.parameters(), model.parameters()):
        torch.testing.assert_close(p, q)


def test_resume_mid_interval_logs_what_an_uninterrupted_fit_logs(tmp_path):
    """The checkpoint falls between two logs (after step 5 of steps logged every 3): the sums of steps 4 and 5 are
    saved with it, so the resumed fit's first log (step 6) covers steps 4-6 as the uninterrupted one does; the group
    table keeps its rows."""

    def model_and_data():
        torch.manual_seed(0)
        dm = DigitsDataModule(spurious=0.9)
        dm.setup()
        return DigitsClassifier(num_features=dm.num_features, dropout=0.0, cosine_schedule=False), dm

    def callbacks():
        reweighting = ll.SampleReweighting("group_dro", step_size=0.5, num_groups=2, media_every_n_steps=2)
        return reweighting, LoggedMetrics(every=3, prefixes=("reweight/",))

    kwargs = {"limit_train_batches": 5, "enable_checkpointing": True, "log_every_n_steps": 3}
    model, dm = model_and_data()
    straight, straight_rows = callbacks()
    _trainer(tmp_path / "a", [straight, straight_rows], max_epochs=2, **kwargs).fit(model, _loader(dm))
    first_model, dm = model_and_data()
    _trainer(tmp_path / "b", list(callbacks()), max_epochs=1, **kwargs).fit(first_model, _loader(dm))
    (ckpt,) = (tmp_path / "b").rglob("*.ckpt")
    resumed_model, dm = model_and_data()
    resumed, resumed_rows = callbacks()
    trainer = _trainer(tmp_path / "c", [resumed, resumed_rows], max_epochs=2, **kwargs)
    trainer.fit(resumed_model, train_dataloaders=_loader(dm), ckpt_path=str(ckpt))
    assert sorted(resumed_rows.rows) == [6, 9] and "reweight/group_acc/0" in resumed_rows.rows[6]
    for step in (6, 9):
        assert resumed_rows.rows[step] == pytest.approx(straight_rows.rows[step], rel=1e-6, abs=1e-9), step


def test_state_dict_round_trips_the_interval_and_the_tables():
    """Sums since the last log, the media tables' rows and their cadence come back; a checkpoint from before they were
    saved loads with none."""
    cb = ll.SampleReweighting("group_dro", step_size=0.5, num_groups=2)
    cb._group_sums = GroupSums(2)
    cb._group_sums.add(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), torch.tensor([0, 1, 1]), torch.ones(3))
    cb.group_table.rows, cb._table_at = [[3, 0, 1, 0.5, 1.0, 0.4]], (1, 5)
    state = cb.state_dict()
    back = ll.SampleReweighting("group_dro", step_size=0.5, num_groups=2)
    back.load_state_dict(state)
    torch.testing.assert_close(back._group_sums.sums, cb._group_sums.sums)
    assert back._class_sums is None and back.group_table.rows == cb.group_table.rows and back._table_at == (1, 5)
    old = ll.SampleReweighting("group_dro", step_size=0.5, num_groups=2)
    old.load_state_dict({"strategy": "group_dro", "reweighter": state["reweighter"]})
    assert old._group_sums is None and old.group_table.rows == [] and old._table_at is None


def test_checkpoint_of_another_strategy_is_rejected():
    cb = ll.SampleReweighting("cvar", alpha=0.5)
    with pytest.raises(ValueError, match="checkpoint holds reweighting state of `group_dro`"):
        cb.load_state_dict({"strategy": "group_dro", "reweighter": {}})


@pytest.mark.slow
@pytest.mark.ddp
def test_cli_two_process_ddp(tmp_path):
    """The one real 2-process Trainer run: the command line with a recipe-style callback override."""
    cmd = [
        sys.executable, "-m", "lightning_losses.cli", "fit",
        "--data.spurious", "0.9", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4",
        "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "2", "--trainer.accelerator", "cpu",
        "--trainer.devices", "2", "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path), "--logger", "csv",
        "--trainer.log_every_n_steps", "2",
        "--callbacks", "{sample_reweighting: {strategy: group_dro, step_size: 0.1}}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 device(s)" in proc.stdout
    (metrics,) = tmp_path.rglob("metrics.csv")
    header = metrics.read_text().splitlines()[0]
    assert "reweight/q/1" in header and "reweight/worst_group_acc" in header
