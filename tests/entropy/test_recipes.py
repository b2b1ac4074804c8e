"""Confidence and logit-scale controls from a recipe: the built objective against the formulas written out here."""

from pathlib import Path

import pytest
import torch

from lightning_losses.config import build_run, load_recipe
from lightning_losses.errors import ConfigurationError

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "confidence_controls.yaml"


def _reference(z, y, tau, eps, beta, coef, lam):
    """Explicit per-sample formulas (float64): LogitClip + label-smoothed CE, -beta*H, z-loss, spectral decoupling."""
    rows = []
    for zi, yi in zip(z.tolist(), y.tolist()):
        c = len(zi)
        norm = sum(v * v for v in zi) ** 0.5
        clipped = [v * min(1.0, (1.0 / tau) / norm) for v in zi]
        lse_c = torch.tensor(clipped, dtype=torch.float64).logsumexp(0).item()
        nll = [lse_c - v for v in clipped]  # -log softmax
        ce = (1 - eps) * nll[yi] + eps * sum(nll) / c  # PyTorch's construction: uniform including the target
        lse = torch.tensor(zi, dtype=torch.float64).logsumexp(0).item()
        p = [torch.tensor(v - lse).exp().item() for v in zi]
        h = -sum(pk * (v - lse) for pk, v in zip(p, zi))
        rows.append(ce - beta * h + coef * lse**2 + lam / 2 * sum(v * v for v in zi))
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("scale", [0.5, 20.0])  # below and above the clip norm 1/tau = 10
def test_confidence_controls_recipe_matches_formulas(scale):
    run = build_run(load_recipe(RECIPE, ["logger=none", "trainer.max_steps=1"]))
    assert list(run.model.objective.losses) == ["ce", "confidence_penalty", "z_loss", "spectral_decoupling"]
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=g, dtype=torch.float64) * scale
    y = torch.randint(0, 10, (16,), generator=g)
    out = run.model.objective({"logits": z, "target": y})
    expected = _reference(z, y, tau=0.1, eps=0.1, beta=0.05, coef=1e-4, lam=1e-3)
    torch.testing.assert_close(out.value, expected.mean())


def test_confidence_controls_recipe_overrides_and_errors():
    run = build_run(load_recipe(RECIPE, ["logger=none", "objective.confidence_penalty.beta=0.0"]))
    assert run.model.objective.losses["confidence_penalty"].beta == 0.0
    with pytest.raises(ConfigurationError, match=r"term `confidence_penalty`: `beta` must be >= 0.0, got -1.0"):
        build_run(load_recipe(RECIPE, ["logger=none", "objective.confidence_penalty.beta=-1.0"]))
    with pytest.raises(ConfigurationError, match=r"term `ce`: `tau` must be > 0.0, got 0.0"):
        build_run(load_recipe(RECIPE, ["logger=none", "objective.ce.tau=0.0"]))


def test_scheduled_confidence_penalty_from_a_recipe():
    """The regulariser's strength follows the shared schedule API through the term's `coefficient`."""
    schedule = "objective.confidence_penalty.coefficient={name: linear, start: 0.0, end: 1.0, steps: 10}"
    run = build_run(load_recipe(RECIPE, ["logger=none", schedule, "objective.confidence_penalty.beta=1.0"]))
    z = torch.randn(8, 10, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    y = torch.arange(8)
    p = torch.softmax(z, -1)
    h = -torch.special.xlogy(p, p).sum(-1).mean()
    at = {s: run.model.objective({"logits": z, "target": y}, step=s).value for s in (0, 5, 10, 20)}
    torch.testing.assert_close(at[0] - at[5], 0.5 * h)  # the other terms do not depend on the step
    torch.testing.assert_close(at[0] - at[10], h)
    torch.testing.assert_close(at[10], at[20])
