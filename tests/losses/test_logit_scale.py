"""z_loss, spectral_decoupling and logit_clip: validation, closed-form gradients, clipping geometry, objectives."""

from __future__ import annotations

import math

import pytest
import torch

import lightning_losses as ll
from lightning_losses import functional as LF
from lightning_losses.objective import Objective


def _data(n=6, c=4, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64) * scale, torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("z_loss", {"coef": -1e-4}, r"`coef` must be >= 0.0, got -0.0001"),
        ("spectral_decoupling", {}, r"loss `spectral_decoupling` is missing required argument\(s\): `lam`"),
        ("spectral_decoupling", {"lam": -0.1}, r"`lam` must be >= 0.0, got -0.1"),
        ("spectral_decoupling", {"lam": 0.1, "gamma": "x"}, r"`gamma` must be a finite number, got 'x'"),
        ("logit_clip", {"tau": 0.0}, r"`tau` must be > 0.0, got 0.0"),
        ("logit_clip", {"p": 0.5}, r"`p` must be a norm order >= 1 or 'inf', got 0.5"),
        ("logit_clip", {"p": "two"}, r"`p` must be a norm order >= 1 or 'inf', got 'two'"),
        ("logit_clip", {"base": "cross_entropi"}, r"unknown loss `cross_entropi`; did you mean `cross_entropy`\?"),
        ("logit_clip", {"base": {"name": "gce", "q": 2}}, r"`q` must be in \(0.0, 1.0\], got 2.0"),
        ("logit_clip", {"base": "mse"}, r"`base` must be a per-sample loss on `logits` and `target`, got MSE"),
        ("logit_clip", {"base": "z_loss"}, r"`base` must be a per-sample loss on `logits` and `target`, got ZLoss"),
        ("logit_clip", {"base": 3}, r"`base` must be a loss name, a \{'name': ...\} mapping or a Loss, got 3"),
    ],
)
def test_constructor_validation(name, kwargs, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.build_loss(name, **kwargs)


def test_z_loss_gradient_is_t5x_closed_form():
    z, _ = _data()
    z.requires_grad_()
    LF.z_loss(z, coef=0.01).sum().backward()
    lse = torch.logsumexp(z.detach(), -1, keepdim=True)
    torch.testing.assert_close(z.grad, 2 * 0.01 * lse * torch.softmax(z.detach(), -1))


def test_spectral_decoupling_matches_domainbed_scale():
    z, _ = _data()
    sd_reg, c = 0.1, z.shape[1]
    domainbed = sd_reg * (z**2).mean()  # DomainBed's SD penalty over all N*C entries
    torch.testing.assert_close(LF.spectral_decoupling(z, lam=2 * sd_reg / c).mean(), domainbed)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("tau", [0.5, 1.0, 4.0])
def test_clip_bounds_the_norm_and_keeps_small_vectors(p, tau):
    z, _ = _data(n=50, scale=1.0 / (tau * 2))
    clipped = LF.clip_logits(z, tau=tau, p=p)
    norm = torch.linalg.vector_norm(z, ord=p, dim=-1)
    new = torch.linalg.vector_norm(clipped, ord=p, dim=-1)
    assert (new <= 1 / tau + 1e-12).all()
    small = norm <= 1 / tau
    assert small.any() and (~small).any()
    torch.testing.assert_close(clipped[small], z[small])
    torch.testing.assert_close(new[~small], torch.full_like(new[~small], 1 / tau))
    torch.testing.assert_close(clipped[~small] / new[~small, None], z[~small] / norm[~small, None])  # direction kept


def test_clip_equals_the_authors_rule_at_tau_one():
    z, _ = _data(n=50, scale=0.5)
    norm = z.norm(dim=-1, keepdim=True)
    authors = torch.where(norm > 1.0, z / norm, z)  # hongxin001/LogitClip: if ||z|| > temp: z <- (1/temp) z/||z||
    torch.testing.assert_close(LF.clip_logits(z, tau=1.0), authors)


def test_clip_gradient_finite_at_zero_logits_and_binary_logits_clip_elementwise():
    zero = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: LF.clip_logits(v, tau=2.0), (zero,))
    torch.testing.assert_close(
        LF.clip_logits(torch.tensor([3.0, -0.2, -5.0]), tau=2.0), torch.tensor([0.5, -0.2, -0.5])
    )
    loss = ll.build_loss("logit_clip", base="bce", tau=0.5)
    assert loss.family == "binary"
    out = loss(logits=torch.tensor([10.0, -10.0]), target=torch.tensor([1.0, 1.0]))
    torch.testing.assert_close(out, LF.bce(torch.tensor([2.0, -2.0]), torch.tensor([1.0, 1.0])))


def test_logit_clip_delegates_mask_and_soft_targets_to_its_base():
    loss = ll.build_loss("logit_clip", base={"name": "cross_entropy", "ignore_index": 7}, tau=1.0)
    z, y = _data()
    y[0] = 7
    assert loss.sample_mask(logits=z, target=y).tolist() == [False] + [True] * 5
    q = torch.softmax(torch.randn(6, 4, dtype=torch.float64), -1)
    torch.testing.assert_close(loss(logits=z, target=q), LF.cross_entropy(LF.clip_logits(z), q))
    built = ll.build_loss("gce")
    assert ll.build_loss("logit_clip", base=built).base is built


def test_objective_with_logit_scale_terms():
    spec = {
        "clipped": {"loss": "logit_clip", "tau": 0.5, "base": {"name": "gce", "q": 0.7}},
        "z_loss": {"coef": 1e-2},
        "spectral_decoupling": {"lam": 0.1, "coefficient": 0.5},
    }
    z, y = _data(scale=1.0)
    out = Objective(spec)({"logits": z, "target": y})
    expected = (
        LF.gce(LF.clip_logits(z, tau=0.5), y, q=0.7)
        + LF.z_loss(z, coef=1e-2)
        + 0.5 * LF.spectral_decoupling(z, lam=0.1)
    ).mean()
    torch.testing.assert_close(out.value, expected)
