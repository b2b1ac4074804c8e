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


# ---------------------------------------------------------------- LDAM + DRW (Cao et al. 2019, the authors' code)

COUNTS = [500.0, 120.0, 30.0, 4.0]


def _ldam_loop(logits, target, counts, max_m, s):
    """The authors' ``LDAMLoss``: ``m = 1 / sqrt(sqrt(n))`` rescaled to ``max_m``, ``CE(s * (x - m_y e_y), y)``."""
    m_list = [1.0 / math.sqrt(math.sqrt(n)) for n in counts]
    m_list = [m * (max_m / max(m_list)) for m in m_list]
    out = []
    for i in range(logits.shape[0]):
        y = int(target[i])
        row = torch.stack([s * (logits[i, j] - (m_list[y] if j == y else 0.0)) for j in range(logits.shape[1])])
        out.append(torch.log(torch.exp(row).sum()) - row[y])
    return torch.stack(out)


def _drw_weights(counts, beta):
    """The authors' DRW per-class weights: ``(1 - beta) / (1 - beta^n)``, normalised to sum ``C``."""
    raw = [(1.0 - beta) / (1.0 - beta**n) for n in counts]
    return [w / sum(raw) * len(counts) for w in raw]


@pytest.mark.parametrize(("max_m", "s"), [(0.5, 30.0), (0.3, 1.0)])
def test_ldam_matches_the_authors_formula(max_m, s):
    logits, target = _multiclass(c=4)
    logits = torch.tanh(logits)  # cosine-like logits, as the authors' normalised last layer
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = ll.build_loss("ldam", samples_per_class=COUNTS, max_margin=max_m, scale=s)
    ours, ref = loss(logits=a, target=target), _ldam_loop(b, target, COUNTS, max_m, s)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    assert loss.margins[-1] == max_m and loss.margins.dtype == torch.float64


def test_ldam_ignore_index_and_float32():
    logits, target = _multiclass(c=4)
    target[1] = -100
    loss = ll.build_loss("ldam", samples_per_class=COUNTS)
    out = loss(logits=logits.float(), target=target)
    assert out.dtype == torch.float32 and out[1] == 0
    assert loss.sample_mask(target=target)[1].item() is False


def test_ldam_drw_is_class_balanced_from_start_epoch():
    """LDAM-DRW: plain mean before ``start_epoch``; from it, the authors' ``F.cross_entropy(..., weight=w)`` mean."""
    logits, target = _multiclass(n=12, c=4, seed=3)
    objective = ll.Objective({"ldam": {"samples_per_class": COUNTS}})
    drw = ll.build_reweighter("class_balanced", beta=0.9999, samples_per_class=COUNTS, start_epoch=2)
    per_sample = _ldam_loop(logits, target, COUNTS, 0.5, 30.0)
    for epoch in (0, 1):
        drw.set_epoch(epoch)
        out = objective({"logits": logits, "target": target}, reweighter=drw)
        torch.testing.assert_close(out.value, per_sample.mean(), rtol=1e-12, atol=1e-12)
    drw.set_epoch(2)
    out = objective({"logits": logits, "target": target}, reweighter=drw)
    w = torch.tensor(_drw_weights(COUNTS, 0.9999), dtype=torch.float64)
    expected = (w[target] * per_sample).sum() / w[target].sum()
    torch.testing.assert_close(out.value, expected, rtol=1e-12, atol=1e-12)
    # the authors' training step: cross entropy of the margin-shifted, scaled logits with the DRW class weights
    m = torch.tensor(COUNTS, dtype=torch.float64).pow(-0.25)
    shifted = 30.0 * (logits - torch.nn.functional.one_hot(target, 4) * (0.5 * m / m.max())[target, None])
    torch.testing.assert_close(out.value, torch.nn.functional.cross_entropy(shifted, target, weight=w))
    # the epoch is state: a restored reweighter keeps the schedule
    restored = ll.build_reweighter("class_balanced", beta=0.9999, samples_per_class=COUNTS, start_epoch=2)
    restored.load_state_dict(drw.state_dict())
    torch.testing.assert_close(restored(losses=per_sample, target=target), w[target])


def test_class_balanced_start_epoch_zero_is_unchanged():
    r = ll.build_reweighter("class_balanced", beta=0.9, samples_per_class=[10, 1])
    drw = ll.build_reweighter("class_balanced", beta=0.9, samples_per_class=[10, 1], start_epoch=0)
    t = torch.tensor([0, 1, 1])
    torch.testing.assert_close(r(losses=torch.zeros(3), target=t), drw(losses=torch.zeros(3), target=t))
    assert "start_epoch=0" in repr(drw)


@pytest.mark.parametrize(
    ("build", "kwargs", "match"),
    [
        (ll.build_loss, {"samples_per_class": [3, 0]}, r"`samples_per_class` must be positive counts, got \[3, 0\]"),
        (ll.build_loss, {"samples_per_class": [3, 1], "max_margin": 0.0}, r"`max_margin` must be > 0.0, got 0.0"),
        (ll.build_loss, {"samples_per_class": [3, 1], "scale": -1.0}, r"`scale` must be > 0.0, got -1.0"),
        (ll.build_loss, {}, r"loss `ldam` is missing required argument\(s\): `samples_per_class`"),
    ],
)
def test_ldam_argument_validation(build, kwargs, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        build("ldam", **kwargs)


def test_class_balanced_start_epoch_validation():
    with pytest.raises(ll.ConfigurationError, match=r"`start_epoch` must be an integer >= 0, got -1"):
        ll.build_reweighter("class_balanced", start_epoch=-1)


def test_ldam_margins_need_one_per_class():
    with pytest.raises(ValueError, match=r"`margins` must have shape \[C\] = \[5\], got \[4\]"):
        LF.ldam(torch.zeros(2, 5), torch.tensor([0, 1]), torch.ones(4))
