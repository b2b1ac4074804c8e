"""W&B offline: what the library logs is read back from the run file (no network)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("wandb")

from lightning_losses.cli import run_fit  # noqa: E402
from tests.helpers.wandb_reader import read_history, read_records, wait_for_exit  # noqa: E402


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
    files = list(tmp_path.rglob("run-*.wandb"))
    assert len(files) == 1, files
    assert "offline-run" in str(files[0])
    wait_for_exit(files[0])
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


def test_history_reader_rejects_other_files(tmp_path):
    bad = tmp_path / "x.wandb"
    bad.write_bytes(b"nope")
    with pytest.raises(ValueError, match="is not a W&B run file"):
        read_records(bad)
    assert json.loads("1") == 1 and Path(bad).exists()
