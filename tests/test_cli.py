"""The `lightning-losses` command end to end, including a real 2-process DDP run against one process."""

import csv
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lightning_losses.cli import main, parse_overrides
from lightning_losses.demo import make_digits_splits
from lightning_losses.errors import ConfigurationError

QUIET = ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]


def test_parse_overrides():
    assert parse_overrides(["--trainer.devices", "2", "--a.b=c", "d.e=f", "--objective", "{focal: {}}"]) == [
        "trainer.devices=2",
        "a.b=c",
        "d.e=f",
        "objective={focal: {}}",
    ]
    with pytest.raises(ConfigurationError, match=r"override `--trainer.devices` needs a value"):
        parse_overrides(["--trainer.devices"])
    with pytest.raises(ConfigurationError, match=r"cannot parse argument 'oops'"):
        parse_overrides(["oops"])


def test_default_run_reaches_95_percent(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(QUIET) == 0
    out = capsys.readouterr().out
    assert "Results (cross_entropy; 1 device(s))" in out and "test/acc" in out and "fit time (s)" in out
    results = json.loads(next(Path("runs").rglob("results.json")).read_text())
    assert results["test/acc"] >= 0.95
    n_train = len(make_digits_splits()["train"]["target"])
    assert results["global_step"] == 20 * math.ceil(n_train / 64)  # 20 epochs


def test_errors_exit_2_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "--data.label_noise", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err == "lightning-losses: error: `data.label_noise` must be in [0.0, 1.0), got 1.5\n"
    assert main(["fit", "--objective", "{focall: {}}"]) == 2
    assert "did you mean `focal`?" in capsys.readouterr().err
    assert main(["fitt", "--trainer.max_epochs", "1"]) == 2
    assert capsys.readouterr().err == (
        "lightning-losses: error: unknown command `fitt`; did you mean `fit`? Commands: `fit`, `validate`, `test`, "
        "`predict`, `compare`, `list`\n"
    )
    assert main(["list", "widgets"]) == 2
    assert "`list` takes one of `losses`" in capsys.readouterr().err


def test_argument_errors_are_one_line_too(capsys):
    assert main(["fit", "--logger"]) == 2  # argparse: no usage block, one line
    assert capsys.readouterr().err == (
        "lightning-losses: error: argument --logger: expected one argument (see `lightning-losses fit --help`)\n"
    )
    assert main(["compare", "a.yaml", "--seeds", "three"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument --seeds: invalid int value: 'three'" in err
    assert main(["fit", "--logger", "tensorbord"]) == 2  # any logger spec reaches the recipe's validation
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "`logger` must be one of `csv`, `wandb`, `none`" in err and "'tensorbord'" in err
    assert main(["fit", "--objective", "{mse: {}}"]) == 2  # a loss the demo cannot feed: before training
    assert "`objective.mse` cannot run on the demo model's outputs" in capsys.readouterr().err


def test_error_while_training_is_one_line_exit_1(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIGHTNING_LOSSES_TRACEBACK", raising=False)
    argv = ["fit", "--callbacks", "{early_stopping: {monitor: val/los}}", "--trainer.max_steps", "2", *QUIET]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("lightning-losses: error: RuntimeError: Early stopping conditioned on metric `val/los`")
    assert last.endswith("(set LIGHTNING_LOSSES_TRACEBACK=1 for the traceback)")
    monkeypatch.setenv("LIGHTNING_LOSSES_TRACEBACK", "1")
    with pytest.raises(RuntimeError, match="Early stopping conditioned on metric `val/los`"):
        main(argv)


def test_console_process_exits_2_without_traceback(tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "lightning_losses.cli", "fit", "--trainer.max_epochs", "abc"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == "lightning-losses: error: `trainer.max_epochs` must be int or None, got 'abc'\n"
    assert proc.stdout == ""


def test_list_and_print_config(capsys):
    assert main(["list", "losses"]) == 0
    assert {"cross_entropy", "focal"} <= set(capsys.readouterr().out.split())
    assert main(["fit", "--print_config", "--objective.cross_entropy.label_smoothing", "0.1", "--logger", "none"]) == 0
    out = capsys.readouterr().out
    assert "label_smoothing: 0.1" in out and "logger: none" in out


CONFIGS = Path(__file__).parents[1] / "configs"


@pytest.mark.parametrize("print_config", [False, True], ids=["fit", "print_config"])
@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--data.batch_size", "100000000000000000000"], "data.batch_size"),
        (["--model.hidden_dim", "1000000000000"], "model.hidden_dim"),
        (
            ["-c", str(CONFIGS / "perturbation" / "saf.yaml"), "--callbacks.saf.epochs_ago", "10000000"],
            "callbacks.saf.epochs_ago",
        ),
        (["--trainer.val_check_interval", "0"], "trainer.val_check_interval"),
        (["--objective", "{cross_entropy: {}"], "objective"),
        (["--objective", "{a.b: {loss: cross_entropy}}"], "objective"),
        (["--trainer.default_root_dir", "afile/runs"], "trainer.default_root_dir"),
        (["--trainer.log_every_n_steps", "-1"], "trainer.log_every_n_steps"),
        (
            ["-c", str(CONFIGS / "entropy_target.yaml"), "--callbacks.entropy_control.target", "3"],
            "callbacks.entropy_control.target",
        ),
        (["--data.val_fraction", "0.5", "--data.test_fraction", "0.5"], "data.val_fraction"),
    ],
)
def test_configuration_errors_exit_2_in_one_line_before_training(
    argv, key, print_config, tmp_path, monkeypatch, capsys
):
    import lightning as L

    def no_training(*args, **kwargs):
        raise AssertionError("trained")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(L.Trainer, "fit", no_training)
    (tmp_path / "afile").write_text("")
    assert main(["fit", *argv, *(["--print_config"] if print_config else [])]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1, err  # --print_config validates before printing
    assert re.match(rf"^lightning-losses: error: (the value of )?`{re.escape(key)}[.`]", err), err


def _train_losses(root: Path) -> list[float]:
    path = next(root.rglob("metrics.csv"))
    with path.open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    return [float(r["train/loss"]) for r in sorted(rows, key=lambda r: int(r["step"]))]


@pytest.mark.ddp
def test_ddp_two_processes_equal_one_process_on_the_concatenated_batch(tmp_path):
    """2 ranks x batch 16 (DistributedSampler, no shuffle) == 1 process x batch 32: same per-step global loss."""
    common = [
        "--data.shuffle",
        "false",
        "--model.dropout",
        "0.0",
        "--trainer.max_steps",
        "6",
        "--trainer.limit_val_batches",
        "0",
        "--trainer.log_every_n_steps",
        "1",
        "--trainer.accelerator",
        "cpu",
        "--objective",
        "{cross_entropy: {label_smoothing: 0.1}, focal: {gamma: 2.0, coefficient: 0.5}}",
        *QUIET,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    runs = {
        "ddp": ["--data.batch_size", "16", "--trainer.devices", "2", "--trainer.strategy", "ddp"],
        "one": ["--data.batch_size", "32", "--trainer.devices", "1"],
    }
    losses = {}
    for name, extra in runs.items():
        root = tmp_path / name
        cmd = [
            sys.executable,
            "-m",
            "lightning_losses.cli",
            "fit",
            *common,
            *extra,
            "--trainer.default_root_dir",
            str(root),
        ]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        losses[name] = _train_losses(root)
    assert len(losses["one"]) == len(losses["ddp"]) == 6
    assert losses["ddp"] == pytest.approx(losses["one"], rel=1e-5, abs=1e-6)
    assert losses["one"][0] != pytest.approx(losses["one"][-1], rel=1e-3)  # training moved: the check has teeth


def test_console_help_and_version_do_not_import_torch(tmp_path):
    """`lightning-losses --help` / `--version` answer before the heavy imports (measured: about 0.9 s on a loaded
    2-core machine, where importing the package takes 20+ s)."""
    probe = (
        "import atexit, sys; sys.argv = ['lightning-losses', *sys.argv[1:]]; "
        "heavy = lambda: print('heavy:', 'torch' in sys.modules, 'lightning' in sys.modules, file=sys.stderr); "
        "atexit.register(heavy); "
        "import lightning_losses"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    for args, expected in ((["--help"], "fit,validate,test,predict"), (["fit", "--help"], "--ckpt_pathCKPT_PATH")):
        cmd = [sys.executable, "-c", probe, *args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and expected in proc.stdout.replace(" ", ""), proc.stdout + proc.stderr
        assert "heavy: False False" in proc.stderr
    proc = subprocess.run([sys.executable, "-c", probe, "--version"], env=env, capture_output=True, text=True)
    assert proc.stdout == "lightning-losses 0.1.0.dev0\n" and "heavy: False False" in proc.stderr
