"""`lightning-losses compare`: runs recipes x seeds, summarises mean/std, writes table, JSON and a PNG."""

import json
import statistics
from pathlib import Path

import pytest

from lightning_losses.cli import main
from lightning_losses.compare import format_table, summarize
from lightning_losses.errors import ConfigurationError

CONFIGS = Path(__file__).parents[1] / "configs"


def test_summarize_and_format_against_statistics():
    runs = {"a": [{"m": 1.0}, {"m": 2.0}, {"m": 4.0}], "b": [{"m": 0.5}]}
    summary = summarize(runs, ["m", "absent"])
    assert summary["a"]["m"] == pytest.approx((statistics.fmean([1, 2, 4]), statistics.stdev([1, 2, 4]), 3))
    assert summary["b"]["m"] == (0.5, 0.0, 1)
    table = format_table(summary, ["m", "absent"])
    assert table.splitlines()[0] == "| recipe | m | absent |"
    assert "| a | 2.3333 ± 1.5275 (n=3) | n/a |" in table


def test_compare_command_end_to_end(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "cmp"
    argv = [
        "compare",
        f"ce={CONFIGS / 'default.yaml'}",
        str(CONFIGS / "focal.yaml"),
        "--seeds",
        "2",
        "--out",
        str(out),
        "--trainer.max_epochs",
        "1",
        "--trainer.limit_train_batches",
        "3",
        "--trainer.limit_val_batches",
        "1",
    ]
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "results.json").write_text("mine")  # a file outside `--out` stays as it is
    assert main(argv) == 0
    assert (tmp_path / "runs" / "results.json").read_text() == "mine"
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["cmp", "runs"] and len(list((tmp_path / "runs").iterdir())) == 1
    )
    for name in ("ce", "focal"):  # every run's files under OUT, one folder per recipe and seed
        for seed in (0, 1):
            run_dir = out / name / f"seed{seed}"
            assert json.loads((run_dir / "results.json").read_text())["test/acc"] >= 0.0
            assert list((run_dir / "checkpoints").glob("*.ckpt"))
    printed = capsys.readouterr().out
    assert "| recipe | test/acc | test/nll |" in printed
    data = json.loads((out / "results.json").read_text())
    assert set(data["runs"]) == {"ce", "focal"} and all(len(v) == 2 for v in data["runs"].values())
    accs = [r["test/acc"] for r in data["runs"]["focal"]]
    assert accs[0] != accs[1]  # seeds differ
    assert f"{statistics.fmean(accs):.4f} ± {statistics.stdev(accs):.4f} (n=2)" in (out / "table.md").read_text()
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the report: every requested metric as a bar plot and every logged metric as a curve, PNGs embedded
    report_md, report_html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for metric in ("test/acc", "test/nll", "val/loss"):
        assert metric in report_md and metric in report_html, metric
    assert "data:image/png;base64," in report_html and list((out / "report").glob("*.png"))


def test_compare_errors(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "missing.yaml")]) == 2
    assert "recipe file" in capsys.readouterr().err
    from lightning_losses.compare import compare

    with pytest.raises(ConfigurationError, match=r"two recipes are labelled `focal`"):
        compare([str(CONFIGS / "focal.yaml"), f"focal={CONFIGS / 'default.yaml'}"])
    with pytest.raises(ConfigurationError, match=r"^recipe label `a/b` must be a folder name \(no `/`, not `.`"):
        compare([f"a/b={CONFIGS / 'focal.yaml'}"])
    with pytest.raises(ConfigurationError, match=r"`seeds` must be an integer >= 1, got 0"):
        compare([str(CONFIGS / "focal.yaml")], seeds=0)


def test_compare_checks_every_recipe_and_the_output_before_training(tmp_path, monkeypatch):
    from lightning_losses import runner
    from lightning_losses.compare import compare

    def no_training(*args, **kwargs):
        raise AssertionError("trained before every recipe was checked")

    monkeypatch.setattr(runner, "run_fit", no_training)
    bad = tmp_path / "bad.yaml"
    bad.write_text("objective: {focall: {}}\n")
    with pytest.raises(ConfigurationError, match=r"^recipe `bad` \(.*bad.yaml\): `objective`: .*did you mean `focal`"):
        compare([str(CONFIGS / "focal.yaml"), f"bad={bad}"])
    afile = tmp_path / "afile"
    afile.write_text("")
    with pytest.raises(ConfigurationError, match=r"^`out` must be a folder, got the file `.*afile`$"):
        compare([str(CONFIGS / "focal.yaml")], out=str(afile))


def test_compare_rejects_an_unknown_metric_after_the_first_run(tmp_path):
    from lightning_losses.compare import compare

    tiny = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1"]
    tiny += ["trainer.limit_test_batches=1", f"trainer.default_root_dir={tmp_path}"]
    with pytest.raises(ConfigurationError, match=r"^unknown metric\(s\) `test/nope`; a run gives .*`test/acc`"):
        compare([str(CONFIGS / "default.yaml")], seeds=1, metrics=["test/nope"], overrides=tiny, out=str(tmp_path))


def test_compare_in_parallel_processes_with_wandb_keeps_every_file_under_out(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    from tests.helpers.wandb_reader import finished_run_files, read_records

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    own = tmp_path / "own.yaml"
    own.write_text(
        "model: {class_path: tests.helpers.own_model.OwnNet}\n"
        "data: {class_path: tests.helpers.own_model.TinyData, init_args: {seed: 0}}\n"
    )
    out = tmp_path / "cmp"
    tiny = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    argv = ["compare", f"ce={CONFIGS / 'default.yaml'}", str(own), "--seeds", "2", "--workers", "2", "--wandb"]
    assert main([*argv, "--metrics", "test/loss", "--out", str(out), *tiny]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp", "own.yaml"]  # nothing outside `--out`
    for name in ("ce", "own"):
        for seed in (0, 1):
            run_dir = out / name / f"seed{seed}"
            (metrics,) = run_dir.glob("**/metrics.csv")  # the contract with lightning_losses.report
            assert metrics.parent == run_dir and "test/loss" in metrics.read_text().splitlines()[0]
            assert json.loads((run_dir / "results.json").read_text())["seed"] == seed
            assert (run_dir / "config.yaml").is_file()
    own_losses = [r["test/loss"] for r in json.loads((out / "results.json").read_text())["runs"]["own"]]
    assert own_losses[0] != own_losses[1]  # `data.seed` reaches a user's datamodule that takes one
    files = finished_run_files(out)
    assert len(files) == 4
    groups = {r.run.run_group for f in files for r in read_records(f) if r.WhichOneof("record_type") == "run"}
    assert groups == {"cmp"}
