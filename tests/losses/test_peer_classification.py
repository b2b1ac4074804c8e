"""Issue 18 classification additions against explicit float64 loops of the papers' / peers' formulas: LDAM with the
DRW schedule, multi-class (softmax) Dice, soft F1, single-label ASL, BCE label smoothing, and what
``tversky(0.5, 0.5)`` equals when ``smooth > 0``."""

from __future__ import annotations

import math

import pytest
import torch

import lightning_losses as ll
from lightning_losses import functional as LF


def _binary(n=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g, dtype=torch.float64) * 2, (torch.rand(n, k, generator=g) > 0.5).double()


def _multiclass(n=7, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64) * 2, torch.randint(0, c, (n,), generator=g)


# ---------------------------------------------------------------- tversky(0.5, 0.5) and Dice


@pytest.mark.parametrize("reduction", ["global", "sample"])
@pytest.mark.parametrize("smooth", [0.0, 1.0, 0.3])
def test_tversky_half_half_is_dice_with_twice_the_smoothing(reduction, smooth):
    logits, target = _binary()
    tversky = LF.tversky(logits, target, alpha=0.5, beta=0.5, smooth=smooth, reduction=reduction)
    torch.testing.assert_close(tversky, LF.dice(logits, target, smooth=2 * smooth, reduction=reduction))
    same_smooth = LF.dice(logits, target, smooth=smooth, reduction=reduction)
    if smooth == 0:
        torch.testing.assert_close(tversky, same_smooth)
    else:
        assert not torch.allclose(tversky, same_smooth)
