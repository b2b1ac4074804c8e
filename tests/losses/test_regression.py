"""Robust regression, HL-Gauss and ordinal Wasserstein losses against independent references (numpy / scipy)."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F

import lightning_losses as ll
from lightning_losses import functional as LF
from lightning_losses.errors import ConfigurationError


def _rand(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_(True)


# name, kwargs, element-wise numpy reference of the residual r = pred - target
ELEMENTWISE = [
    ("mae_regression", {}, lambda r: np.abs(r)),
    ("huber", {"delta": 1.0}, lambda r: np.where(np.abs(r) <= 1.0, 0.5 * r**2, 1.0 * (np.abs(r) - 0.5))),
    ("huber", {"delta": 0.3}, lambda r: np.where(np.abs(r) <= 0.3, 0.5 * r**2, 0.3 * (np.abs(r) - 0.15))),
    ("pseudo_huber", {"delta": 1.0}, lambda r: np.sqrt(1 + r**2) - 1),
    ("pseudo_huber", {"delta": 2.5}, lambda r: 2.5**2 * (np.sqrt(1 + (r / 2.5) ** 2) - 1)),
    ("log_cosh", {}, lambda r: np.log(np.cosh(r))),
    ("quantile", {"q": 0.5}, lambda r: np.maximum(0.5 * -r, -0.5 * -r)),
    ("quantile", {"q": 0.9}, lambda r: np.where(-r >= 0, 0.9 * -r, (0.9 - 1) * -r)),
    ("cauchy", {"c": 1.0}, lambda r: np.log(1 + 0.5 * r**2)),
    ("cauchy", {"c": 0.5}, lambda r: np.log(1 + 0.5 * (r / 0.5) ** 2)),
    ("mse", {}, lambda r: r**2),
]
FUNCTIONAL = {
    "mae_regression": LF.mae_regression,
    "huber": LF.huber,
    "pseudo_huber": LF.pseudo_huber,
    "log_cosh": LF.log_cosh,
    "quantile": LF.quantile,
    "cauchy": LF.cauchy,
    "mse": LF.mse,
}


@pytest.mark.parametrize("name,kwargs,ref", ELEMENTWISE)
@pytest.mark.parametrize("shape", [(7,), (5, 3)])
def test_elementwise_parity(name, kwargs, ref, shape):
    pred, target = _rand(*shape, seed=1), _rand(*shape, seed=2)
    module = ll.build_loss(name, **kwargs)
    out = module(pred=pred, target=target)
    assert out.shape == (shape[0],)
    r = (pred - target).detach().numpy()
    expected = ref(r).reshape(shape[0], -1).mean(axis=1)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(FUNCTIONAL[name](pred, target, **kwargs), out)
    if name != "mse":
        assert type(module).family == "regression"


@pytest.mark.parametrize("name,kwargs,ref", ELEMENTWISE)
def test_elementwise_gradcheck(name, kwargs, ref):
    pred, target = _rand(4, 2, seed=3), _rand(4, 2, seed=4)
    loss = ll.build_loss(name, **kwargs)
    assert torch.autograd.gradcheck(lambda p, t: loss(pred=p, target=t), (pred, target))


def test_huber_matches_torch():
    pred, target = _rand(6, 3, seed=5), _rand(6, 3, seed=6)
    expected = F.huber_loss(pred, target, delta=0.7, reduction="none").mean(dim=1)
    torch.testing.assert_close(LF.huber(pred, target, delta=0.7), expected)


def test_quantile_minimiser_is_the_sample_quantile():
    y = torch.linspace(-3.0, 5.0, 101, dtype=torch.float64) ** 3
    grid = torch.linspace(-30.0, 130.0, 16001, dtype=torch.float64)
    losses = torch.stack([LF.quantile(c.expand(101), y, q=0.8).mean() for c in grid[::40]])
    best = grid[::40][losses.argmin()]
    assert abs(float(best) - float(np.quantile(y.numpy(), 0.8, method="lower"))) < 0.5


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["mse", "mae_regression", "huber", "pseudo_huber", "log_cosh", "quantile", "cauchy"])
def test_half_precision_large_residuals_are_finite(name, dtype):
    pred = torch.tensor([[3.0e4, -3.0e4], [1.0, 0.0]], dtype=dtype, requires_grad=True)
    target = torch.tensor([[-3.0e4, 3.0e4], [0.0, 1.0]], dtype=dtype)
    out = ll.build_loss(name)(pred=pred, target=target)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(pred.grad).all()


def test_log_cosh_and_pseudo_huber_stable_forms():
    big = torch.tensor([1.0e30, -1.0e30], requires_grad=True)
    out = LF.log_cosh(big, torch.zeros(2))
    torch.testing.assert_close(out, big.detach().abs() - math.log(2.0))  # naive log(cosh) overflows to inf
    out.sum().backward()
    torch.testing.assert_close(big.grad, torch.tensor([1.0, -1.0]))
    tiny = torch.tensor([1e-5])  # the naive sqrt(1 + u^2) - 1 cancels to 0 in float32
    torch.testing.assert_close(LF.pseudo_huber(tiny, torch.zeros(1)), torch.tensor([0.5e-10]))


# ---------------------------------------------------------------------------------------------- Gaussian NLL


def test_gaussian_nll_matches_torch_and_scipy():
    pred, target = _rand(6, 3, seed=7), _rand(6, 3, seed=8)
    var = (torch.rand(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) + 0.1).requires_grad_()
    out = ll.build_loss("gaussian_nll")(pred=pred, target=target, var=var)
    torch.testing.assert_close(out, F.gaussian_nll_loss(pred, target, var, reduction="none").mean(dim=1))
    full = LF.gaussian_nll(pred, target, var=var, full=True)
    ref = -scipy.stats.norm.logpdf(target.detach(), loc=pred.detach(), scale=np.sqrt(var.detach())).mean(axis=1)
    np.testing.assert_allclose(full.detach().numpy(), ref, rtol=1e-10)
    log_var_loss = ll.build_loss("gaussian_nll", parameterization="log_var")
    torch.testing.assert_close(log_var_loss(pred=pred, target=target, log_var=var.log()), out)
    assert torch.autograd.gradcheck(lambda p, v: LF.gaussian_nll(p, target, var=v), (pred, var))
    lv = var.detach().log().requires_grad_()
    assert torch.autograd.gradcheck(lambda p, v: LF.gaussian_nll(p, target, log_var=v), (pred, lv))


def test_gaussian_nll_variance_shapes_and_clamp():
    pred, target = _rand(4, 3, seed=10), _rand(4, 3, seed=11)
    v = torch.full((4,), 2.0, dtype=torch.float64)
    expected = LF.gaussian_nll(pred, target, var=v.unsqueeze(-1).expand(4, 3))
    torch.testing.assert_close(LF.gaussian_nll(pred, target, var=v), expected)
    torch.testing.assert_close(LF.gaussian_nll(pred, target, var=v.unsqueeze(-1)), expected)
    # below eps: value uses eps, gradient passes straight through (as torch.nn.functional.gaussian_nll_loss)
    small = torch.full((4, 3), 1e-9, dtype=torch.float64, requires_grad=True)
    out = LF.gaussian_nll(pred.detach(), target, var=small, eps=1e-6)
    ref_var = small.detach().clone().requires_grad_()
    ref = F.gaussian_nll_loss(pred.detach(), target, ref_var, eps=1e-6, reduction="none").mean(dim=1)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(small.grad, ref_var.grad)


def test_gaussian_nll_input_errors():
    pred, target = torch.zeros(4, 3), torch.zeros(4, 3)
    with pytest.raises(ValueError, match="exactly one of `var` .* or `log_var`"):
        LF.gaussian_nll(pred, target)
    with pytest.raises(ValueError, match="exactly one of"):
        LF.gaussian_nll(pred, target, var=torch.ones(4, 3), log_var=torch.zeros(4, 3))
    with pytest.raises(ValueError, match=r"`var` must have the shape of `pred` \[4, 3\] .* got \[3\]"):
        LF.gaussian_nll(pred, target, var=torch.ones(3))
    with pytest.raises(ValueError, match="`var` must be non-negative"):
        LF.gaussian_nll(pred, target, var=-torch.ones(4, 3))
    with pytest.raises(ValueError, match="`log_var` must be a floating tensor"):
        LF.gaussian_nll(pred, target, log_var=torch.zeros(4, 3, dtype=torch.long))
    loss = ll.build_loss("gaussian_nll")
    with pytest.raises(ValueError, match=r"parameterization='var' needs input `var` \(only\)"):
        loss(pred=pred, target=target, log_var=torch.zeros(4, 3))


# ---------------------------------------------------------------------------------------------- HL-Gauss


def _hl_probs_reference(y, lo, hi, bins, sigma):
    edges = np.linspace(lo, hi, bins + 1)
    cdf = scipy.stats.norm.cdf(edges[None, :], loc=np.clip(y, lo, hi)[:, None], scale=sigma)
    mass = np.diff(cdf, axis=1)
    return mass / (cdf[:, -1:] - cdf[:, :1])


def test_hl_gauss_parity_and_prediction():
    lo, hi, bins, sigma = -2.0, 3.0, 10, 0.4
    y = torch.tensor([-1.7, 0.0, 0.33, 2.9, 5.0], dtype=torch.float64)  # 5.0 is outside: clamped to 3.0
    probs = LF.hl_gauss_target(y, min_value=lo, max_value=hi, num_bins=bins, sigma=sigma)
    ref = _hl_probs_reference(y.numpy(), lo, hi, bins, sigma)
    np.testing.assert_allclose(probs.numpy(), ref, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5, dtype=torch.float64))
    logits = _rand(5, bins, seed=12)
    loss = ll.build_loss("hl_gauss", min_value=lo, max_value=hi, num_bins=bins, sigma=sigma)
    out = loss(logits=logits, target=y)
    expected = -(ref * torch.log_softmax(logits.detach(), dim=1).numpy()).sum(axis=1)
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=1e-10)
    torch.testing.assert_close(LF.hl_gauss(logits, y, min_value=lo, max_value=hi, sigma=sigma), out)
    centers = (np.linspace(lo, hi, bins + 1)[1:] + np.linspace(lo, hi, bins + 1)[:-1]) / 2
    expected_pred = torch.softmax(logits.detach(), dim=1).numpy() @ centers
    np.testing.assert_allclose(loss.predict(logits).detach().numpy(), expected_pred, rtol=1e-10)
    # logits equal to the log of the target histogram predict (nearly) the target back for interior targets
    interior = torch.tensor([0.0, 0.33], dtype=torch.float64)
    back = loss.predict(LF.hl_gauss_target(interior, min_value=lo, max_value=hi, num_bins=bins, sigma=sigma).log())
    torch.testing.assert_close(back, interior, atol=1e-3, rtol=0)
    assert torch.autograd.gradcheck(lambda z: loss(logits=z, target=y), (logits,))
    assert type(loss).family == "regression"


def test_hl_gauss_defaults_and_errors():
    loss = ll.build_loss("hl_gauss", min_value=0.0, max_value=1.0, num_bins=4)
    assert loss.sigma == pytest.approx(0.75 * 0.25)
    with pytest.raises(ConfigurationError, match=r"`max_value` must be > `min_value` = 1.0, got 1.0"):
        ll.build_loss("hl_gauss", min_value=1.0, max_value=1.0)
    with pytest.raises(ConfigurationError, match=r"`num_bins` must be an integer >= 2, got 1"):
        ll.build_loss("hl_gauss", num_bins=1)
    with pytest.raises(ConfigurationError, match=r"`sigma` must be > 0.0, got 0.0"):
        ll.build_loss("hl_gauss", sigma=0.0)
    with pytest.raises(ConfigurationError, match=r"`min_value` must be a finite number"):
        ll.build_loss("hl_gauss", min_value=float("nan"))
    with pytest.raises(ValueError, match=r"`logits` must have num_bins = 4 columns, got \[2, 3\]"):
        loss(logits=torch.zeros(2, 3), target=torch.zeros(2))
    with pytest.raises(ValueError, match=r"`target` must be a floating tensor of shape \[N\] = \[2\]"):
        loss(logits=torch.zeros(2, 4), target=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`logits` must be a floating tensor of shape \[N, num_bins\]"):
        loss(logits=torch.zeros(4), target=torch.zeros(4))
    far = loss(logits=torch.zeros(2, 4), target=torch.tensor([-1e6, 1e6]))
    assert torch.isfinite(far).all()


# ---------------------------------------------------------------------------------------------- ordinal Wasserstein


def test_ordinal_wasserstein_matches_scipy():
    logits, target = _rand(6, 5, seed=13), torch.tensor([0, 4, 2, 1, 3, 2])
    out = ll.build_loss("ordinal_wasserstein")(logits=logits, target=target)
    probs = torch.softmax(logits.detach(), dim=1).numpy()
    classes = np.arange(5)
    for i in range(6):
        onehot = np.eye(5)[int(target[i])]
        ref = scipy.stats.wasserstein_distance(classes, classes, probs[i], onehot)
        assert out[i].item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
    soft = torch.softmax(_rand(6, 5, seed=14).detach(), dim=1)
    out_soft = LF.ordinal_wasserstein(logits, soft, bin_width=0.5)
    for i in range(6):
        ref = scipy.stats.wasserstein_distance(classes * 0.5, classes * 0.5, probs[i], soft[i].numpy())
        assert out_soft[i].item() == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert torch.autograd.gradcheck(lambda z: LF.ordinal_wasserstein(z, target), (logits,))


def test_ordinal_wasserstein_squared_and_errors():
    logits, target = _rand(4, 3, seed=15), torch.tensor([0, 2, 1, 1])
    out = ll.build_loss("ordinal_wasserstein", p=2)(logits=logits, target=target)
    probs = torch.softmax(logits.detach(), dim=1).numpy()
    for i in range(4):
        cdf, tcdf = np.cumsum(probs[i]), np.cumsum(np.eye(3)[int(target[i])])
        assert out[i].item() == pytest.approx(sum((cdf[c] - tcdf[c]) ** 2 for c in range(2)), rel=1e-10)
    assert torch.autograd.gradcheck(lambda z: LF.ordinal_wasserstein(z, target, p=2), (logits,))
    # distance-aware: the same wrong mass costs more further away (cross entropy would not tell them apart)
    near = LF.ordinal_wasserstein(torch.tensor([[0.0, 9.0, 0.0]]), torch.tensor([0]))
    far = LF.ordinal_wasserstein(torch.tensor([[0.0, 0.0, 9.0]]), torch.tensor([0]))
    assert float(far) > 1.9 * float(near)
    with pytest.raises(ConfigurationError, match=r"`p` must be an integer in \[1, 2\], got 3"):
        ll.build_loss("ordinal_wasserstein", p=3)
    with pytest.raises(ConfigurationError, match=r"`bin_width` must be > 0.0, got -1.0"):
        ll.build_loss("ordinal_wasserstein", bin_width=-1.0)
    with pytest.raises(ValueError, match=r"`target` labels must be in \[0, 2\]"):
        LF.ordinal_wasserstein(logits, torch.tensor([0, 3, 1, 1]))
    half = LF.ordinal_wasserstein(torch.tensor([[6e4, -6e4, 0.0]], dtype=torch.float16), torch.tensor([2]))
    assert torch.isfinite(half).all()


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("huber", {"delta": 0.0}, r"`delta` must be > 0.0, got 0.0"),
        ("huber", {"delta": "1"}, r"`delta` must be a finite number > 0.0, got '1'"),
        ("pseudo_huber", {"delta": -1.0}, r"`delta` must be > 0.0, got -1.0"),
        ("quantile", {"q": 1.0}, r"`q` must be in \(0.0, 1.0\), got 1.0"),
        ("quantile", {"q": 0.0}, r"`q` must be in \(0.0, 1.0\), got 0.0"),
        ("cauchy", {"c": 0}, r"`c` must be > 0.0, got 0.0"),
        ("gaussian_nll", {"parameterization": "logvar"}, r"`parameterization` must be one of .*did you mean `log_var`"),
        ("gaussian_nll", {"full": 1}, r"`full` must be a bool \(True or False\), got 1"),
        ("gaussian_nll", {"eps": 0.0}, r"`eps` must be > 0.0, got 0.0"),
        ("l1", {"delta": 1.0}, r"unexpected argument `delta`"),
    ],
)
def test_constructor_validation(name, kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        ll.build_loss(name, **kwargs)


def test_input_validation():
    with pytest.raises(ValueError, match=r"`target` must have the shape of `pred` \[3\], got \[4\]"):
        LF.huber(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"`pred` must be a floating tensor"):
        LF.cauchy(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"`pred` must be a torch.Tensor, got list"):
        LF.log_cosh([0.0], torch.zeros(1))


def test_aliases():
    assert isinstance(ll.build_loss("l1"), type(ll.build_loss("mae_regression")))
    assert isinstance(ll.build_loss("pinball"), type(ll.build_loss("quantile")))
