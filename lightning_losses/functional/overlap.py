r"""Set-level overlap losses with a multi-class (softmax) mode: softmax Dice and soft F1.

**Modes**, told apart by ``target``: integer labels ``target [N, ...]`` with ``logits [N, C, ...]`` (class axis 1,
``target.shape != logits.shape``) are the **softmax** mode: ``p = softmax(z)`` over the classes and one-hot labels,
pixels labelled ``ignore_index`` left out (see :func:`lightning_losses.functional.segmentation.class_probs`); a
``target`` shaped like ``logits`` (values in [0, 1]) is the **sigmoid** mode, ``p = σ(z)`` per label.

**Reductions**: ``"global"`` sums the soft counts per class over the batch (and pixels; under DDP over the global
batch, with gradients, unless ``sync=False``): one scalar, the mean over classes. ``"sample"`` sums them per sample:
``[N]``, the mean over classes.
"""

from __future__ import annotations

import torch

from lightning_losses._validation.tensors import check_binary, not_ignored
from lightning_losses.distributed import all_reduce_sum_with_grad
from lightning_losses.functional.segmentation import class_probs

__all__ = ["REDUCTIONS", "is_softmax_mode", "overlap_counts", "soft_f1", "softmax_dice"]

REDUCTIONS = ("global", "sample")


def is_softmax_mode(logits: torch.Tensor, target: torch.Tensor) -> bool:
    """Integer labels with a class axis on ``logits`` (``target.shape != logits.shape``): the softmax mode."""
    return (
        isinstance(target, torch.Tensor)
        and isinstance(logits, torch.Tensor)
        and not target.is_floating_point()
        and target.shape != logits.shape
    )


def overlap_counts(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    reduction: str,
    sync: bool,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Soft ``(TP, Σp, Σy)``: ``[C]`` (``"global"``) or ``[N, C]`` (``"sample"``) in softmax mode, ``[K]`` / ``[N, K]``
    summed over labels in sigmoid mode as :func:`lightning_losses.functional.dice`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
    if is_softmax_mode(logits, target):
        parts = class_probs(logits, target, ignore_index=ignore_index, validate_args=validate_args)
        p = parts.p * parts.valid
        stacked = torch.stack([p * parts.fg, p, parts.fg]).sum(-1)  # [3, N, C]
    else:
        check_binary(logits, target, validate_args=validate_args)
        z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
        p, y = torch.sigmoid(z), target.to(z.dtype)
        stacked = torch.stack([p * y, p, y])
        stacked = stacked.unsqueeze(-1) if stacked.ndim == 2 else stacked  # [3, N, K]
        if reduction == "sample":
            stacked = stacked.sum(-1, keepdim=True)  # the sample's labels together, as `dice`
    if reduction == "global":
        stacked = stacked.sum(1)
        if sync:
            stacked = all_reduce_sum_with_grad(stacked)
    return stacked[0], stacked[1], stacked[2]


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def softmax_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    reduction: str = "global",
    ignore_index: int = -100,
    sync: bool = True,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Multi-class (softmax) soft Dice loss (Milletari et al., *V-Net*, 3DV 2016; multi-class form of
    segmentation-models-pytorch's ``DiceLoss(mode="multiclass")``):

    .. math:: \ell_c = 1 - \frac{2\sum p_c\,y_c + s}{\sum p_c + \sum y_c + s},\qquad \ell = \frac1C\sum_c \ell_c

    ``p = softmax(logits)`` over axis 1, ``y`` one-hot labels. ``"global"`` (default): sums over the (global) batch
    and pixels, and, as segmentation-models-pytorch, a class absent from the target has ``ℓ_c = 0`` (still counted in
    the mean). ``"sample"``: sums over each sample's pixels, every class counted (``smooth`` keeps an absent class
    finite, as :func:`~lightning_losses.functional.jaccard`). Pixels labelled ``ignore_index`` are left out.

    Example:
        >>> softmax_dice(torch.tensor([[10.0, -10.0], [-10.0, 10.0]]), torch.tensor([0, 1]), smooth=0.0).round(
        ...     decimals=4)
        tensor(0.)
    """
    tp, p_sum, y_sum = overlap_counts(
        logits, target, reduction=reduction, sync=sync, ignore_index=ignore_index, validate_args=validate_args
    )
    loss = 1.0 - _ratio(2.0 * tp + smooth, p_sum + y_sum + smooth)
    if reduction == "global":
        return torch.where(y_sum > 0, loss, torch.zeros_like(loss)).mean()
    return loss.mean(-1)


def soft_f1(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    double: bool = False,
    eps: float = 1e-16,
    reduction: str = "global",
    ignore_index: int = -100,
    sync: bool = True,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Macro soft-F1 loss: ``1 - F1`` on soft counts, mean over classes (labels).

    .. math:: \ell_c = 1 - \frac{2\,TP_c}{2\,TP_c + FP_c + FN_c + \varepsilon},\qquad TP_c = \sum p_c y_c,\
              FP_c = \sum p_c (1 - y_c),\ FN_c = \sum (1 - p_c) y_c

    (the "macro soft-F1" cost, e.g. Maiza 2019; the denominator is :math:`\sum p_c + \sum y_c`, so ``double=False``
    equals :func:`~lightning_losses.functional.dice` with ``smooth = 0`` up to ``ε``). ``double=True`` averages it with
    the F1 of the negative class (:math:`p \to 1 - p`, :math:`y \to 1 - y`): the "double soft-F1", which also rewards
    true negatives. Sigmoid (multi-label) or softmax (integer labels) mode, ``"global"`` or ``"sample"`` reduction
    (module docstring); ``ε > 0`` keeps a class with no label and no prediction at loss 1 (not ``0/0``).

    Example:
        >>> soft_f1(torch.tensor([[10.0, -10.0]]), torch.tensor([[1.0, 0.0]])).round(decimals=4)  # label 2: no y, no p
        tensor(0.5000)
    """
    tp, p_sum, y_sum = overlap_counts(
        logits, target, reduction=reduction, sync=sync, ignore_index=ignore_index, validate_args=validate_args
    )
    loss = 1.0 - 2.0 * tp / (p_sum + y_sum + eps)
    if double:
        total = _total(logits, target, reduction, sync, ignore_index)
        tn = total - p_sum - y_sum + tp  # Σ (1 - p)(1 - y)
        loss = 0.5 * (loss + 1.0 - 2.0 * tn / (2.0 * total - p_sum - y_sum + eps))
    return loss.mean() if reduction == "global" else loss.mean(-1)


def _total(logits, target, reduction: str, sync: bool, ignore_index: int) -> torch.Tensor:
    """Number of counted elements behind each count (``Σ 1``), shaped like the counts."""
    if is_softmax_mode(logits, target):
        valid = not_ignored(target, ignore_index).reshape(target.shape[0], -1).sum(-1, keepdim=True)  # [N, 1]
        ones = valid.expand(-1, logits.shape[1])
    else:
        ones = torch.ones_like(logits if logits.ndim == 2 else logits.unsqueeze(-1))
        ones = ones.sum(-1, keepdim=True) if reduction == "sample" else ones
    ones = ones.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)
    if reduction == "global":
        ones = ones.sum(0)
        if sync:
            ones = all_reduce_sum_with_grad(ones)
    return ones
