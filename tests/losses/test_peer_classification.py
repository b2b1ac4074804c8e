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


# ---------------------------------------------------------------- multi-class (softmax) Dice, soft F1


def _seg(n=3, c=4, h=3, w=5, seed=0, ignore=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, h, w, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, c - 1, (n, h, w), generator=g)  # class c - 1 absent
    if ignore:
        target[0, 0, :2] = -100
    return logits, target


def _smp_dice_loop(logits, target, smooth, ignore_index=-100, eps=1e-7):
    """segmentation-models-pytorch 0.3's ``DiceLoss(mode="multiclass", from_logits=True)``, written out per class."""
    n, c = logits.shape[:2]
    probs = torch.softmax(logits, dim=1).reshape(n, c, -1)
    labels = target.reshape(n, -1)
    losses = []
    for k in range(c):
        inter = card = true = 0.0
        for i in range(n):
            for j in range(labels.shape[1]):
                if int(labels[i, j]) == ignore_index:
                    continue
                p, y = probs[i, k, j], float(int(labels[i, j]) == k)
                inter, card, true = inter + p * y, card + p + y, true + y
        score = max((2 * inter + smooth) / (card + smooth), eps)
        losses.append((1.0 - score) * (true > 0))
    return sum(losses) / c


def _dice_sample_loop(logits, target, smooth, ignore_index=-100):
    n, c = logits.shape[:2]
    probs, labels = torch.softmax(logits, dim=1).reshape(n, c, -1), target.reshape(n, -1)
    out = []
    for i in range(n):
        keep = labels[i] != ignore_index
        per_class = []
        for k in range(c):
            p, y = probs[i, k][keep], (labels[i][keep] == k).double()
            per_class.append(1 - (2 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth))
        out.append(sum(per_class) / c)
    return torch.stack(out)


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_softmax_dice_matches_segmentation_models_pytorch(smooth):
    logits, target = _seg()
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = ll.build_loss("dice", smooth=smooth)
    ours, ref = loss(logits=a, target=target), _smp_dice_loop(b, target, smooth)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    # one pixel per sample: logits [N, C], target [N]
    flat_logits, flat_target = _multiclass(n=9, c=3, seed=2)
    torch.testing.assert_close(
        LF.dice(flat_logits, flat_target, smooth=smooth),
        _smp_dice_loop(flat_logits[:, :, None], flat_target[:, None], smooth),
    )


def test_softmax_dice_per_sample():
    logits, target = _seg(seed=1)
    out = ll.build_loss("dice", reduction="sample", smooth=1.0)(logits=logits, target=target)
    torch.testing.assert_close(out, _dice_sample_loop(logits, target, 1.0), rtol=1e-12, atol=1e-12)


def test_softmax_dice_rejects_self_adjusting_alpha():
    logits, target = _seg()
    with pytest.raises(
        ValueError, match=r"`alpha` \(self-adjusting Dice\) must be 0 with integer class labels, got 0.5"
    ):
        LF.dice(logits, target, alpha=0.5)


def _soft_f1_loop(p, y, eps, double):
    """Macro (double) soft-F1 over columns of ``p`` / ``y`` [M, K]."""
    out = []
    for k in range(p.shape[1]):
        tp = fp = fn = tn = 0.0
        for i in range(p.shape[0]):
            tp, fp = tp + p[i, k] * y[i, k], fp + p[i, k] * (1 - y[i, k])
            fn, tn = fn + (1 - p[i, k]) * y[i, k], tn + (1 - p[i, k]) * (1 - y[i, k])
        cost = 1 - 2 * tp / (2 * tp + fn + fp + eps)
        if double:
            cost = 0.5 * (cost + 1 - 2 * tn / (2 * tn + fn + fp + eps))
        out.append(cost)
    return sum(out) / p.shape[1]


@pytest.mark.parametrize("double", [False, True])
def test_soft_f1_matches_the_formula(double):
    logits, target = _binary(n=8, k=3)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours = ll.build_loss("soft_f1", double=double)(logits=a, target=target)
    ref = _soft_f1_loop(torch.sigmoid(b), target, 1e-16, double)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)
    # per sample: the sample's labels are its elements
    per_sample = ll.build_loss("soft_f1", double=double, reduction="sample")(logits=logits, target=target)
    rows = [_soft_f1_loop(torch.sigmoid(logits[i])[:, None], target[i][:, None], 1e-16, double) for i in range(8)]
    torch.testing.assert_close(per_sample, torch.stack(rows), rtol=1e-12, atol=1e-12)
    # softmax mode: one-hot classes, pixels with ignore_index left out
    seg_logits, seg_target = _seg(seed=3)
    keep = (seg_target != -100).reshape(-1)
    p = torch.softmax(seg_logits, 1).permute(0, 2, 3, 1).reshape(-1, 4)[keep]
    y = torch.nn.functional.one_hot(seg_target.reshape(-1)[keep], 4).double()
    torch.testing.assert_close(
        LF.soft_f1(seg_logits, seg_target, double=double), _soft_f1_loop(p, y, 1e-16, double), rtol=1e-12, atol=1e-12
    )


def test_soft_f1_without_double_is_dice_without_smoothing():
    logits, target = _binary(n=8, k=3, seed=4)
    torch.testing.assert_close(LF.soft_f1(logits, target, eps=0.0), LF.dice(logits, target, smooth=0.0))


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("soft_f1", {"eps": 0.0}, r"`eps` must be > 0.0, got 0.0"),
        ("soft_f1", {"double": 1}, r"`double` must be a bool \(True or False\), got 1"),
        ("soft_f1", {"reduction": "mean"}, r"`reduction` must be one of `global`, `sample`, got 'mean'"),
        ("dice", {"ignore_index": 1.5}, r"`ignore_index` must be an integer, got 1.5"),
    ],
)
def test_overlap_argument_validation(name, kwargs, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.build_loss(name, **kwargs)


def _ddp_overlap(name, kwargs, logits, targets):
    from lightning_losses.distributed import rank

    z = logits[rank()].clone().requires_grad_()
    out = ll.build_loss(name, **kwargs)(logits=z, target=targets[rank()])
    out.backward()
    return out.detach(), z.grad


@pytest.mark.parametrize(("name", "kwargs"), [("dice", {"smooth": 0.5}), ("soft_f1", {"double": True})])
def test_softmax_overlap_ddp_equals_one_process(ddp, name, kwargs):
    logits, target = _seg(n=4, seed=5)
    parts, targets = [logits[:1], logits[1:]], [target[:1], target[1:]]
    results = ddp.run(_ddp_overlap, name, kwargs, parts, targets)
    z = logits.clone().requires_grad_()
    expected = ll.build_loss(name, **kwargs)(logits=z, target=target)
    expected.backward()
    for r, (value, grad) in enumerate(results):
        torch.testing.assert_close(value, expected.detach())
        rows = slice(0, 1) if r == 0 else slice(1, 4)
        torch.testing.assert_close(grad / 2, z.grad[rows])  # all-reduce backward: k x; DDP averages over k = 2


# ---------------------------------------------------------------- single-label ASL, BCE label smoothing


def _asl_single_label_reference(logits, target, gamma_pos, gamma_neg, eps):
    """The authors' ``ASLSingleLabel.forward`` (reduction none), step by step."""
    num_classes = logits.shape[-1]
    log_preds = torch.log_softmax(logits, dim=-1)
    targets = torch.zeros_like(logits).scatter_(1, target.long().unsqueeze(1), 1)
    anti_targets = 1 - targets
    xs_pos = torch.exp(log_preds)
    xs_neg = 1 - xs_pos
    xs_pos, xs_neg = xs_pos * targets, xs_neg * anti_targets
    asymmetric_w = torch.pow(1 - xs_pos - xs_neg, gamma_pos * targets + gamma_neg * anti_targets)
    log_preds = log_preds * asymmetric_w
    targets_classes = targets.mul(1 - eps).add(eps / num_classes)
    return -targets_classes.mul(log_preds).sum(-1)


@pytest.mark.parametrize(("gamma_pos", "gamma_neg", "eps"), [(0.0, 4.0, 0.1), (1.0, 2.0, 0.0), (0.5, 0.0, 0.2)])
def test_asymmetric_single_label_matches_the_authors(gamma_pos, gamma_neg, eps):
    logits, target = _multiclass(n=9, c=5, seed=6)
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    loss = ll.build_loss("asymmetric_single_label", gamma_pos=gamma_pos, gamma_neg=gamma_neg, label_smoothing=eps)
    ours, ref = loss(logits=a, target=target), _asl_single_label_reference(b, target, gamma_pos, gamma_neg, eps)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


def test_asymmetric_single_label_edges():
    logits, target = _multiclass(n=4, c=3, seed=7)
    plain = LF.asymmetric_single_label(logits, target, gamma_pos=0.0, gamma_neg=0.0, label_smoothing=0.1)
    torch.testing.assert_close(plain, LF.cross_entropy(logits, target, label_smoothing=0.1))
    saturated = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)  # p_y = 1 exactly
    out = LF.asymmetric_single_label(saturated, torch.tensor([0]), gamma_pos=0.5)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(saturated.grad).all()
    target[2] = -100
    loss = ll.build_loss("asymmetric_single_label")
    assert loss(logits=logits, target=target)[2] == 0 and not loss.sample_mask(target=target)[2]
    with pytest.raises(ll.ConfigurationError, match=r"`gamma_neg` must be >= 0.0, got -1.0"):
        ll.build_loss("asymmetric_single_label", gamma_neg=-1.0)
    with pytest.raises(ll.ConfigurationError, match=r"`label_smoothing` must be in \[0.0, 1.0\], got 1.5"):
        ll.build_loss("asymmetric_single_label", label_smoothing=1.5)


def _timm_bce_targets(target, num_classes, smoothing):
    """timm's ``BinaryCrossEntropy``: dense targets ``off = s / C``, ``on = 1 - s + off``, element by element."""
    off, on = smoothing / num_classes, 1.0 - smoothing + smoothing / num_classes
    return torch.tensor(
        [[on if j == int(target[i]) else off for j in range(num_classes)] for i in range(target.shape[0])],
        dtype=torch.float64,
    )


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_bce_label_smoothing_of_integer_labels_matches_timm(smoothing):
    logits, target = _multiclass(n=6, c=5, seed=8)
    dense = _timm_bce_targets(target, 5, smoothing)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, dense, reduction="none").mean(-1)
    out = ll.build_loss("bce", label_smoothing=smoothing)(logits=logits, target=target)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_bce_label_smoothing_of_binary_targets_goes_to_one_half(smoothing):
    logits, target = _binary(seed=9)
    smoothed = target * (1 - smoothing) + smoothing / 2  # Keras' BinaryCrossentropy(label_smoothing)
    pos_weight = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, smoothed, pos_weight=pos_weight, reduction="none"
    ).mean(-1)
    out = ll.build_loss("bce", label_smoothing=smoothing, pos_weight=[0.5, 2.0, 1.0])(logits=logits, target=target)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_bce_label_validation():
    with pytest.raises(ll.ConfigurationError, match=r"`label_smoothing` must be in \[0.0, 1.0\], got -0.1"):
        ll.build_loss("bce", label_smoothing=-0.1)
    with pytest.raises(ValueError, match=r"`target` labels must be in \[0, 2\] \(or `ignore_index`\), got \[3\]"):
        LF.bce(torch.zeros(2, 3), torch.tensor([0, 3]))
