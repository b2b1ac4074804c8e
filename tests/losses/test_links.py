"""LDR-KL, StableMax CE and the spherical Z-loss: validation, the DRO closed form, limits and invariances."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

import lightning_losses as ll
from lightning_losses import functional as LF


def _data(n=6, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64) * 2, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("ldr_kl", {"lam": 0.0}, r"`lam` must be > 0.0, got 0.0"),
        ("ldr_kl", {"margin": -1}, r"`margin` must be >= 0.0, got -1.0"),
        ("ldr_kl", {"normalize": "yes"}, r"`normalize` must be a bool, got 'yes'"),
        ("spherical_z_loss", {"b": 1.0}, r"loss `spherical_z_loss` is missing required argument\(s\): `a`"),
        ("spherical_z_loss", {"a": 0.0, "b": 1.0}, r"`a` must be > 0.0, got 0.0"),
        ("spherical_z_loss", {"a": 1.0, "b": float("inf")}, r"`b` must be a finite number, got inf"),
        ("stablemax_cross_entropy", {"temperature": 1.0}, r"unexpected argument `temperature`"),
    ],
)
def test_constructor_validation(name, kwargs, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.build_loss(name, **kwargs)


@pytest.mark.parametrize("lam,margin", [(1.0, 2.0), (0.3, 1.0), (2.0, 0.0)])
def test_ldr_kl_is_the_worst_case_over_label_distributions(lam, margin):
    """Closed form == numerical max over the simplex of sum_k p_k a_k - lam KL(p || uniform) (scipy)."""
    z, y = _data(n=3)
    out = LF.ldr_kl(z, y, lam=lam, margin=margin, normalize=False)
    c = z.shape[1]
    for i in range(3):
        a = np.array([margin * (k != int(y[i])) + float(z[i, k] - z[i, y[i]]) for k in range(c)])

        def neg(theta, a=a):
            p = np.exp(theta - theta.max())
            p /= p.sum()
            return -(p @ a - lam * np.sum(p * np.log(c * p)))

        best = minimize(neg, np.zeros(c), method="BFGS", options={"gtol": 1e-10})
        assert out[i].item() == pytest.approx(-best.fun, abs=1e-6)


def test_ldr_kl_limits():
    z, y = _data()
    c = z.shape[1]
    lam = 0.7
    scaled_ce = lam * LF.cross_entropy(z / lam, y) - lam * math.log(c)
    torch.testing.assert_close(LF.ldr_kl(z, y, lam=lam, margin=0.0, normalize=False), scaled_ce)
    hinge = (2.0 * (1 - torch.nn.functional.one_hot(y, c)) + z - z.gather(1, y[:, None])).amax(1)
    near = LF.ldr_kl(z, y, lam=1e-4, margin=2.0, normalize=False)
    assert (near <= hinge + 1e-9).all() and (near >= hinge - 1e-4 * math.log(c) - 1e-9).all()


def test_ldr_kl_normalize_is_the_reference_score_transform():
    z, y = _data()
    f = torch.nn.functional.softplus(z)
    f = f / f.mean(1, keepdim=True)
    torch.testing.assert_close(
        LF.ldr_kl(z, y), LF.ldr_kl(torch.log(torch.expm1(f)), y, normalize=True), rtol=0, atol=1e-9
    )
    torch.testing.assert_close(LF.ldr_kl(z, y), LF.ldr_kl(f, y, normalize=False))


def test_stablemax_is_a_distribution_and_differentiable_at_zero():
    z, _ = _data()
    torch.testing.assert_close(LF.log_stablemax(z).exp().sum(-1), torch.ones(6, dtype=torch.float64))
    at_zero = torch.tensor([[0.0, 0.0, -1.0], [0.0, 2.0, 0.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 2])
    assert torch.autograd.gradcheck(lambda v: LF.stablemax_cross_entropy(v, target), (at_zero,))


def test_stablemax_does_not_collapse_where_fp32_softmax_does():
    z = torch.tensor([[200.0, 0.0, -200.0]])  # fp32 softmax gives p_y == 1 exactly: CE and its gradient are 0
    y = torch.tensor([0])
    assert LF.cross_entropy(z, y).item() == 0.0
    out = LF.stablemax_cross_entropy(z, y)
    assert out.item() == pytest.approx(-math.log(201 / (201 + 1 + 1 / 201)), rel=1e-6)


def test_spherical_z_loss_is_shift_and_scale_invariant():
    z, y = _data()
    base = LF.spherical_z_loss(z, y, a=2.0, b=1.0)
    torch.testing.assert_close(LF.spherical_z_loss(3.0 * z + 7.0, y, a=2.0, b=1.0), base, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(LF.spherical_z_loss(z, y, a=2.0, b=3.0), base)
