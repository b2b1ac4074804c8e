"""Issue 18: ``jsd``, the AugMix loss (Hendrycks et al., ICLR 2020), against an explicit float64 loop of
``CE(p_clean, y) + λ · (1/K) Σ_k KL(p_k ‖ M)``, ``M`` the mean of the ``K`` views' softmax predictions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lightning_losses as ll
from lightning_losses import functional as LF


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _ref_jsd(views, y, lam):
    probs = [_softmax(v) for v in views]
    k, c = len(probs), len(probs[0])
    mix = [sum(p[j] for p in probs) / k for j in range(c)]
    js = sum(sum(p[j] * math.log(p[j] / mix[j]) for j in range(c)) for p in probs) / k
    ce = 0.0 if y is None or y == -100 else -math.log(probs[0][y])
    return ce + lam * js


def _views(n=5, k=3, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, c, generator=g, dtype=torch.float64) * 2, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("lam", [12.0, 1.0, 0.0])
def test_jsd_matches_float64_loop(k, lam):
    logits, target = _views(k=k)
    target[1] = -100
    expected = [_ref_jsd(logits[i].tolist(), int(target[i]), lam) for i in range(5)]
    out = ll.build_loss("jsd", lam=lam)(logits=logits, target=target)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)
    alone = [_ref_jsd(logits[i].tolist(), None, lam) for i in range(5)]
    torch.testing.assert_close(LF.jsd(logits, lam=lam), torch.tensor(alone, dtype=torch.float64))


def test_identical_views_leave_cross_entropy_and_soft_targets_work():
    logits, target = _views()
    same = logits[:, :1].expand(-1, 3, -1)
    torch.testing.assert_close(LF.js_divergence(same), torch.zeros(5, dtype=torch.float64), atol=1e-15, rtol=0)
    torch.testing.assert_close(LF.jsd(same, target), F.cross_entropy(logits[:, 0], target, reduction="none"))
    soft = torch.softmax(torch.randn(5, 4, dtype=torch.float64), dim=1)
    expected = F.cross_entropy(logits[:, 0], soft, reduction="none") + 12.0 * LF.js_divergence(logits)
    torch.testing.assert_close(LF.jsd(logits, soft), expected)


def test_jsd_is_bounded_by_log_k_and_finite_at_saturated_views():
    logits = torch.tensor([[[60.0, -60.0], [-60.0, 60.0]]], requires_grad=True)
    js = LF.js_divergence(logits)
    js.sum().backward()
    assert js.item() == pytest.approx(math.log(2), rel=1e-6) and torch.isfinite(logits.grad).all()


def test_jsd_rejects_a_single_view_and_wrong_ranks():
    with pytest.raises(ValueError, match=r"`logits` must hold K >= 2 views on axis 1, got \[4, 1, 3\]"):
        LF.jsd(torch.zeros(4, 1, 3))
    with pytest.raises(ValueError, match=r"`logits` must be a floating tensor of shape \[N, K, C\]"):
        LF.jsd(torch.zeros(4, 3))


def test_constructor_validation_and_names():
    with pytest.raises(ll.ConfigurationError, match=r"`lam` must be >= 0.0, got -1.0"):
        ll.build_loss("jsd", lam=-1.0)
    with pytest.raises(ll.ConfigurationError, match=r"`ignore_index` must be an integer, got 'x'"):
        ll.build_loss("augmix", ignore_index="x")
    assert ll.build_loss("augmix", lam=3.0).lam == 3.0 and "jsd" in ll.list_losses()
