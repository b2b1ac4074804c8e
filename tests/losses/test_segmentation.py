"""Issue 18 segmentation losses against explicit float64 loops of the papers' formulas: soft Jaccard, focal Tversky
(sigmoid and softmax modes), and the Lovász hinge / Lovász-Softmax from the set definition of the Jaccard loss
(Berman et al., CVPR 2018), not from the cumulative-sum form the implementation uses."""

from __future__ import annotations

import math

import pytest
import torch

import lightning_losses as ll
from lightning_losses import functional as LF


def _sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _binary(seed=0, shape=(3, 4, 5)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(*shape, generator=g, dtype=torch.float64) * 2
    return logits, (torch.rand(*shape, generator=g) > 0.6).to(torch.float64)


def _multiclass(seed=0, n=3, c=4, hw=(3, 5), ignore=True):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, *hw, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, c, (n, *hw), generator=g)
    if ignore:
        target[0, 0, :2] = -100
        target[1, 1, 3] = -100
    return logits, target


def _pixels(logits, target, i):
    """Sample ``i`` as a list of (probabilities over classes, label) for its non-ignored pixels."""
    c = logits.shape[1]
    rows = logits[i].reshape(c, -1).T.tolist()
    labels = target[i].reshape(-1).tolist()
    return [(_softmax(r), y) for r, y in zip(rows, labels) if y != -100]


def _counts_sigmoid(z, y):
    tp = sum(_sigmoid(a) * b for a, b in zip(z, y))
    fp = sum(_sigmoid(a) * (1 - b) for a, b in zip(z, y))
    fn = sum((1 - _sigmoid(a)) * b for a, b in zip(z, y))
    return tp, fp, fn


def _counts_class(pixels, k):
    tp = sum(p[k] * (y == k) for p, y in pixels)
    fp = sum(p[k] * (y != k) for p, y in pixels)
    fn = sum((1 - p[k]) * (y == k) for p, y in pixels)
    return tp, fp, fn


def _ref_overlap(logits, target, score):
    out = []
    for i in range(logits.shape[0]):
        if target.is_floating_point():
            out.append(score(*_counts_sigmoid(logits[i].reshape(-1).tolist(), target[i].reshape(-1).tolist())))
        else:
            pixels = _pixels(logits, target, i)
            c = logits.shape[1]
            out.append(sum(score(*_counts_class(pixels, k)) for k in range(c)) / c)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
@pytest.mark.parametrize("smooth", [1.0, 0.0])
def test_jaccard_matches_float64_loop(mode, smooth):
    logits, target = _binary() if mode == "sigmoid" else _multiclass()
    expected = _ref_overlap(logits, target, lambda tp, fp, fn: 1 - (tp + smooth) / (tp + fp + fn + smooth))
    out = ll.build_loss("jaccard", smooth=smooth)(logits=logits, target=target)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mode", ["sigmoid", "softmax"])
@pytest.mark.parametrize("alpha,beta,gamma", [(0.3, 0.7, 0.75), (0.5, 0.5, 1.0), (0.7, 0.3, 2.0)])
def test_focal_tversky_matches_float64_loop(mode, alpha, beta, gamma):
    logits, target = _binary(1) if mode == "sigmoid" else _multiclass(1)
    s = 1.0
    expected = _ref_overlap(
        logits, target, lambda tp, fp, fn: (1 - (tp + s) / (tp + alpha * fp + beta * fn + s)) ** gamma
    )
    out = ll.build_loss("focal_tversky", alpha=alpha, beta=beta, gamma=gamma)(logits=logits, target=target)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_focal_tversky_gamma_one_is_tversky_per_sample():
    logits, target = _binary(2, shape=(4, 6))
    expected = LF.tversky(logits, target, alpha=0.3, beta=0.7, reduction="sample")
    torch.testing.assert_close(LF.focal_tversky(logits, target, gamma=1.0), expected)


def test_overlap_losses_have_finite_gradients_at_a_perfect_prediction():
    logits = torch.tensor([[30.0, -30.0]], requires_grad=True)
    out = LF.focal_tversky(logits, torch.tensor([[1.0, 0.0]]), gamma=0.5, smooth=0.0)
    out.sum().backward()
    assert torch.isfinite(logits.grad).all()


# --- Lovász: the extension from the set function Δ_J(M) = |M| / |G ∪ M| --------------------------------------------


def _ref_lovasz(errors, labels):
    """Σ_i m_{π_i} (Δ(first i) - Δ(first i - 1)), π by decreasing error, errors below 0 counted as 0."""
    order = sorted(range(len(errors)), key=lambda j: -errors[j])
    positives = {j for j, y in enumerate(labels) if y == 1}

    def delta(mis):
        union = positives | mis
        return len(mis) / len(union) if union else 0.0

    total, chosen, previous = 0.0, set(), 0.0
    for j in order:
        chosen.add(j)
        current = delta(chosen)
        total += max(errors[j], 0.0) * (current - previous)
        previous = current
    return total


def test_lovasz_hinge_matches_set_function_loop():
    logits, target = _binary(3)
    expected = []
    for i in range(logits.shape[0]):
        z, y = logits[i].reshape(-1).tolist(), target[i].reshape(-1).tolist()
        expected.append(_ref_lovasz([1 - a * (2 * b - 1) for a, b in zip(z, y)], y))
    out = ll.build_loss("lovasz_hinge")(logits=logits, target=target)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("classes", ["present", "all"])
def test_lovasz_softmax_matches_set_function_loop(classes):
    logits, target = _multiclass(4, c=5)
    expected = []
    for i in range(logits.shape[0]):
        pixels = _pixels(logits, target, i)
        per_class = []
        for k in range(logits.shape[1]):
            fg = [1 if y == k else 0 for _, y in pixels]
            if classes == "present" and not any(fg):
                continue
            per_class.append(_ref_lovasz([abs(f - p[k]) for f, (p, _) in zip(fg, pixels)], fg))
        expected.append(sum(per_class) / len(per_class) if per_class else 0.0)
    out = ll.build_loss("lovasz_softmax", classes=classes)(logits=logits, target=target)
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-12)


def test_lovasz_hinge_is_zero_at_margin_and_iou_like():
    # every pixel beyond the margin: no error; all-wrong: the hinge errors weigh the full Jaccard loss
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    assert LF.lovasz_hinge(torch.tensor([[2.0, -2.0, 1.0, -1.5]]), target).item() == 0.0
    assert LF.lovasz_hinge(torch.zeros(1, 4), target).item() == pytest.approx(1.0)


def test_pixel_losses_mask_samples_without_any_counted_pixel():
    logits, target = _multiclass(5)
    target[2] = -100
    for name in ("jaccard", "focal_tversky", "lovasz_softmax"):
        loss = ll.build_loss(name)
        out, mask = loss(logits=logits, target=target), loss.sample_mask(logits=logits, target=target)
        assert out.shape == (3,) and torch.isfinite(out).all()
        assert mask.tolist() == [True, True, False], name
    assert ll.build_loss("jaccard").sample_mask(
        logits=logits[:, :, 0, 0], target=torch.tensor([0, -100, 1])
    ).tolist() == [True, False, True]


def test_ignored_pixels_change_nothing():
    logits, target = _multiclass(6, ignore=False)
    dropped = target.clone()
    dropped[:, :, -1] = -100
    for fn in (LF.jaccard, LF.focal_tversky, LF.lovasz_softmax):
        torch.testing.assert_close(fn(logits, dropped), fn(logits[..., :-1], target[..., :-1]))


def test_mode_and_shape_errors():
    with pytest.raises(ValueError, match=r"`target` must have shape \[N, \.\.\.\] = \[3, 3, 5\] to match `logits`"):
        LF.jaccard(torch.zeros(3, 4, 3, 5), torch.zeros(3, 4, 3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`target` labels must be in \[0, 3\]"):
        LF.lovasz_softmax(torch.zeros(1, 4, 2), torch.tensor([[0, 7]]))
    with pytest.raises(ValueError, match=r"`target` must have the shape of `logits` \[2, 3, 4\], got \[2, 12\]"):
        LF.lovasz_hinge(torch.zeros(2, 3, 4), torch.zeros(2, 12))
    with pytest.raises(ValueError, match=r"`target` values must be in \[0, 1\]"):
        LF.jaccard(torch.zeros(2, 3, 4), torch.full((2, 3, 4), 2.0))


@pytest.mark.parametrize(
    "name,kwargs,match",
    [
        ("jaccard", {"smooth": -1.0}, r"`smooth` must be >= 0.0, got -1.0"),
        ("jaccard", {"ignore_index": 0.5}, r"`ignore_index` must be an integer, got 0.5"),
        ("focal_tversky", {"gamma": 0.0}, r"`gamma` must be in \(0.0, 3.0\], got 0.0"),
        ("focal_tversky", {"alpha": -0.1}, r"`alpha` must be >= 0.0, got -0.1"),
        ("focal_tversky", {"beta": -0.1}, r"`beta` must be >= 0.0, got -0.1"),
        (
            "focal_tversky",
            {"alpha": 0.0, "beta": 0.0, "smooth": 0.0},
            r"`alpha`, `beta` and `smooth` cannot all be 0",
        ),
        ("lovasz_softmax", {"classes": "some"}, r"`classes` must be one of `present`, `all`, got 'some'"),
        ("lovasz_hinge", {"validate_args": 1}, r"`validate_args` must be a bool"),
    ],
)
def test_constructor_validation(name, kwargs, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.build_loss(name, **kwargs)


def test_names_and_aliases():
    assert {"jaccard", "focal_tversky", "lovasz_hinge", "lovasz_softmax"} <= set(ll.list_losses())
    assert isinstance(ll.build_loss("soft_iou"), ll.losses.Jaccard)
    loss = ll.build_loss("focal_tversky", alpha=0.5, beta=0.5, gamma=2.0)
    assert (loss.alpha, loss.beta, loss.gamma, loss.smooth) == (0.5, 0.5, 2.0, 1.0)
    assert ll.build_loss("lovasz", classes="all").classes == "all"
