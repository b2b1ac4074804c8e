r"""Per-sample (per-image) overlap losses for segmentation and multi-label outputs: soft Jaccard and focal Tversky.

Two modes, told apart by ``target``'s dtype:

* **sigmoid** (floating ``target`` shaped like ``logits``, values in [0, 1]): ``p = σ(z)``; the soft counts of one
  sample are summed over all its non-batch elements (pixels and / or labels): one overlap per sample.
* **softmax** (integer ``target [N, ...]`` with ``logits [N, C, ...]``, class axis 1): ``p = softmax(z)`` over the
  classes; counts per sample and class, summed over the spatial elements, pixels labelled ``ignore_index`` left out;
  the loss is the mean over the ``C`` classes. ``logits [N, C]`` with ``target [N]`` is one pixel per sample.

Soft counts: :math:`TP = \sum p\,y`, :math:`FP = \sum p\,(1 - y)`, :math:`FN = \sum (1 - p)\,y` (``1 - p`` as
``σ(-z)`` in sigmoid mode). Half-precision logits are computed in float32. Every function returns ``[N]``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from lightning_losses._validation.tensors import as_index, check_binary, check_label_range, not_ignored, shape_str
from lightning_losses._validation.tensors import upcast_half as _upcast

__all__ = ["ClassProbs", "class_probs", "focal_tversky", "jaccard", "soft_counts"]


class ClassProbs(NamedTuple):
    """Softmax-mode pieces, flattened over the spatial elements ``P``.

    Attributes:
        p: ``[N, C, P]`` class probabilities.
        fg: ``[N, C, P]`` one-hot labels (0 at ignored pixels).
        valid: ``[N, 1, P]`` bool, ``False`` at pixels labelled ``ignore_index``.
    """

    p: torch.Tensor
    fg: torch.Tensor
    valid: torch.Tensor


def class_probs(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100, validate_args: bool = True
) -> ClassProbs:
    """Validate ``logits [N, C, ...]`` with integer ``target [N, ...]`` and return :class:`ClassProbs`."""
    if logits.ndim < 2 or not logits.is_floating_point():
        raise ValueError(
            f"`logits` must be a floating tensor of shape [N, C, ...], got {logits.dtype} {shape_str(logits)}"
        )
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"`target` must hold integer class labels (int64), got {target.dtype}")
    expected = logits.shape[:1] + logits.shape[2:]
    if target.shape != expected:
        raise ValueError(
            f"`target` must have shape [N, ...] = {list(expected)} to match `logits` {shape_str(logits)} "
            f"(class axis 1), got {shape_str(target)}"
        )
    num_classes = logits.shape[1]
    if validate_args:
        check_label_range(target, num_classes, ignore_index)
    z = _upcast(logits).reshape(logits.shape[0], num_classes, -1)
    labels = target.reshape(target.shape[0], 1, -1)
    valid = not_ignored(labels, ignore_index)
    safe = as_index(torch.where(valid, labels, torch.zeros_like(labels)))
    fg = torch.zeros_like(z).scatter_(1, safe, 1.0) * valid
    return ClassProbs(torch.softmax(z, dim=1), fg, valid)


def soft_counts(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100, validate_args: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(TP, FP, FN)``, each ``[N, 1]`` (sigmoid mode) or ``[N, C]`` (softmax mode), see the module docstring."""
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        check_binary_nd(logits, target, validate_args=validate_args)
        z = _upcast(logits).reshape(logits.shape[0], -1)
        y = target.reshape(target.shape[0], -1).to(z.dtype)
        p = torch.sigmoid(z)
        return (p * y).sum(1, keepdim=True), (p * (1.0 - y)).sum(1, keepdim=True), (torch.sigmoid(-z) * y).sum(1, True)
    parts = class_probs(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    p = parts.p * parts.valid
    tp = (p * parts.fg).sum(-1)
    return tp, p.sum(-1) - tp, parts.fg.sum(-1) - tp


def check_binary_nd(logits: torch.Tensor, target: torch.Tensor, *, validate_args: bool = True) -> None:
    """:func:`~lightning_losses._validation.tensors.check_binary` for ``logits [N, ...]`` of any rank >= 1."""
    if isinstance(logits, torch.Tensor) and logits.ndim > 2:
        check_binary(
            logits.flatten(1),
            target.flatten(1) if isinstance(target, torch.Tensor) else target,
            validate_args=validate_args,
        )
        if target.shape != logits.shape:
            raise ValueError(f"`target` must have the shape of `logits` {shape_str(logits)}, got {shape_str(target)}")
        return
    check_binary(logits, target, validate_args=validate_args)


def _pow0(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """``x ** gamma`` for ``x >= 0`` whose gradient is 0 (not ``inf`` or NaN) where ``x == 0``."""
    if gamma == 1:
        return x
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)).pow(gamma), 0.0)


def jaccard(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample soft Jaccard (IoU) loss (Rahman & Wang, *Optimizing Intersection-Over-Union in Deep Neural
    Networks for Image Segmentation*, ISVC 2016):

    .. math:: \ell = 1 - \frac{TP + s}{TP + FP + FN + s} = 1 - \frac{\sum p y + s}{\sum p + \sum y - \sum p y + s}

    in sigmoid or softmax mode (module docstring; softmax mode: mean over classes). ``s = smooth >= 0`` (default 1)
    keeps an empty sample / absent class finite and at loss 0 when nothing is predicted. segmentation-models-pytorch
    sums over the batch (one score per class) and writes the intersection as :math:`(\sum p + \sum y - \lVert p -
    y\rVert_1)/2`, equal to :math:`\sum p y` for hard labels only.

    Example:
        >>> jaccard(torch.tensor([[10.0, -10.0]]), torch.tensor([[1.0, 0.0]])).round(decimals=4)
        tensor([0.])
    """
    tp, fp, fn = soft_counts(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    union = tp + fp + fn + smooth
    iou = (tp + smooth) / union.clamp_min(torch.finfo(union.dtype).tiny)
    return (1.0 - iou).mean(dim=1)


def focal_tversky(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    gamma: float = 0.75,
    smooth: float = 1.0,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample focal Tversky loss (Abraham & Khan, *A Novel Focal Tversky Loss Function with Improved Attention
    U-Net for Lesion Segmentation*, ISBI 2019):

    .. math:: \ell = \big(1 - TI\big)^{\gamma},\qquad TI = \frac{TP + s}{TP + \alpha\,FP + \beta\,FN + s}

    ``alpha`` weighs false positives and ``beta`` false negatives, as :func:`~lightning_losses.functional.tversky`
    (defaults 0.3 / 0.7: the paper's FN weight 0.7); the paper writes the exponent as ``1/γ`` with ``γ = 4/3``, so
    the default exponent here is ``gamma = 0.75``. ``gamma = 1`` is the Tversky loss. Softmax mode: the mean over
    classes of the per-class term (the paper sums over classes: a factor ``C``). The power has a zero gradient at
    ``TI = 1`` (not ``inf``) for ``gamma < 1``. The authors' code counts over the flattened batch; here per sample.

    Example:
        >>> focal_tversky(torch.tensor([[10.0, -10.0]]), torch.tensor([[1.0, 0.0]])).round(decimals=4)
        tensor([0.0003])
    """
    tp, fp, fn = soft_counts(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    den = tp + alpha * fp + beta * fn + smooth
    ti = (tp + smooth) / den.clamp_min(torch.finfo(den.dtype).tiny)
    return _pow0((1.0 - ti).clamp_min(0.0), gamma).mean(dim=1)
