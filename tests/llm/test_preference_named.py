"""TRL's DPO options as registered names (issue 18): ``dpo_{reverse_kl,forward_kl,js_divergence,alpha_divergence}``
and ``ld_dpo``, against explicit float64 loops of TRL 1.16's formulas."""

from __future__ import annotations

import math

import pytest
import torch

import lightning_losses as ll
from tests.llm.test_preference_trl import _close, _deltas, _kw, _logsig, _pairs

DIVERGENCES = ["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"]


def test_every_trl_divergence_name_is_listed():
    names = ll.list_losses()
    assert [f"dpo_{d}" for d in DIVERGENCES if f"dpo_{d}" in names] == [f"dpo_{d}" for d in DIVERGENCES]
    assert "ld_dpo" in names


@pytest.mark.parametrize("divergence", DIVERGENCES)
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_named_f_dpo_matches_the_trl_formula(divergence, beta):
    c, r, rc, rr = _pairs(scale=0.3)
    f_alpha = {"f_alpha": 0.3} if divergence == "alpha_divergence" else {}
    d = _deltas(c, r, rc, rr, divergence, 0.3)
    out = ll.build_loss(f"dpo_{divergence}", beta=beta, **f_alpha)(**_kw(c, r, rc, rr))
    _close(out, [-_logsig(beta * x) for x in d])


def _ld_sum(lp: torch.Tensor, mask: torch.Tensor, shared: int, alpha: float) -> float:
    pos, total = 0, 0.0
    for t in range(lp.shape[0]):
        if mask[t]:
            pos += 1
            total += float(lp[t].detach()) * (1.0 if pos <= shared else alpha)
    return total


@pytest.mark.parametrize("ld_alpha", [0.0, 0.3, 1.0])
def test_ld_dpo_matches_an_explicit_loop(ld_alpha):
    g = torch.Generator().manual_seed(3)
    n, beta = 4, 0.2
    lc, rc_ = (-torch.rand(n, 6, generator=g, dtype=torch.float64) for _ in range(2))
    lr, rr_ = (-torch.rand(n, 5, generator=g, dtype=torch.float64) for _ in range(2))
    mc = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]])
    mr = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    lc.requires_grad_(True)
    out = ll.build_loss("ld_dpo", beta=beta, ld_alpha=ld_alpha)(lc, lr, rc_, rr_, mc, mr)
    expected = []
    for i in range(n):
        shared = min(int(mc[i].sum()), int(mr[i].sum()))
        w = _ld_sum(lc[i], mc[i], shared, ld_alpha) - _ld_sum(rc_[i], mc[i], shared, ld_alpha)
        lo = _ld_sum(lr[i], mr[i], shared, ld_alpha) - _ld_sum(rr_[i], mr[i], shared, ld_alpha)
        expected.append(-_logsig(beta * (w - lo)))
    _close(out, expected)
    out.sum().backward()
    assert torch.isfinite(lc.grad).all() and lc.grad.abs().sum() > 0
    if ld_alpha == 1.0:  # LD-DPO at alpha 1 is DPO on summed log-probs
        plain = ll.build_loss("dpo", beta=beta)(
            (lc * mc).sum(-1), (lr * mr).sum(-1), (rc_ * mc).sum(-1), (rr_ * mr).sum(-1)
        )
        torch.testing.assert_close(out, plain, rtol=1e-12, atol=1e-12)
    assert math.isfinite(float(out.sum()))


def test_named_losses_refuse_bad_arguments():
    with pytest.raises(ll.ConfigurationError, match=r"`ld_alpha` must be in \[0.0, 1.0\], got 1.5"):
        ll.build_loss("ld_dpo", ld_alpha=1.5)
    with pytest.raises(ll.ConfigurationError, match=r"loss `dpo_forward_kl` got an unexpected argument `divergence`"):
        ll.build_loss("dpo_forward_kl", divergence="js_divergence")
    with pytest.raises(ll.ConfigurationError, match=r"`f_alpha` must be > 0.0, got 0.0"):
        ll.build_loss("dpo_alpha_divergence", f_alpha=0)
