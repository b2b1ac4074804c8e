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
    if "margin_hinge" in BLOCKS:
        torch.manual_seed(0)
        logits, target = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 3, 1, -100, 2, 2])
        loss = ll.build_loss("margin_hinge", margin=0.5)
        out, mask = loss(logits=logits, target=target), loss.sample_mask(logits=logits, target=target)
        for i in range(6):  # explicit loop over the formula
            if target[i] < 0:
                continue
            y = int(target[i])
            other = max(float(logits[i, c]) for c in range(4) if c != y)
            assert abs(float(out[i]) - max(0.0, 0.5 + other - float(logits[i, y]))) < 1e-12
        assert mask.tolist() == [True, True, True, False, True, True]
        value = ll.Objective({"margin_hinge": {"margin": 0.5}})({"logits": logits, "target": target}).loss
        assert abs(float(value) - float(out[mask].mean())) < 1e-12
        with pytest.raises(ll.ConfigurationError, match="`margin` must be a number >= 0, got -1"):
            ll.build_loss("margin_hinge", margin=-1)
        print("checked margin_hinge")
    if "above_mean" in BLOCKS:
        r = ll.build_reweighter("above_mean", temperature=2.0)
        assert (repr(r), r.strategy) == ("AboveMean(temperature=2.0)", "above_mean")
        first = r(losses=torch.tensor([1.0, 3.0]))
        second = r(losses=torch.tensor([2.0, float("nan"), 6.0]))
        mean = (1 + 3 + 2 + 6) / 4  # the NaN sample is left out of the state and gets weight 0
        torch.testing.assert_close(first, torch.exp((torch.tensor([1.0, 3.0]) - 2.0) / 2))
        torch.testing.assert_close(second, torch.tensor([(2 - mean) / 2, float("-inf"), (6 - mean) / 2]).exp())
        assert int(r.nonfinite) == 1
        copy = ll.build_reweighter("above_mean", temperature=2.0)
        copy.load_state_dict(r.state_dict())
        assert float(copy.loss_sum) == 12.0 and float(copy.count) == 4.0
        trainer = fit(ll.SampleReweighting("above_mean"))
        assert "reweight/ess" in trainer.callback_metrics
        print("checked above_mean")
    """
)


def _blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Extending\n", 1)[1].split("\n## ", 1)[0]
    return [part.split("```", 1)[0] for part in section.split("```python\n")[1:]]


def test_readme_extending_blocks_run_as_written(tmp_path):
    blocks = _blocks()
    assert len(blocks) >= 4
    names = [
        n for n in ("layer_sam", "logit_norm_penalty", "margin_hinge", "above_mean") if any(n in b for b in blocks)
    ]
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
