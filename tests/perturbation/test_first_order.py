"""gam and fad (first-order flatness): parameter trajectories against an explicit float64 loop of the formulas (the four
gradients by autograd at the hand-built points), the finite differences against autograd Hessian-vector products,
the SAM special cases, LookSAM / every_n_steps, a GradScaler's scale, argument validation, registration."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

import lightning_losses as ll
from lightning_losses.callbacks import build_callbacks
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import build_perturbation, perturbed_backward

from ._reference import grad_at, norm, tiny_batch, tiny_model

LR, MOMENTUM, STEPS = 0.1, 0.9, 3


def _batches():
    return [tiny_batch(seed=40 + s, n=8) for s in range(STEPS)]


def _unit_step(v: dict, radius: float) -> dict:
    n = norm(v.values())
    return {k: radius * t / (n + 1e-12) for k, t in v.items()}


def four_gradients(model, w, x, y, rho_fd, rho_norm):
    """g0 at w, g1 at w + rho' g0^, g2 at w2 = w + rho (g1 - g0)^, g3 at w2 + rho' g2^ (float64 autograd)."""
    g0 = grad_at(model, w, x, y)
    e0 = _unit_step(g0, rho_fd)
    g1 = grad_at(model, {k: w[k] + e0[k] for k in w}, x, y)
    e1 = _unit_step({k: g1[k] - g0[k] for k in w}, rho_norm)
    w2 = {k: w[k] + e1[k] for k in w}
    g2 = grad_at(model, w2, x, y)
    e2 = _unit_step(g2, rho_fd)
    g3 = grad_at(model, {k: w2[k] + e2[k] for k in w}, x, y)
    return g0, g1, g2, g3


def gam_descent(g0, g1, g2, g3, alpha, beta, gamma):
    h = {k: alpha * g1[k] + (1 - alpha) * g3[k] for k in g0}
    p = {k: g0[k] + (1 - beta) * g2[k] for k in g0}
    dot = sum(float((p[k] * h[k]).sum()) for k in g0)
    h2 = sum(float((h[k] ** 2).sum()) for k in g0)
    return {k: h[k] - gamma * (p[k] - dot / (h2 + 1e-12) * h[k]) for k in g0}


def fad_descent(g0, g1, g2, g3, alpha, beta):
    return {k: g0[k] + alpha * (g1[k] - g0[k]) + beta * (g3[k] - g2[k]) for k in g0}


def _reference(method, kwargs, batches=None):
    """SGD with momentum on the hand-computed descent gradients."""
    model = tiny_model()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=LR, momentum=MOMENTUM)
    for x, y in batches or _batches():
        w = {k: v.detach().clone() for k, v in params.items()}
        if method == "gam":
            grads = four_gradients(model, w, x, y, kwargs["rho"], kwargs["norm_rho"])
            d = gam_descent(*grads, kwargs["alpha"], kwargs["beta"], kwargs["gamma"])
        else:
            grads = four_gradients(model, w, x, y, kwargs["rho"], kwargs["rho"])
            d = fad_descent(*grads, kwargs["alpha"], kwargs["beta"])
        for k, p in params.items():
            p.grad = d[k]
        opt.step()
    return {k: v.detach().clone() for k, v in params.items()}


def _ours(method, kwargs, batches=None):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    engine = build_perturbation(method, **kwargs)
    for x, y in batches or _batches():
        opt.zero_grad()
        perturbed_backward(engine, model, lambda x=x, y=y: nn.functional.cross_entropy(model(x), y), optimizer=opt)
        opt.step()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _same(a, b, atol=1e-10):
    start = tiny_model().state_dict()
    assert max(float((a[k] - start[k]).abs().max()) for k in a) > 1e-3  # the steps did something
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


GAM = {"rho": 0.05, "norm_rho": 0.3, "alpha": 0.6, "beta": 0.2, "gamma": 0.3}
FAD = {"rho": 0.1, "alpha": 0.8, "beta": 0.7}


def test_gam_trajectory_equals_explicit_float64_loop():
    _same(_ours("gam", GAM), _reference("gam", GAM))


def test_fad_trajectory_equals_explicit_float64_loop():
    _same(_ours("fad", FAD), _reference("fad", FAD))


def test_the_first_order_term_moves_the_step_away_from_sam():
    _same(_ours("gam", {**GAM, "alpha": 1.0, "gamma": 0.0}), _ours("sam", {"rho": GAM["rho"]}), atol=1e-12)
    _same(_ours("fad", {**FAD, "alpha": 1.0, "beta": 0.0}), _ours("sam", {"rho": FAD["rho"]}), atol=1e-12)
    sam = _ours("sam", {"rho": FAD["rho"]})
    assert max(float((_ours("fad", FAD)[k] - sam[k]).abs().max()) for k in sam) > 1e-4


def _hvp(model, w, x, y, v):
    """H(w) v by double backward (autograd), as the paper's unaccelerated form computes it."""
    params = {k: t.detach().clone().requires_grad_(True) for k, t in w.items()}
    loss = nn.functional.cross_entropy(functional_call(model, params, (x,)), y)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    dot = sum((g * v[k]).sum() for g, k in zip(grads, params))
    return dict(zip(params, torch.autograd.grad(dot, list(params.values()))))


def _grad_norm_gradient(model, w, x, y):
    r""":math:`\nabla\|\nabla L(w)\| = H \nabla L / \|\nabla L\|` exactly."""
    g = grad_at(model, w, x, y)
    n = norm(g.values())
    return {k: t / n for k, t in _hvp(model, w, x, y, g).items()}


def test_finite_differences_approach_the_hessian_vector_products():
    r"""fad's descent gradient with a small radius against its exact value from autograd HVPs:
    :math:`g + \alpha\rho\,\nabla\|\nabla L(w)\| + \beta\rho\,\nabla\|\nabla L(w_2)\|`, :math:`w_2 = w + \rho\,
    \widehat{\nabla\|\nabla L(w)\|}`; the error shrinks as :math:`\rho^2`."""
    model, (x, y) = tiny_model(), tiny_batch(seed=3, n=8)
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    errors = []
    for rho in (1e-2, 5e-3):
        engine = build_perturbation("fad", rho=rho, alpha=0.7, beta=0.9)
        model.zero_grad()
        perturbed_backward(engine, model, lambda: nn.functional.cross_entropy(model(x), y))
        ours = {k: p.grad.detach().clone() for k, p in model.named_parameters()}
        g = grad_at(model, w, x, y)
        f0 = _grad_norm_gradient(model, w, x, y)
        w2 = {k: w[k] + v for k, v in _unit_step(f0, rho).items()}
        f2 = _grad_norm_gradient(model, w2, x, y)
        exact = {k: g[k] + 0.7 * rho * f0[k] + 0.9 * rho * f2[k] for k in w}
        first_order = norm([rho * f0[k] for k in w])
        errors.append(norm([ours[k] - exact[k] for k in w]) / first_order)
    assert errors[0] < 0.05  # the first-order terms are right to a few percent at rho = 0.01
    assert errors[1] < 0.6 * errors[0]  # and the error falls with rho (O(rho^2) against O(rho))


def _looksam_reference(kwargs, alpha_look):
    """gam on step 0 and 2, LookSAM's extrapolation with the stored g_v (of gam's descent gradient) on step 1."""
    model = tiny_model()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=LR, momentum=MOMENTUM)
    stored = None
    for s, (x, y) in enumerate(_batches()):
        w = {k: v.detach().clone() for k, v in params.items()}
        g = grad_at(model, w, x, y)
        if s % 2 == 0:
            grads = four_gradients(model, w, x, y, kwargs["rho"], kwargs["norm_rho"])
            d = gam_descent(*grads, kwargs["alpha"], kwargs["beta"], kwargs["gamma"])
            cos = sum(float((g[k] * d[k]).sum()) for k in w) / (norm(g.values()) ** 2 + 1e-12)
            stored = {k: d[k] - cos * g[k] for k in w}
        else:
            scale = alpha_look * norm(g.values()) / (norm(stored.values()) + 1e-12)
            d = {k: g[k] + scale * stored[k] for k in w}
        for k, p in params.items():
            p.grad = d[k]
        opt.step()
    return {k: v.detach().clone() for k, v in params.items()}


def test_gam_with_every_n_steps_and_looksam_equals_explicit_loop():
    _same(_ours("gam", {**GAM, "every_n_steps": 2, "reuse_alpha": 0.5}), _looksam_reference(GAM, 0.5))


@pytest.mark.parametrize("method", ["gam", "fad"])
def test_gradient_scale_is_divided_out(method):
    """A GradScaler's scale S on every pass: the descent gradient is S times the unscaled one."""
    (x, y), scale = tiny_batch(seed=5, n=8), 1024.0
    out = []
    for s in (1.0, scale):
        model = tiny_model()
        engine = build_perturbation(method)
        named = list(model.named_parameters())

        def fb(phase, s=s, model=model):
            if phase in ("ascent", "descent"):
                model.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            (loss * s).backward()
            return loss.detach()

        engine.step(fb, named, grad_scale=None if s == 1.0 else s)
        out.append({k: p.grad.detach() / s for k, p in named})
    for k in out[0]:
        torch.testing.assert_close(out[0][k], out[1][k], atol=1e-12, rtol=1e-10, msg=k)


def test_nonfinite_first_gradient_leaves_the_gradient_at_w():
    """A non-finite ascent gradient skips the perturbation: every pass runs at w, .grad is the gradient there."""
    model, (x, y) = tiny_model(), tiny_batch(seed=6, n=8)
    engine = build_perturbation("gam")
    named = list(model.named_parameters())
    calls = []

    def fb(phase):
        calls.append(phase)
        if phase != "first":
            model.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y) * (float("nan") if phase == "first" else 1.0)
        loss.backward()
        return loss.detach()

    engine.step(fb, named)
    assert calls == ["first", "descent", "descent", "descent"] and engine.skipped == 1
    g = grad_at(model, {k: v.detach() for k, v in named}, x, y)
    for k, p in named:
        torch.testing.assert_close(p.grad, g[k], atol=1e-14, rtol=0)


def test_arguments_are_validated():
    with pytest.raises(ConfigurationError, match=r"^`alpha` must be in \[0.0, 1.0\], got 1.5$"):
        ll.build_perturbation("gam", alpha=1.5)
    with pytest.raises(ConfigurationError, match=r"^`beta` must be in \[0.0, 1.0\], got -0.1$"):
        ll.build_perturbation("gam", beta=-0.1)
    with pytest.raises(ConfigurationError, match=r"^`gamma` must be >= 0.0, got -1.0$"):
        ll.build_perturbation("gam", gamma=-1.0)
    with pytest.raises(ConfigurationError, match=r"^`norm_rho` must be >= 0.0, got -0.2$"):
        ll.build_perturbation("gam", norm_rho=-0.2)
    with pytest.raises(ConfigurationError, match=r"^`rho` must be >= 0.0, got -1.0$"):
        ll.build_perturbation("fad", rho=-1.0)
    with pytest.raises(ConfigurationError, match=r"^`beta` must be >= 0.0, got -0.5$"):
        ll.build_perturbation("fad", beta=-0.5)
    with pytest.raises(ConfigurationError, match=r"^`inner_steps` must be 1 for the first-order presets"):
        ll.build_perturbation("gam", inner_steps=2)
    with pytest.raises(ConfigurationError, match=r"^`select_fraction` \(ESAM's data selection\) does not apply"):
        ll.build_perturbation("fad", select_fraction=0.5)
    with pytest.raises(ConfigurationError, match=r"^`ascent_terms` does not apply to the first-order presets"):
        ll.build_perturbation("gam", ascent_terms=["task"])
    with pytest.raises(ConfigurationError, match=r"perturbation `gam` got an unexpected argument `norm_rh`; did you"):
        ll.build_perturbation("gam", norm_rh=0.1)
    with pytest.raises(ConfigurationError, match=r"perturbation `fad` got an unexpected argument `gamma`"):
        ll.build_perturbation("fad", gamma=0.1)
    with pytest.raises(ConfigurationError, match=r"perturbation `gam` fixes `descent`"):
        ll.build_perturbation("gam", descent="surrogate_gap")
    with pytest.raises(ConfigurationError, match=r"^`alpha` must be in \[0.0, 1.0\], got 2.0$"):
        ll.GAM(alpha=2.0)


def test_registered_listed_and_buildable_from_a_recipe():
    assert {"gam", "fad"} <= set(ll.list_perturbations())
    assert {"gam", "fad"} <= set(ll.list_callbacks())
    for name in ("gam", "fad"):
        assert getattr(ll.perturbation, name).__doc__.count("Example") == 1
        assert "4 forward-backward" in getattr(ll.perturbation, name).__doc__
    gam, fad = build_callbacks({"gam": {"rho": 0.03, "norm_rho": 0.2, "every_n_steps": 2}, "fad": None})
    assert isinstance(gam, ll.GAM) and gam.engine.norm_rho == 0.2 and gam.engine.every_n_steps == 2
    assert isinstance(fad, ll.FAD) and fad.engine.beta == 0.5


@pytest.mark.parametrize("method", ["gam", "fad"])
def test_cost_is_four_passes_a_perturbed_step(method):
    model, (x, y) = tiny_model(), tiny_batch(seed=7, n=8)
    engine = build_perturbation(method, every_n_steps=2)
    named, calls = list(model.named_parameters()), []

    def fb(phase):
        calls.append(phase)
        model.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss.detach()

    for step in range(4):
        engine.step(fb, named, step=step)
    assert calls == ["first", "descent", "descent", "descent", "plain"] * 2
    assert engine.perturbed_steps == 2
