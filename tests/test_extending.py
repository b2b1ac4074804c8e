"""The README's "Extending" blocks, run as written in a fresh interpreter (they register names globally)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECKS = textwrap.dedent(
    """
    import lightning as L
    import pytest
    import torch
    import lightning_losses as ll
    from lightning_losses.demo import DigitsClassifier, DigitsDataModule

    def fit(callback):
        trainer = L.Trainer(max_steps=2, accelerator="cpu", callbacks=[callback], logger=False, log_every_n_steps=1,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        trainer.fit(DigitsClassifier(), DigitsDataModule(batch_size=32))
        return trainer

    if "layer_sam" in BLOCKS:
        engine = ll.build_perturbation("layer_sam", rho=0.1, every_n_steps=2)
        assert (engine.radius_mode, engine.radius(0), engine.every_n_steps) == ("per_tensor", 0.1, 2)
        cb = ll.build_callbacks({"layer_sam": {"rho": 0.1}})[0]
        fit(cb)
        assert cb.engine.perturbed_steps == 2
        with pytest.raises(ll.ConfigurationError, match="`rho` must be >= 0.0"):
            LayerSAM(rho=-1.0)
        print("checked layer_sam")
    if "logit_norm_penalty" in BLOCKS:
        cb = ll.build_callbacks({"logit_norm_penalty": {"beta": 0.01}})[0]
        trainer = fit(cb)
        assert float(trainer.callback_metrics["train/logit_norm"]) > 0
        with pytest.raises(ll.ConfigurationError, match="`beta` must be a number >= 0, got -1"):
            LogitNormPenalty(beta=-1)
        print("checked logit_norm_penalty")
    """
)


def _blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Extending\n", 1)[1].split("\n## ", 1)[0]
    return [part.split("```", 1)[0] for part in section.split("```python\n")[1:]]


def test_readme_extending_blocks_run_as_written(tmp_path):
    blocks = _blocks()
    assert len(blocks) >= 2
    names = [name for name in ("layer_sam", "logit_norm_penalty") if any(name in b for b in blocks)]
    script = "\n".join(blocks) + f"\nBLOCKS = {names!r}\n" + CHECKS
    path = tmp_path / "extending.py"
    path.write_text(script)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    for name in names:
        assert f"checked {name}" in out.stdout
