"""The example scripts run (short) and read their recipes from configs/."""

import runpy
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_train_digits_example(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = runpy.run_path(str(EXAMPLES / "train_digits.py"))
    results = module["main"](["trainer.max_epochs=2", "trainer.enable_progress_bar=false", "logger=none"])
    assert results["test/acc"] > 0.5


def test_custom_model_example(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["custom_model.py", "--max_epochs", "2"])
    runpy.run_path(str(EXAMPLES / "custom_model.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "train/cross_entropy" in out and "train/focal" in out and "val/loss" in out


def test_readme_own_model_example_runs(tmp_path, monkeypatch):
    """The README's "Your own model" block, executed as written (the Trainer shrunk to one process, 3 steps)."""
    import lightning as L

    readme = (EXAMPLES.parent / "README.md").read_text()
    block = readme.split("## Your own model", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "callbacks=[" in block and "configure_objective" in block and "compute_loss" in block
    built = {}
    real_trainer = L.Trainer

    def small_trainer(**kwargs):
        assert kwargs.pop("strategy") == "ddp" and kwargs.pop("devices") == 2  # as written in the README
        kwargs.update(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False, log_every_n_steps=1)
        kwargs.update(enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
        built["trainer"] = real_trainer(**kwargs)
        return built["trainer"]

    monkeypatch.setattr(L, "Trainer", small_trainer)
    exec(compile(block, "README.md", "exec"), {"__name__": "readme_example"})
    trainer = built["trainer"]
    assert trainer.global_step == 3
    assert {"train/loss", "train/cross_entropy", "train/focal", "reweight/ess"} <= set(trainer.callback_metrics)
