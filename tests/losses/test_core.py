"""cross_entropy, focal, bce, mse against independent references (explicit loops in float64, torch's nn losses)."""

import math

import pytest
import torch
import torch.nn.functional as F

import lightning_losses as ll
from lightning_losses import functional as LF


def _rand(n=6, c=4, seed=0, dtype=torch.float64, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=dtype) * scale).requires_grad_(True)
    target = torch.randint(0, c, (n,), generator=g)
    return logits, target


def _ce_loop(logits, target, eps=0.0, weight=None, ignore_index=-100):
    n, c = logits.shape
    w = weight if weight is not None else torch.ones(c, dtype=logits.dtype)
    out = []
    for i in range(n):
        if int(target[i]) == ignore_index:
            out.append(torch.zeros((), dtype=logits.dtype))
            continue
        lse = torch.logsumexp(logits[i], 0)
        q = [eps / c + (1 - eps) * (k == int(target[i])) for k in range(c)]
        out.append(sum(-q[k] * w[k] * (logits[i, k] - lse) for k in range(c)))
    return torch.stack(out)


@pytest.mark.parametrize("eps", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("use_weight", [False, True])
def test_cross_entropy_matches_loop_and_torch(eps, use_weight):
    logits, target = _rand()
    target[2] = -100
    weight = torch.tensor([0.5, 1.0, 2.0, 0.0], dtype=torch.float64) if use_weight else None
    ours = LF.cross_entropy(logits, target, label_smoothing=eps, weight=weight)
    torch.testing.assert_close(ours, _ce_loop(logits, target, eps, weight))
    ref = F.cross_entropy(logits, target, weight=weight, label_smoothing=eps, reduction="none")
    torch.testing.assert_close(ours, ref)
    module = ll.build_loss("cross_entropy", label_smoothing=eps, weight=weight.tolist() if use_weight else None)
    torch.testing.assert_close(module(logits=logits, target=target), ours.float(), check_dtype=False)
    assert module.sample_mask(target=target).tolist() == [t != -100 for t in target.tolist()]


def test_cross_entropy_soft_targets():
    logits, _ = _rand()
    q = torch.softmax(torch.randn(6, 4, dtype=torch.float64), -1)
    ours = LF.cross_entropy(logits, q, label_smoothing=0.2)
    q2 = q * 0.8 + 0.2 / 4
    loop = torch.stack([-(q2[i] * torch.log_softmax(logits[i], 0)).sum() for i in range(6)])
    torch.testing.assert_close(ours, loop)
    torch.testing.assert_close(ours, F.cross_entropy(logits, q, label_smoothing=0.2, reduction="none"))
    assert ll.build_loss("cross_entropy").sample_mask(target=q) is None


def _focal_naive(logits, target, gamma, alpha=None):
    p = torch.softmax(logits, -1)
    out = []
    for i in range(len(target)):
        pt = p[i, target[i]]
        a = 1.0 if alpha is None else alpha[target[i]]
        out.append(-a * (1 - pt) ** gamma * torch.log(pt))
    return torch.stack(out)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0, 5.0])
def test_focal_matches_naive_formula_values_and_grads(gamma):
    logits, target = _rand(scale=2.0)
    alpha = torch.tensor([0.25, 0.5, 1.0, 2.0], dtype=torch.float64)
    ours = LF.focal(logits, target, gamma=gamma, alpha=alpha)
    ref = _focal_naive(logits, target, gamma, alpha)
    torch.testing.assert_close(ours, ref)
    (g1,) = torch.autograd.grad(ours.sum(), logits)
    (g2,) = torch.autograd.grad(ref.sum(), logits)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("gamma", [0.25, 0.5, 2.0])
def test_focal_gradcheck(gamma):
    logits, target = _rand(n=4, c=3, scale=1.5)
    assert torch.autograd.gradcheck(lambda z: LF.focal(z, target, gamma=gamma), (logits,))
    ce = torch.tensor([0.05, 0.3, 4.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: LF.focal_term(x, gamma), (ce,))
    # near 0 (where finite differences are unreliable) the derivative of ce * (1 - e^-ce)^g is (1 + g) ce^g
    tiny = torch.tensor([1e-12, 1e-8], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(LF.focal_term(tiny, gamma).sum(), tiny)
    torch.testing.assert_close(grad, (1 + gamma) * tiny.detach() ** gamma, rtol=1e-6, atol=0)


@pytest.mark.parametrize("gamma", [0.1, 0.5, 1.0, 2.0])
@pytest.mark.parametrize(("dtype", "big"), [(torch.float32, 1e4), (torch.float16, 6e4), (torch.bfloat16, 1e4)])
def test_focal_finite_at_saturated_logits(gamma, dtype, big):
    # correct class saturated (loss 0: gradient must be 0, not NaN) and wrong class saturated (loss ~ big)
    logits = torch.tensor([[big, -big, 0.0], [-big, big, 0.0], [10.0, 0.0, 0.0]], dtype=dtype, requires_grad=True)
    target = torch.tensor([0, 0, 0])
    loss = LF.focal(logits, target, gamma=gamma)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    loss = loss.detach()
    assert float(loss[0]) == 0.0 and float(grad[0].abs().max()) == 0.0
    assert float(loss[1]) == pytest.approx(2 * big, rel=1e-2)


def test_focal_gamma_zero_is_cross_entropy_and_autocast():
    logits, target = _rand()
    torch.testing.assert_close(LF.focal(logits, target, gamma=0.0), LF.cross_entropy(logits, target))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = torch.nn.Linear(4, 4)(torch.randn(6, 4) * 100)
        out = ll.build_loss("focal", gamma=0.5)(logits=z, target=target)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_bce_matches_formula():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64) * 4
    y = torch.randint(0, 2, (5, 3), generator=g).double()
    pw = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    sig = 1 / (1 + torch.exp(-z))
    ref = -(pw * y * torch.log(sig) + (1 - y) * torch.log(1 - sig)).mean(1)
    torch.testing.assert_close(LF.bce(z, y, pos_weight=pw), ref)
    torch.testing.assert_close(
        LF.bce(z[:, 0], y[:, 0]), -(y[:, 0] * torch.log(sig[:, 0]) + (1 - y[:, 0]) * torch.log(1 - sig[:, 0]))
    )
    mod = ll.build_loss("bce", pos_weight=[1.0, 2.0, 0.5])
    torch.testing.assert_close(mod(logits=z, target=y), ref, check_dtype=False)
    assert ll.build_loss("bce", pos_weight=2.0).pos_weight.tolist() == [2.0]
    big = torch.tensor([1e4, -1e4], requires_grad=True)
    out = LF.bce(big, torch.tensor([0.0, 1.0]))
    assert torch.isfinite(out).all() and out[0].item() == pytest.approx(1e4)


def test_mse_matches_formula():
    x, y = torch.randn(4, 3, 2, dtype=torch.float64), torch.randn(4, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(LF.mse(x, y), torch.stack([((x[i] - y[i]) ** 2).sum() / 6 for i in range(4)]))
    torch.testing.assert_close(ll.build_loss("mse")(pred=x[:, 0, 0], target=y[:, 0, 0]), (x[:, 0, 0] - y[:, 0, 0]) ** 2)


def test_gradcheck_ce_bce_mse():
    logits, target = _rand(n=3, c=3)
    assert torch.autograd.gradcheck(lambda z: LF.cross_entropy(z, target, label_smoothing=0.1), (logits,))
    z = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: LF.bce(a, torch.ones(3, 2, dtype=torch.float64)), (z,))
    assert torch.autograd.gradcheck(lambda a: LF.mse(a, torch.zeros(3, 2, dtype=torch.float64)), (z,))


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("cross_entropy", {"label_smoothing": 1.5}, r"`label_smoothing` must be in \[0.0, 1.0\], got 1.5"),
        ("cross_entropy", {"weight": [1.0, -1.0]}, r"`weight` must be a non-empty 1-D sequence of finite non-negative"),
        ("cross_entropy", {"ignore_index": 1.5}, r"`ignore_index` must be an integer, got 1.5"),
        ("focal", {"gamma": -1}, r"`gamma` must be >= 0.0, got -1.0"),
        ("focal", {"alpha": 0}, r"`alpha` must be > 0.0, got 0"),
        ("focal", {"alpha": "x"}, r"`alpha` must be None, a positive number or per-class weights, got 'x'"),
        ("bce", {"pos_weight": -2.0}, r"`pos_weight` must be >= 0.0, got -2.0"),
    ],
)
def test_constructor_errors(name, kwargs, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.build_loss(name, **kwargs)


@pytest.mark.parametrize(
    ("fn", "args", "exc", "match"),
    [
        (
            LF.cross_entropy,
            (torch.zeros(3), torch.zeros(3, dtype=torch.long)),
            ValueError,
            r"`logits` must be a floating tensor of shape \[N, C\], got torch.float32 \[3\]",
        ),
        (
            LF.cross_entropy,
            (torch.zeros(3, 2), torch.zeros(4, dtype=torch.long)),
            ValueError,
            r"`target` must have shape \[N\] = \[3\] to match `logits` \[3, 2\], got \[4\]",
        ),
        (
            LF.cross_entropy,
            (torch.zeros(2, 2), torch.tensor([0, 5])),
            ValueError,
            r"`target` labels must be in \[0, 1\] \(or `ignore_index`\), got \[5\]",
        ),
        (
            LF.cross_entropy,
            (torch.zeros(2, 2), torch.zeros(2, 3)),
            ValueError,
            r"soft `target` must have the shape of `logits` \[2, 2\], got \[2, 3\]",
        ),
        (LF.cross_entropy, (torch.zeros(2, 2), [0, 1]), TypeError, r"`target` must be a torch.Tensor, got list"),
        (
            LF.cross_entropy,
            (torch.zeros(2, 2), torch.tensor([True, False])),
            ValueError,
            r"`target` must hold integer class labels \(int64\), got torch.bool",
        ),
        (LF.focal, (torch.zeros(2, 2), torch.zeros(2, 2)), ValueError, r"`focal` takes integer labels"),
        (
            lambda z, t: LF.cross_entropy(z, t, weight=torch.ones(2)),
            (torch.zeros(3, 4), torch.tensor([0, 1, 1])),
            ValueError,
            r"`weight` must have shape \[C\] = \[4\], got \[2\]",
        ),
        (  # labels inside the short vector: without the check this silently used the wrong weights
            lambda z, t: LF.focal(z, t, alpha=[0.25, 0.5]),
            (torch.zeros(3, 4), torch.tensor([0, 1, 1])),
            ValueError,
            r"`alpha` must have shape \[C\] = \[4\], got \[2\]",
        ),
        (
            lambda z, t: LF.bce(z, t, pos_weight=torch.ones(3)),
            (torch.zeros(2, 4), torch.ones(2, 4)),
            ValueError,
            r"`pos_weight` must have shape \[K\] = \[4\], got \[3\]",
        ),
        (
            lambda z, t: LF.bce(z, t, pos_weight=torch.ones(2)),
            (torch.zeros(3), torch.ones(3)),
            ValueError,
            r"`pos_weight` must have shape \[K\] = \[1\], got \[2\]",
        ),
        (
            LF.bce,
            (torch.zeros(2, 2), torch.zeros(2)),
            ValueError,
            r"`target` must have the shape of `logits` \[2, 2\], got \[2\]",
        ),
        (LF.bce, (torch.zeros(2), torch.tensor([0.0, 2.0])), ValueError, r"`target` values must be in \[0, 1\]"),
        (LF.mse, (torch.zeros(2, dtype=torch.long), torch.zeros(2)), ValueError, r"`pred` must be a floating tensor"),
        (
            LF.mse,
            (torch.zeros(2), torch.zeros(3)),
            ValueError,
            r"`target` must have the shape of `pred` \[2\], got \[3\]",
        ),
    ],
)
def test_input_errors(fn, args, exc, match):
    with pytest.raises(exc, match=match):
        fn(*args)


def test_validate_args_off_skips_label_range_check():
    # no host sync: out-of-range labels are not inspected (torch itself still fails on gather)
    loss = ll.build_loss("cross_entropy", validate_args=False)
    assert loss.validate_args is False
    out = loss(logits=torch.zeros(2, 3), target=torch.tensor([0, 2]))
    assert out.tolist() == pytest.approx([math.log(3)] * 2)
