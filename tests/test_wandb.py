"""W&B offline: what the library logs is read back from the run file (no network)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("wandb")

import lightning_losses as ll  # noqa: E402
from lightning_losses.cli import main, run_fit  # noqa: E402
from lightning_losses.config import build_logger  # noqa: E402
from tests.helpers.wandb_reader import finished_run_files, read_history, read_records  # noqa: E402


def test_wandb_offline_run_holds_logged_metrics(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    results = run_fit(
        None,
        [
            "logger={name: wandb, project: ll-test}",
            "trainer.max_epochs=2",
            "trainer.log_every_n_steps=5",
            "trainer.enable_progress_bar=false",
            "objective={cross_entropy: {}, focal: {gamma: 1.0, coefficient: 0.5}}",
        ],
        print_results=False,
    )
    files = finished_run_files(tmp_path)
    assert len(files) == 1, files
    assert "offline-run" in str(files[0])
    rows = read_history(files[0])
    train = [r for r in rows if "train/loss" in r]
    assert len(train) == 40 // 5  # 2 epochs x 20 steps, every 5 steps
    assert {"train/cross_entropy", "train/focal", "trainer/global_step"} <= set(train[0])
    for r in train:  # the logged total is the coefficient-weighted sum of the logged terms
        assert r["train/loss"] == pytest.approx(r["train/cross_entropy"] + 0.5 * r["train/focal"], rel=1e-5)
    assert train[-1]["train/loss"] < train[0]["train/loss"]
    test_rows = [r for r in rows if "test/acc" in r]
    assert test_rows and test_rows[-1]["test/acc"] == pytest.approx(results["test/acc"])
    configs = [r for r in read_records(files[0]) if r.WhichOneof("record_type") == "config"]
    assert configs, "the recipe's hyperparameters reach the W&B config"
    keys = {u.key for c in configs for u in c.config.update}
    assert "objective" in keys or any("objective" in k for k in keys), keys
    # the whole resolved recipe, not only the model's arguments
    assert {"data", "trainer", "callbacks", "objective", "seed", "versions", "logger"} <= keys, keys


def test_history_reader_rejects_other_files(tmp_path):
    bad = tmp_path / "x.wandb"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="is not a W&B run file"):
        read_records(bad)
    assert json.loads("1") == 1 and Path(bad).exists()


def test_logger_wandb_flag_is_offline_unless_configured(tmp_path, monkeypatch, capsys):
    """`lightning-losses fit --logger wandb` with no W&B setting at all writes an offline run, read back here."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    argv = ["fit", "--logger", "wandb", "--trainer.max_steps", "4", "--trainer.log_every_n_steps", "1"]
    assert main([*argv, "--trainer.enable_progress_bar", "false", "--trainer.limit_val_batches", "1"]) == 0
    assert "test/acc" in capsys.readouterr().out
    (run_file,) = finished_run_files(tmp_path)
    assert "offline-run" in str(run_file)
    train = [r for r in read_history(run_file) if "train/loss" in r]
    assert [r["trainer/global_step"] for r in train] == [0, 1, 2, 3]


def test_build_logger_wandb_offline_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert build_logger("wandb", str(tmp_path))._offline is True  # default: offline
    assert build_logger({"name": "wandb", "offline": False}, str(tmp_path))._offline is False  # the recipe says so
    monkeypatch.setenv("WANDB_MODE", "online")
    assert build_logger("wandb", str(tmp_path))._offline is False  # the user configured W&B
    assert build_logger({"name": "wandb", "offline": True}, str(tmp_path))._offline is True
    with pytest.raises(
        ll.ConfigurationError, match=r"`logger` \(wandb\) got an unexpected argument `projct`; did you mean `project`\?"
    ):
        build_logger({"name": "wandb", "projct": "x"}, str(tmp_path))


def _steps(rows, key):
    return [r["trainer/global_step"] for r in rows if key in r]


def test_wandb_offline_run_holds_the_diagnostics_media(tmp_path, monkeypatch):
    """Histograms, the group table and the reliability diagrams land in the offline run at the steps of ``train/*``;
    ``entropy/*`` and the perturbation statistics are scalars on those steps too."""
    from lightning.pytorch.loggers import WandbLogger

    from lightning_losses.reweighting.media import GroupTable
    from tests.test_diagnostics import _fit_all_diagnostics

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="ll-test", save_dir=str(tmp_path), offline=True)
    trainer = _fit_all_diagnostics(logger, tmp_path, max_epochs=2, limit_train_batches=3, log_every_n_steps=2)
    logger.experiment.finish()
    (run_file,) = finished_run_files(tmp_path)
    rows = read_history(run_file)
    train_steps = _steps(rows, "train/loss")
    assert train_steps == [1, 3, 5] and trainer.global_step == 6
    train = [r for r in rows if "train/loss" in r]
    for key in ("entropy/mean", "reweight/ess", "reweight/worst_group_acc", "perturbation/perturbed_fraction"):
        assert _steps(rows, key) == train_steps, key
    for key in ("objective/coef/cross_entropy", "objective/nonfinite", "perturbation/step_time"):
        assert _steps(rows, key) == train_steps, key
    assert all(r["objective/coef/cross_entropy"] == 1.0 and r["objective/nonfinite"] == 0 for r in train)
    # one row per logging step: the Trainer's own, with every callback's and the objective's statistics in it
    merged = {"entropy/mean", "reweight/ess", "perturbation/step_time", "objective/nonfinite"}
    assert all(merged <= set(r) for r in train)
    timed = [r for r in rows if "perturbation/step_time" in r]
    assert all(r["perturbation/time_ratio"] >= 1.0 and r["perturbation/step_time"] > 0 for r in timed)
    assert "entropy/mean" in trainer.callback_metrics
    # histograms: 64 bins; entropy every optimizer step (media_every_n_steps=1), reweighting on its logging steps
    for key, steps in (("entropy/per_sample", list(range(6))), ("reweight/weights", train_steps)):
        hist = [r for r in rows if f"{key}/_type" in r]
        assert [r["trainer/global_step"] for r in hist] == steps, key
        assert all(r[f"{key}/_type"] == "histogram" and len(r[f"{key}/values"]) == 64 for r in hist)
        assert all(len(r[f"{key}/bins"]) == 65 and sum(r[f"{key}/values"]) == 64 for r in hist)  # batch of 64
    assert _steps(rows, "reweight/losses/_type") == train_steps
    # on the Trainer's logging steps the histograms are in its row (no W&B row of their own), out of `logged_metrics`
    assert all("train/loss" in r for r in rows if "reweight/weights/_type" in r or "reweight/groups/_type" in r)
    entropy_rows = [r for r in rows if "entropy/per_sample/_type" in r]
    assert ["train/loss" in r for r in entropy_rows] == [s in train_steps for s in range(6)]  # off them: a row each
    assert not {"reweight/weights", "reweight/groups", "entropy/per_sample"} & set(trainer.logged_metrics)
    # the group table grows by one row per group at each of its steps; its file is under files/media/
    tables = [r for r in rows if "reweight/groups/_type" in r]
    assert [(r["trainer/global_step"], r["reweight/groups/nrows"]) for r in tables] == [(1, 2), (3, 4), (5, 6)]
    last = json.loads((run_file.parent / "files" / tables[-1]["reweight/groups/path"]).read_text())
    assert last["columns"] == list(GroupTable().columns) and len(last["data"]) == 6
    assert [row[:2] for row in last["data"]] == [[s, g] for s in train_steps for g in (0, 1)]
    # reliability diagrams: one per validation epoch, then before / after temperature scaling
    for key, count in (
        ("val/reliability", 2),
        ("calibration/reliability_before", 1),
        ("calibration/reliability_after", 1),
    ):
        images = [r for r in rows if f"{key}/_type" in r]
        assert len(images) == count, key
        for r in images:
            assert (r[f"{key}/width"], r[f"{key}/height"], r[f"{key}/count"]) == (320, 320, 1)
            (name,) = r[f"{key}/filenames"]
            assert name.startswith("media/images/") and (run_file.parent / "files" / name).stat().st_size > 1000
    val_epochs = _steps(rows, "val/ece")
    assert _steps(rows, "val/reliability/_type") == val_epochs  # at the step of the epoch's `val/ece`


def test_wandb_reweighting_without_groups_logs_a_per_class_table(tmp_path, monkeypatch):
    import lightning as L
    from lightning.pytorch.loggers import WandbLogger

    from lightning_losses.demo import DigitsClassifier, DigitsDataModule

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="ll-test", save_dir=str(tmp_path), offline=True)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        callbacks=[ll.SampleReweighting("loss_softmax", media_every_n_steps=4)], logger=logger, max_steps=8,
        log_every_n_steps=2, limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(DigitsClassifier(dropout=0.0, cosine_schedule=False), DigitsDataModule(batch_size=64))
    logger.experiment.finish()
    (run_file,) = finished_run_files(tmp_path)
    rows = read_history(run_file)
    tables = [r for r in rows if "reweight/classes/_type" in r]
    assert [r["trainer/global_step"] for r in tables] == [3, 7]  # after optimizer steps 4 and 8
    assert "reweight/groups/_type" not in {k for r in rows for k in r}
    table = json.loads((run_file.parent / "files" / tables[-1]["reweight/classes/path"]).read_text())
    assert table["columns"] == ["step", "class", "count", "loss", "acc", "weight"]
    first = [row for row in table["data"] if row[0] == 3]
    assert sum(row[2] for row in first) == 2 * 64  # the two batches since the last log, every class counted once
    assert {row[1] for row in first} <= set(range(10)) and all(row[5] > 0 for row in first)


@pytest.mark.parametrize("with_csv", [False, True], ids=["wandb", "wandb+csv"])
def test_media_join_the_trainers_row_when_every_logger_takes_media(tmp_path, monkeypatch, with_csv):
    """The entropy histogram's default cadence is the first logging step of an epoch (``MEDIA_MIN_STEPS`` apart): with
    W&B loggers only it is in the Trainer's row of the step (one W&B log call); beside a CSV logger, which must not
    get W&B objects, in a row of its own, at the same step."""
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    from lightning_losses import diagnostics
    from lightning_losses.demo import DigitsClassifier, DigitsDataModule

    monkeypatch.setattr(diagnostics, "MEDIA_MIN_STEPS", 2)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="ll-test", save_dir=str(tmp_path), offline=True)
    csv = CSVLogger(tmp_path / "csv")
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        callbacks=[ll.EntropyControl(beta=0.1)], logger=[logger, csv] if with_csv else logger, max_epochs=2,
        limit_train_batches=4, log_every_n_steps=2, limit_val_batches=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(DigitsClassifier(dropout=0.0), DigitsDataModule(batch_size=64))
    logger.experiment.finish()
    rows = read_history(finished_run_files(tmp_path)[0])
    assert _steps(rows, "train/loss") == [1, 3, 5, 7]
    hist = [r for r in rows if "entropy/per_sample/_type" in r]
    assert [r["trainer/global_step"] for r in hist] == [1, 5]  # the first logging step of each epoch
    assert all(("train/loss" in r) is not with_csv for r in hist)
    assert "entropy/per_sample" not in trainer.logged_metrics and "entropy/mean" in trainer.logged_metrics
    if with_csv:
        header = (Path(csv.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
        assert "entropy/mean" in header and not any("per_sample" in c for c in header)


def test_default_table_cadence_needs_ten_epochs_and_a_thousand_steps():
    """With short epochs the spacing in steps decides (a table is an artifact, about 10 ms a log)."""
    from lightning_losses.reweighting.callback import TABLE_MIN_STEPS

    callback = ll.SampleReweighting("group_dro", step_size=0.01)
    assert TABLE_MIN_STEPS == 1000
    at = [(0, 0), (10, 230), (20, 999), (44, 1012), (50, 3000), (54, 5000), (64, 6000)]
    assert [callback._table_due(epoch, step) for epoch, step in at] == [False, False, False, True, False, True, True]
    assert ll.SampleReweighting("group_dro", media_every_n_steps=5)._table_due(0, 0)  # an explicit cadence: always


def test_default_media_cadence_logs_the_group_table_every_ten_epochs_and_at_the_end(tmp_path, monkeypatch):
    """Histograms about once per epoch, spaced by ``MEDIA_MIN_STEPS`` (2 here: epochs of one step); the table (an
    artifact a log) at the first media step 10 epochs after the first one, and at the end, each time with every row
    since the start (one per group present, per media step)."""
    import lightning as L
    from lightning.pytorch.loggers import WandbLogger

    from lightning_losses import diagnostics
    from lightning_losses.demo import DigitsClassifier, DigitsDataModule
    from lightning_losses.reweighting import callback as reweighting_callback
    from lightning_losses.reweighting.callback import TABLE_EVERY_EPOCHS

    monkeypatch.setattr(diagnostics, "MEDIA_MIN_STEPS", 2)
    monkeypatch.setattr(reweighting_callback, "TABLE_MIN_STEPS", 8)  # 1000 by default
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="ll-test", save_dir=str(tmp_path), offline=True)
    L.seed_everything(0, verbose=False)
    callback = ll.SampleReweighting("group_dro", step_size=0.01)
    trainer = L.Trainer(
        callbacks=[callback], logger=logger, max_epochs=13,
        limit_train_batches=1, log_every_n_steps=1, limit_val_batches=0, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(DigitsClassifier(num_features=74, dropout=0.0), DigitsDataModule(batch_size=64, spurious=0.9))
    logger.experiment.finish()
    (run_file,) = finished_run_files(tmp_path)
    rows = read_history(run_file)
    assert TABLE_EVERY_EPOCHS == 10 and _steps(rows, "reweight/weights/_type") == [0, 2, 4, 6, 8, 10, 12]
    tables = [r for r in rows if "reweight/groups/_type" in r]
    assert [r["trainer/global_step"] for r in tables] == [10, 13]
    # two groups: two rows per media step
    assert [r["reweight/groups/nrows"] for r in tables] == [12, 14] and len(callback.group_table.rows) == 14


@pytest.mark.parametrize(
    ("every", "expected"),
    [
        pytest.param(None, lambda val: [val[0], val[-1]], id="default: first, then the last at the end of the fit"),
        pytest.param(4, lambda val: [val[1], val[3], val[4]], id="every 4 steps, and the last"),
        pytest.param(0, lambda val: [], id="never"),
    ],
)
def test_reliability_diagrams_follow_the_media_cadence_and_the_last_is_drawn(tmp_path, monkeypatch, every, expected):
    """Validation diagrams at the media cadence (default: at most once per ``MEDIA_MIN_STEPS``, 100 steps: the first
    of these 2-step epochs only), the last validation epoch's drawn when the fit ends, at its own step; ``val/ece``
    every epoch; the test diagram whatever the cadence."""
    import lightning as L
    from lightning.pytorch.loggers import WandbLogger

    from lightning_losses.demo import DigitsClassifier, DigitsDataModule

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    logger = WandbLogger(project="ll-test", save_dir=str(tmp_path), offline=True)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        callbacks=[ll.CalibrationMonitor(media_every_n_steps=every)], logger=logger, max_epochs=5,
        limit_train_batches=2, limit_val_batches=1, limit_test_batches=1, accelerator="cpu", default_root_dir=tmp_path,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )  # fmt: skip
    model, data = DigitsClassifier(dropout=0.0), DigitsDataModule(batch_size=32)
    trainer.fit(model, data)
    trainer.test(model, data)
    for _ in range(2):  # a validation run of its own draws its diagram whatever the cadence
        trainer.validate(model, data)
    logger.experiment.finish()
    rows = read_history(finished_run_files(tmp_path)[0])
    val = _steps(rows, "val/ece")
    assert len(val) == 5 + 2 and trainer.global_step == 10  # the fit's after global steps 2, 4, ..., 10, then 2 runs
    assert _steps(rows, "val/reliability/_type") == expected(val[:5]) + val[5:]
    assert len(_steps(rows, "test/reliability/_type")) == 1


def test_pictures_are_drawn_on_rank_zero_only():
    from types import SimpleNamespace

    from lightning.pytorch.loggers import WandbLogger

    from lightning_losses.diagnostics import log_image

    def draw():
        raise AssertionError("drawn on a rank other than 0")

    logger = WandbLogger.__new__(WandbLogger)  # a media logger; never called on rank 1
    trainer = SimpleNamespace(loggers=[logger], is_global_zero=False)
    assert log_image(trainer, "val/reliability", draw)


def _media_fit_on_rank(root):
    """A 2-process fit with a W&B logger: rank 0 reads its offline run back; rank 1 only trains."""
    import os

    import lightning as L
    import torch.distributed as dist
    from lightning.pytorch.loggers import WandbLogger

    from lightning_losses.demo import DigitsClassifier, DigitsDataModule
    from tests.helpers.ddp import lightning_env

    os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(root), WANDB_SILENT="true")
    with lightning_env():
        logger = WandbLogger(project="ll-test", save_dir=str(root), offline=True)
        L.seed_everything(0, verbose=False)
        callbacks = [
            ll.SampleReweighting("group_dro", step_size=0.01, media_every_n_steps=2),
            ll.EntropyControl(beta=0.1, media_every_n_steps=2),
        ]
        trainer = L.Trainer(
            callbacks=callbacks, logger=logger, accelerator="cpu", devices=2, strategy="ddp", max_steps=4,
            log_every_n_steps=2, limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, default_root_dir=root,
        )  # fmt: skip
        trainer.fit(DigitsClassifier(num_features=74, dropout=0.0), DigitsDataModule(batch_size=32, spurious=0.9))
        media_kept = {"reweight/weights", "entropy/per_sample"} & set(trainer.logged_metrics)
        if dist.get_rank() != 0:
            return None, media_kept
        logger.experiment.finish()
        rows = read_history(finished_run_files(root)[0])
        return [(r["trainer/global_step"], "train/loss" in r, "entropy/per_sample/_type" in r) for r in rows
                if "reweight/weights/_type" in r], media_kept  # fmt: skip


@pytest.mark.ddp
def test_media_join_rank_zeros_row_under_ddp(ddp, tmp_path):
    """Under DDP every rank keeps the media for the Trainer's row (the gathers are collectives on every rank); rank 0's
    W&B row holds them, the other ranks' loggers write nothing, and no rank keeps them in ``logged_metrics``."""
    (rows, kept0), (none, kept1) = ddp.run(_media_fit_on_rank, tmp_path)
    assert rows == [(1, True, True), (3, True, True)] and none is None
    assert kept0 == kept1 == set()
