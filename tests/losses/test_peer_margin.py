"""Issue 18 peer losses: ``poisson_nll`` and ``multi_margin`` against ``torch.nn.functional`` (``reduction="none"``),
``sigmoid_poly1`` and ``bi_tempered`` against explicit float64 loops of the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import lightning_losses as ll
from lightning_losses import functional as LF
from lightning_losses.functional.tempered import tempered_softmax


def _data(n=7, c=5, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64) * scale, torch.randint(0, c, (n,), generator=g)


# --- torch parity -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("margin", [1.0, 0.3])
@pytest.mark.parametrize("weighted", [False, True])
def test_multi_margin_matches_torch(p, margin, weighted):
    logits, target = _data()
    weight = torch.rand(5, dtype=torch.float64) + 0.5 if weighted else None
    expected = F.multi_margin_loss(logits, target, p=p, margin=margin, weight=weight, reduction="none")
    loss = ll.build_loss("multi_margin", p=p, margin=margin, weight=None if weight is None else weight.tolist())
    torch.testing.assert_close(loss(logits=logits, target=target), expected, rtol=1e-6, atol=1e-12)
    torch.testing.assert_close(LF.multi_margin(logits, target, p=p, margin=margin, weight=weight), expected)


def test_multi_margin_gradient_matches_torch_and_ignores():
    logits, target = _data()
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    LF.multi_margin(a, target).sum().backward()
    F.multi_margin_loss(b, target, reduction="sum").backward()
    torch.testing.assert_close(a.grad, b.grad)
    target[2] = -100
    out = ll.build_loss("multi_margin")(logits=logits, target=target)
    assert out[2] == 0 and out.shape == (7,)


@pytest.mark.parametrize("log_input", [True, False])
@pytest.mark.parametrize("full", [False, True])
def test_poisson_nll_matches_torch(log_input, full):
    g = torch.Generator().manual_seed(1)
    pred = torch.randn(6, 4, generator=g, dtype=torch.float64)
    pred = pred if log_input else pred.exp()
    target = torch.randint(0, 6, (6, 4), generator=g).to(torch.float64)
    expected = F.poisson_nll_loss(pred, target, log_input=log_input, full=full, reduction="none").mean(dim=1)
    loss = ll.build_loss("poisson_nll", log_input=log_input, full=full)
    torch.testing.assert_close(loss(pred=pred, target=target), expected, rtol=1e-10, atol=1e-12)
    flat = loss(pred=pred[:, 0], target=target[:, 0])  # [N] in, [N] out
    torch.testing.assert_close(
        flat, F.poisson_nll_loss(pred[:, 0], target[:, 0], log_input=log_input, full=full, reduction="none")
    )


def test_poisson_nll_rejects_negative_counts():
    with pytest.raises(ValueError, match=r"`target` of `poisson_nll` must hold non-negative counts"):
        LF.poisson_nll(torch.zeros(2), torch.tensor([1.0, -1.0]))


# --- sigmoid Poly-1: float64 loop ---------------------------------------------------------------------------------


def _ref_sigmoid_poly1(z, y, epsilon):
    p = 1.0 / (1.0 + math.exp(-z))
    bce = -(y * math.log(p) + (1 - y) * math.log(1 - p))
    pt = y * p + (1 - y) * (1 - p)
    return bce + epsilon * (1 - pt)


@pytest.mark.parametrize("epsilon", [1.0, -1.0, 2.5])
def test_sigmoid_poly1_matches_float64_loop(epsilon):
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 3, generator=g, dtype=torch.float64) * 3
    target = (torch.rand(5, 3, generator=g) > 0.5).to(torch.float64)
    expected = torch.tensor(
        [
            sum(_ref_sigmoid_poly1(logits[i, k].item(), target[i, k].item(), epsilon) for k in range(3)) / 3
            for i in range(5)
        ],
        dtype=torch.float64,
    )
    out = ll.build_loss("sigmoid_poly1", epsilon=epsilon)(logits=logits, target=target)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    eps0 = LF.sigmoid_poly1(logits, target, epsilon=0.0)  # epsilon = 0 is BCE
    torch.testing.assert_close(eps0, F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(1))


def test_sigmoid_poly1_is_finite_at_saturated_logits():
    logits = torch.tensor([[100.0, -100.0]], requires_grad=True)
    out = LF.sigmoid_poly1(logits, torch.tensor([[0.0, 1.0]]))
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
    torch.testing.assert_close(out, torch.tensor([(100.0 + 1.0 + 100.0 + 1.0) / 2]))


# --- bi-tempered: float64 loop with a bisection normaliser --------------------------------------------------------


def _log_t(x, t):
    return math.log(x) if t == 1 else (x ** (1 - t) - 1) / (1 - t)


def _exp_t(x, t):
    return math.exp(x) if t == 1 else max(1 + (1 - t) * x, 0.0) ** (1 / (1 - t))


def _ref_tempered_softmax(row, t):
    # Σ exp_t(a - λ) decreases in λ: >= 1 at λ = max(a) (its top term is 1), <= 1 once every term is <= 1/C
    lo, hi = max(row), max(row) - _log_t(1.0 / len(row), t) + 1.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sum(_exp_t(a - mid, t) for a in row) > 1 else (lo, mid)
    return [_exp_t(a - (lo + hi) / 2, t) for a in row]


def _ref_bi_tempered(row, y, t1, t2, smoothing=0.0):
    c = len(row)
    q = [(1 - smoothing) * (k == y) + smoothing / c for k in range(c)] if isinstance(y, int) else y
    p = _ref_tempered_softmax(row, t2)
    return sum(
        (qk * _log_t(qk, t1) if qk > 0 else 0.0) - qk * _log_t(pk, t1) - (qk ** (2 - t1) - pk ** (2 - t1)) / (2 - t1)
        for qk, pk in zip(q, p)
    )


@pytest.mark.parametrize("t1,t2", [(0.8, 1.2), (0.5, 2.0), (0.2, 4.0), (1.0, 1.5), (0.7, 1.0)])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_bi_tempered_matches_float64_loop(t1, t2, smoothing):
    logits, target = _data(scale=3.0)
    expected = torch.tensor(
        [_ref_bi_tempered(logits[i].tolist(), int(target[i]), t1, t2, smoothing) for i in range(7)],
        dtype=torch.float64,
    )
    loss = ll.build_loss("bi_tempered", t1=t1, t2=t2, label_smoothing=smoothing, num_iters=60)
    torch.testing.assert_close(loss(logits=logits, target=target), expected, rtol=1e-9, atol=1e-10)
    default = ll.build_loss("bi_tempered", t1=t1, t2=t2, label_smoothing=smoothing)  # 10 fixed-point steps
    torch.testing.assert_close(default(logits=logits, target=target), expected, rtol=2e-3, atol=2e-3)


def test_bi_tempered_soft_targets_match_float64_loop():
    logits, _ = _data(scale=3.0)
    soft = torch.softmax(torch.randn(7, 5, dtype=torch.float64), dim=1)
    expected = [_ref_bi_tempered(logits[i].tolist(), soft[i].tolist(), 0.6, 1.7) for i in range(7)]
    out = LF.bi_tempered(logits, soft, t1=0.6, t2=1.7, num_iters=60)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-9, atol=1e-10)


def test_bi_tempered_at_t1_t2_one_is_cross_entropy():
    logits, target = _data()
    out = ll.build_loss("bi_tempered", t1=1.0, t2=1.0)(logits=logits, target=target)
    torch.testing.assert_close(out, F.cross_entropy(logits, target, reduction="none"))


@pytest.mark.parametrize("t1,t2", [(0.8, 1.0), (0.8, 1.01), (1.0, 1.0), (0.5, 2.0), (1.0, 1.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bi_tempered_is_finite_at_extreme_logits(t1, t2, dtype):
    logits = torch.tensor([[1e4, -1e4, 0.0, 3e3], [-1e4, 1e4, 5.0, -3e3]], dtype=dtype, requires_grad=True)
    out = LF.bi_tempered(logits, torch.tensor([0, 2]), t1=t1, t2=t2)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
    if t1 == t2 == 1.0:  # cross entropy, exactly, also at a logit gap of 1e4
        torch.testing.assert_close(out, F.cross_entropy(logits.float(), torch.tensor([0, 2]), reduction="none"))


def test_tempered_softmax_normalises_and_has_the_implicit_gradient():
    logits, target = _data(n=4, c=4)
    for t in (1.3, 2.5):
        torch.testing.assert_close(tempered_softmax(logits, t, 60).sum(-1), torch.ones(4, dtype=torch.float64))
    x = logits.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda z: LF.bi_tempered(z, target, t1=0.5, t2=2.0, num_iters=80), (x,))


def test_bi_tempered_ignores_samples():
    logits, target = _data()
    target[0] = -100
    loss = ll.build_loss("bi_tempered")
    out, mask = loss(logits=logits, target=target), loss.sample_mask(logits=logits, target=target)
    assert out[0] == 0 and mask.tolist() == [False] + [True] * 6


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("multi_margin", {"p": 3}, r"`p` must be an integer in \[1, 2\], got 3"),
        ("multi_margin", {"margin": -1.0}, r"`margin` must be >= 0.0, got -1.0"),
        ("multi_margin", {"weight": [1.0, -1.0]}, r"`weight` must be a non-empty 1-D sequence of finite non-negative"),
        ("poisson_nll", {"eps": 0.0}, r"`eps` must be > 0.0, got 0.0"),
        ("poisson_nll", {"log_input": 1}, r"`log_input` must be a bool \(True or False\), got 1"),
        ("poisson_nll", {"full": "yes"}, r"`full` must be a bool \(True or False\), got 'yes'"),
        ("sigmoid_poly1", {"epsilon": -2.0}, r"`epsilon` must be >= -1.0, got -2.0"),
        ("sigmoid_poly1", {"pos_weight": [-1.0]}, r"`pos_weight` must be a non-empty 1-D sequence"),
        ("bi_tempered", {"t1": 1.5}, r"`t1` must be in \[0.0, 1.0\], got 1.5"),
        ("bi_tempered", {"t2": 0.5}, r"`t2` must be in \[1.0, 10.0\], got 0.5"),
        ("bi_tempered", {"label_smoothing": 2.0}, r"`label_smoothing` must be in \[0.0, 1.0\], got 2.0"),
        ("bi_tempered", {"num_iters": 0}, r"`num_iters` must be an integer >= 1, got 0"),
    ],
)
def test_constructor_validation(name, kwargs, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.build_loss(name, **kwargs)


def test_functional_bi_tempered_checks_its_temperatures():
    logits, target = _data()
    with pytest.raises(ll.ConfigurationError, match=r"`t2` must be >= 1.0, got 0.5"):
        LF.bi_tempered(logits, target, t2=0.5)
    with pytest.raises(ll.ConfigurationError, match=r"`t1` must be in \[0.0, 1.0\], got -0.1"):
        LF.bi_tempered(logits, target, t1=-0.1)


def test_modules_store_their_hyperparameters_and_aliases_resolve():
    loss = ll.build_loss("multiclass_hinge", p=2, margin=0.5)
    assert isinstance(loss, ll.losses.MultiMargin) and (loss.p, loss.margin) == (2, 0.5)
    loss = ll.build_loss("bitempered", t1=0.5, t2=2.0)
    assert (loss.t1, loss.t2, loss.num_iters) == (0.5, 2.0, 10)
    assert ll.build_loss("poisson", full=True).full is True
    assert ll.build_loss("binary_poly1", epsilon=2.0).epsilon == 2.0
    assert {"multi_margin", "poisson_nll", "sigmoid_poly1", "bi_tempered"} <= set(ll.list_losses())
