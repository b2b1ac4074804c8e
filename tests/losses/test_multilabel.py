"""Sigmoid focal, ASL, Dice, Tversky and AnyLoss against explicit formulas / sklearn; DDP == one process."""

import numpy as np
import pytest
import sklearn.metrics as skm
import torch

import lightning_losses as ll
from lightning_losses import functional as LF
from lightning_losses.errors import ConfigurationError
from lightning_losses.objective import Objective


def _data(n=8, k=3, seed=0, scale=2.0, soft=False):
    g = torch.Generator().manual_seed(seed)
    shape = (n, k) if k else (n,)
    logits = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_(True)
    target = torch.rand(*shape, generator=g, dtype=torch.float64) if soft else (torch.rand(*shape, generator=g) < 0.4)
    return logits, target.to(torch.float64)


def _np(t):
    return t.detach().numpy().astype(np.float64)


# ---------------------------------------------------------------------------------------------- sigmoid focal


def _focal_reference(z, y, gamma, alpha):
    """torchvision.ops.sigmoid_focal_loss (reduction="none"), written out in numpy."""
    p = 1 / (1 + np.exp(-z))
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    p_t = p * y + (1 - p) * (1 - y)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * y + (1 - alpha) * (1 - y)) * loss
    return loss


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.0, None), (0.5, 0.75), (1.5, None)])
@pytest.mark.parametrize("soft", [False, True])
def test_sigmoid_focal_parity(gamma, alpha, soft):
    logits, target = _data(soft=soft)
    module = ll.build_loss("sigmoid_focal", gamma=gamma, alpha=alpha)
    out = module(logits=logits, target=target)
    assert out.shape == (8,)
    ref = _focal_reference(_np(logits), _np(target), gamma, alpha).mean(axis=1)
    np.testing.assert_allclose(_np(out), ref, rtol=1e-10)
    torch.testing.assert_close(LF.sigmoid_focal(logits, target, gamma=gamma, alpha=alpha), out)
    assert torch.autograd.gradcheck(lambda z: module(logits=z, target=target), (logits,))
    assert type(module).family == "binary"


def test_sigmoid_focal_one_dim_and_gamma_zero_is_weighted_bce():
    logits, target = _data(k=0)
    out = LF.sigmoid_focal(logits, target, gamma=0.0, alpha=None)
    torch.testing.assert_close(out, LF.bce(logits, target))


@pytest.mark.parametrize("gamma", [0.25, 0.5, 2.0])
def test_sigmoid_focal_saturated_logits_have_finite_gradients(gamma):
    logits = torch.tensor([[1e4, -1e4, 1e4, -1e4, 10.0, -10.0, 0.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0]])
    out = LF.sigmoid_focal(logits, target, gamma=gamma)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0] == 0 and logits.grad[0, 1] == 0  # saturated and right: no signal
    assert out.item() == pytest.approx(1e4 * (0.25 + 0.75) / 7, rel=1e-3)  # the two wrong ones dominate
    # the common implementation (1 - p_t) ** gamma gives NaN gradients here for gamma < 1
    naive_logits = logits.detach().clone().requires_grad_(True)
    p = torch.sigmoid(naive_logits)
    p_t = p * target + (1 - p) * (1 - target)
    ce = torch.nn.functional.binary_cross_entropy_with_logits(naive_logits, target, reduction="none")
    (ce * (1 - p_t) ** gamma).sum().backward()
    assert torch.isnan(naive_logits.grad).any() == (gamma < 1)


# ---------------------------------------------------------------------------------------------- ASL


def _asl_reference(z, y, gamma_pos, gamma_neg, clip):
    """The ASL repository's formula (probability space), eps -> 0."""
    p = 1 / (1 + np.exp(-z))
    xs_neg = np.minimum(1 - p + clip, 1.0) if clip > 0 else 1 - p
    loss = y * np.log(p) + (1 - y) * np.log(xs_neg)
    pt = p * y + xs_neg * (1 - y)
    w = (1 - pt) ** (gamma_pos * y + gamma_neg * (1 - y))
    return -(loss * w)


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0.0, 4.0, 0.05), (1.0, 4.0, 0.05), (0.5, 2.0, 0.0), (0, 0, 0)])
def test_asymmetric_parity(gamma_pos, gamma_neg, clip):
    logits, target = _data(seed=1)
    module = ll.build_loss("asymmetric", gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip)
    out = module(logits=logits, target=target)
    ref = _asl_reference(_np(logits), _np(target), gamma_pos, gamma_neg, clip).mean(axis=1)
    np.testing.assert_allclose(_np(out), ref, rtol=1e-10)
    torch.testing.assert_close(LF.asymmetric(logits, target, gamma_pos=gamma_pos, gamma_neg=gamma_neg, clip=clip), out)
    assert torch.autograd.gradcheck(lambda z: module(logits=z, target=target), (logits,))
    if gamma_pos == gamma_neg == clip == 0:
        torch.testing.assert_close(out, LF.bce(logits, target))


@pytest.mark.parametrize("clip", [0.0, 0.05])
def test_asymmetric_saturated_logits_finite(clip):
    logits = torch.tensor([[1e4, -1e4, 1e4, -1e4, 0.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0, 1.0]])
    out = LF.asymmetric(logits, target, gamma_pos=0.5, gamma_neg=0.5, clip=clip)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------------------------------------- Dice / Tversky


def _dice_reference(z, y, smooth, alpha, axis):
    p = 1 / (1 + np.exp(-z))
    pt = (1 - p) ** alpha * p
    return 1 - (2 * (pt * y).sum(axis) + smooth) / (pt.sum(axis) + y.sum(axis) + smooth)


def _tversky_reference(z, y, a, b, smooth, axis):
    p = 1 / (1 + np.exp(-z))
    tp, fp, fn = (p * y).sum(axis), (p * (1 - y)).sum(axis), ((1 - p) * y).sum(axis)
    return 1 - (tp + smooth) / (tp + a * fp + b * fn + smooth)


@pytest.mark.parametrize("smooth,alpha", [(1.0, 0.0), (0.0, 0.0), (1.0, 1.0), (0.5, 0.3)])
@pytest.mark.parametrize("k", [3, 0])
def test_dice_parity(smooth, alpha, k):
    logits, target = _data(k=k, seed=2)
    z, y = _np(logits), _np(target)
    if k == 0:
        z, y = z[:, None], y[:, None]
    per_sample = ll.build_loss("dice", smooth=smooth, alpha=alpha, reduction="sample")
    out = per_sample(logits=logits, target=target)
    assert out.shape == (8,) and not per_sample.batch_level
    np.testing.assert_allclose(_np(out), _dice_reference(z, y, smooth, alpha, 1), rtol=1e-10)
    global_ = ll.build_loss("dice", smooth=smooth, alpha=alpha)
    g = global_(logits=logits, target=target)
    assert g.ndim == 0 and global_.batch_level
    assert g.item() == pytest.approx(_dice_reference(z, y, smooth, alpha, 0).mean(), rel=1e-10)
    torch.testing.assert_close(LF.dice(logits, target, smooth=smooth, alpha=alpha), g)
    assert torch.autograd.gradcheck(lambda t: per_sample(logits=t, target=target), (logits,))
    assert torch.autograd.gradcheck(lambda t: global_(logits=t, target=target), (logits,))


@pytest.mark.parametrize("a,b,smooth", [(0.3, 0.7, 1.0), (0.5, 0.5, 0.0), (1.0, 0.0, 0.1)])
def test_tversky_parity(a, b, smooth):
    logits, target = _data(seed=3)
    z, y = _np(logits), _np(target)
    per_sample = ll.build_loss("tversky", alpha=a, beta=b, smooth=smooth, reduction="sample")
    np.testing.assert_allclose(
        _np(per_sample(logits=logits, target=target)), _tversky_reference(z, y, a, b, smooth, 1), rtol=1e-10
    )
    global_ = ll.build_loss("tversky", alpha=a, beta=b, smooth=smooth)
    g = global_(logits=logits, target=target)
    assert g.item() == pytest.approx(_tversky_reference(z, y, a, b, smooth, 0).mean(), rel=1e-10)
    assert torch.autograd.gradcheck(lambda t: global_(logits=t, target=target), (logits,))
    if a == b == 0.5 and smooth == 0:  # Tversky(0.5, 0.5) is Dice
        torch.testing.assert_close(g, LF.dice(logits, target, smooth=0.0))


def test_self_adjusting_dice_saturated_and_half_precision_finite():
    logits = torch.tensor([[1e4, -1e4, 30.0, -30.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    out = LF.dice(logits, target, alpha=0.5, reduction="sample") + LF.dice(logits, target, alpha=0.5)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()


# ---------------------------------------------------------------------------------------------- AnyLoss


def _hard_metric(metric, y, yhat, beta=1.0):
    if metric == "accuracy":
        return skm.accuracy_score(y, yhat)
    if metric == "f1":
        return skm.f1_score(y, yhat)
    if metric == "fbeta":
        return skm.fbeta_score(y, yhat, beta=beta)
    if metric == "balanced_accuracy":
        return skm.balanced_accuracy_score(y, yhat)
    tn, fp, fn, tp = skm.confusion_matrix(y, yhat, labels=[0, 1]).ravel()
    return np.sqrt(tp / (tp + fn) * tn / (tn + fp))


METRICS = [("f1", 1.0), ("fbeta", 2.0), ("fbeta", 0.5), ("balanced_accuracy", 1.0), ("gmean", 1.0), ("accuracy", 1.0)]


@pytest.mark.parametrize("metric,beta", METRICS)
def test_anyloss_saturated_equals_one_minus_sklearn_metric(metric, beta):
    g = torch.Generator().manual_seed(4)
    y = (torch.rand(40, 2, generator=g) < 0.3).double()
    y[0] = torch.tensor([1.0, 0.0])  # every label has both classes
    y[1] = torch.tensor([0.0, 1.0])
    yhat = torch.where(torch.rand(40, 2, generator=g) < 0.8, y, 1 - y)
    logits = (yhat * 2 - 1) * 30.0  # sigmoid at +-30 then A(p) at L=73: counts are hard to 1e-13
    out = ll.build_loss("anyloss", metric=metric, beta=beta)(logits=logits, target=y)
    ref = np.mean([1 - _hard_metric(metric, y[:, k].int().numpy(), yhat[:, k].int().numpy(), beta) for k in range(2)])
    assert out.item() == pytest.approx(ref, rel=1e-9, abs=1e-12)


def _anyloss_reference(z, y, metric, amplifier, beta, axis):
    a = 1 / (1 + np.exp(-amplifier * (1 / (1 + np.exp(-z)) - 0.5)))
    tp, fn, fp, tn = (y * a).sum(axis), (y * (1 - a)).sum(axis), ((1 - y) * a).sum(axis), ((1 - y) * (1 - a)).sum(axis)

    def div(a, b):  # the documented convention: a rate with a zero denominator counts as 0
        return np.where(b > 0, a / np.where(b > 0, b, 1.0), 0.0)

    if metric == "accuracy":
        score = (tp + tn) / (tp + tn + fp + fn)
    elif metric in ("f1", "fbeta"):
        b2 = 1.0 if metric == "f1" else beta**2
        score = (1 + b2) * tp / ((1 + b2) * tp + b2 * fn + fp)
    elif metric == "balanced_accuracy":
        score = 0.5 * (div(tp, tp + fn) + div(tn, tn + fp))
    else:
        score = np.sqrt(div(tp, tp + fn) * div(tn, tn + fp))
    return 1 - score


@pytest.mark.parametrize("metric,beta", METRICS)
def test_anyloss_soft_parity_and_gradcheck(metric, beta):
    logits, target = _data(n=10, k=3, seed=5, scale=0.3)  # near p = 0.5 where A(p) is soft
    target[:2] = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    z, y = _np(logits), _np(target)
    global_ = ll.build_loss("anyloss", metric=metric, beta=beta, amplifier=5.0)
    g = global_(logits=logits, target=target)
    assert g.ndim == 0 and global_.batch_level
    assert g.item() == pytest.approx(_anyloss_reference(z, y, metric, 5.0, beta, 0).mean(), rel=1e-10)
    assert torch.autograd.gradcheck(lambda t: global_(logits=t, target=target), (logits,))
    per_sample = ll.build_loss("anyloss", metric=metric, beta=beta, amplifier=5.0, reduction="sample")
    np.testing.assert_allclose(
        _np(per_sample(logits=logits, target=target)), _anyloss_reference(z, y, metric, 5.0, beta, 1), rtol=1e-10
    )


@pytest.mark.parametrize("metric", ["balanced_accuracy", "gmean"])
def test_anyloss_absent_class_is_finite(metric):
    logits = torch.tensor([3.0, -1.0, 20.0, -1e4], requires_grad=True)
    out = LF.anyloss(logits, torch.ones(4), metric=metric)  # no negatives: TN / (TN + FP) counts as 0
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("bce", {"pos_weight": 2.0}),
        ("sigmoid_focal", {"gamma": 0.5}),
        ("asymmetric", {"gamma_pos": 0.5}),
        ("dice", {"alpha": 0.5}),
        ("tversky", {}),
        ("anyloss", {"metric": "gmean"}),
    ],
)
def test_half_precision_extreme_logits_finite(name, kwargs, dtype):
    big = 6e4 if dtype == torch.float16 else 1e30
    logits = torch.tensor([[big, -big, big], [-big, 10.0, 0.0]], dtype=dtype, requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]], dtype=dtype)
    out = ll.build_loss(name, **kwargs)(logits=logits, target=target)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_autocast_bf16_model():
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    x = torch.randn(6, 4) * 1e3
    target = (torch.rand(6, 3) < 0.5).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = layer(x)
        assert logits.dtype == torch.bfloat16
        total = sum(
            ll.build_loss(name)(logits=logits, target=target).sum()
            for name in ("bce", "sigmoid_focal", "asymmetric", "dice", "tversky", "anyloss")
        )
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(p.grad).all() for p in layer.parameters())


# ---------------------------------------------------------------------------------------------- objective + validation


def test_objective_adds_batch_level_terms():
    logits, target = _data(seed=6)
    out = Objective({"bce": {}, "dice": {"coefficient": 0.5}})({"logits": logits, "target": target})
    expected = LF.bce(logits, target).mean() + 0.5 * LF.dice(logits, target)
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.value, expected.detach())
    assert out.terms["dice"].ndim == 0


@pytest.mark.parametrize(
    "name,kwargs,message",
    [
        ("sigmoid_focal", {"gamma": -1.0}, r"`gamma` must be >= 0.0, got -1.0"),
        ("sigmoid_focal", {"alpha": 1.5}, r"`alpha` must be in \[0.0, 1.0\], got 1.5"),
        ("sigmoid_focal", {"alpha": -1}, r"`alpha` must be in \[0.0, 1.0\], got -1.0"),
        ("asymmetric", {"gamma_neg": -4}, r"`gamma_neg` must be >= 0.0, got -4.0"),
        ("asymmetric", {"gamma_pos": None}, r"`gamma_pos` must be a finite number >= 0.0, got None"),
        ("asymmetric", {"clip": 1.0}, r"`clip` must be in \[0.0, 1.0\), got 1.0"),
        ("dice", {"smooth": -1.0}, r"`smooth` must be >= 0.0, got -1.0"),
        ("dice", {"alpha": -0.1}, r"`alpha` must be >= 0.0, got -0.1"),
        ("dice", {"reduction": "mean"}, r"`reduction` must be one of `global`, `sample`, got 'mean'"),
        ("tversky", {"beta": -1}, r"`beta` must be >= 0.0, got -1.0"),
        ("tversky", {"alpha": 0, "beta": 0, "smooth": 0}, r"`alpha`, `beta` and `smooth` cannot all be 0"),
        ("anyloss", {"metric": "fbata"}, r"`metric` must be one of .*got 'fbata'; did you mean `fbeta`\?"),
        ("anyloss", {"amplifier": 0.0}, r"`amplifier` must be > 0.0, got 0.0"),
        ("anyloss", {"beta": 2.0}, r"`beta` only applies to metric 'fbeta', got beta=2.0 with 'f1'"),
        ("anyloss", {"metric": "fbeta", "beta": 0}, r"`beta` must be > 0.0, got 0.0"),
        ("anyloss", {"reduction": "none"}, r"`reduction` must be one of `global`, `sample`, got 'none'"),
        ("dice", {"gamma": 1.0}, r"unexpected argument `gamma`"),
    ],
)
def test_constructor_validation(name, kwargs, message):
    with pytest.raises(ConfigurationError, match=message):
        ll.build_loss(name, **kwargs)


@pytest.mark.parametrize("fn", [LF.sigmoid_focal, LF.asymmetric, LF.dice, LF.tversky, LF.anyloss])
def test_input_validation(fn):
    with pytest.raises(ValueError, match=r"`target` must have the shape of `logits` \[4, 2\], got \[4\]"):
        fn(torch.zeros(4, 2), torch.zeros(4))
    with pytest.raises(ValueError, match=r"`target` values must be in \[0, 1\]"):
        fn(torch.zeros(4), torch.tensor([0.0, 1.0, 2.0, 1.0]))
    with pytest.raises(ValueError, match=r"`logits` must be a floating tensor of shape \[N\] or \[N, K\]"):
        fn(torch.zeros(4, 2, 2), torch.zeros(4, 2, 2))
    fn(torch.zeros(4), torch.tensor([0.0, 1.0, 2.0, 1.0]), validate_args=False)  # the value check is optional


def test_functional_reduction_and_metric_errors():
    with pytest.raises(ValueError, match=r"`reduction` must be one of \('global', 'sample'\), got 'mean'"):
        LF.dice(torch.zeros(3), torch.zeros(3), reduction="mean")
    with pytest.raises(ValueError, match=r"`metric` must be one of .* got 'auc'"):
        LF.anyloss(torch.zeros(3), torch.zeros(3), metric="auc")


# ---------------------------------------------------------------------------------------------- DDP

SET_LEVEL_SPECS = [
    {"anyloss": {}},
    {"anyloss": {"metric": "gmean", "amplifier": 7.0}},
    {"anyloss": {"metric": "balanced_accuracy"}, "bce": {"coefficient": 0.3}},
    {"dice": {"alpha": 0.5}, "bce": {}},
    {"tversky": {}},
    {"dice": {"reduction": "sample"}},
]


def _objective_grads(spec, x, y, weight):
    w = weight.clone().requires_grad_(True)
    out = Objective(spec)({"logits": x @ w, "target": y})
    out.loss.backward()
    return out.value.detach(), w.grad


def _ddp_set_level(specs, xs, ys, weight):
    from lightning_losses.distributed import rank

    r = rank()
    return [_objective_grads(spec, xs[r], ys[r], weight) for spec in specs]


def test_set_level_losses_ddp_equal_one_process_on_concatenated_batch(ddp):
    g = torch.Generator().manual_seed(7)
    xs = [torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(9, 4, generator=g, dtype=torch.float64)]
    ys = [(torch.rand(n, 3, generator=g) < 0.4).double() for n in (5, 9)]
    weight = torch.randn(4, 3, generator=g, dtype=torch.float64)
    results = ddp.run(_ddp_set_level, SET_LEVEL_SPECS, xs, ys, weight)
    for i, spec in enumerate(SET_LEVEL_SPECS):
        value, grad = _objective_grads(spec, torch.cat(xs), torch.cat(ys), weight)
        (v0, g0), (v1, g1) = results[0][i], results[1][i]
        torch.testing.assert_close(v0, value)
        torch.testing.assert_close(v1, value)
        torch.testing.assert_close((g0 + g1) / 2, grad)  # DDP averages the ranks' gradients
        assert not torch.allclose(g0, g1)  # each rank really saw only its shard


def _local_only(xs, ys, weight):
    from lightning_losses.distributed import rank

    r = rank()
    w = weight.clone().requires_grad_(True)
    LF.anyloss(xs[r] @ w, ys[r], sync=False).backward()
    return w.grad


def test_unsynced_counts_differ_from_global(ddp):
    g = torch.Generator().manual_seed(8)
    xs = [torch.randn(6, 4, generator=g, dtype=torch.float64) for _ in range(2)]
    ys = [(torch.rand(6, 3, generator=g) < 0.4).double() for _ in range(2)]
    weight = torch.randn(4, 3, generator=g, dtype=torch.float64)
    g0, g1 = ddp.run(_local_only, xs, ys, weight)
    _, grad = _objective_grads({"anyloss": {}}, torch.cat(xs), torch.cat(ys), weight)
    assert not torch.allclose((g0 + g1) / 2, grad)  # per-rank metrics are not the global metric
