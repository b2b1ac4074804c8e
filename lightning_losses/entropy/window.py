"""The per-sample entropies that :class:`~lightning_losses.entropy.EntropyControl` adds to the objective, and its
logging window: the local statistics of the samples seen since the last log, packed in one tensor
``[sum, count, nonfinite, class sums..., class counts...]`` so that one ``all_reduce`` makes them global.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from lightning_losses._validation.tensors import not_ignored
from lightning_losses.functional.aggregation import aggregate_tokens
from lightning_losses.functional.entropy import entropy as entropy_fn

__all__ = ["class_means", "entropies", "merge_window", "upgrade_window", "window_statistics"]


def entropies(
    logits: torch.Tensor, target: Any, ignore_index: int, normalization: str, input: str = "logits"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(per_sample, h, mask)``: the per-sample entropies (``[N, T, V]`` token entropies aggregated with
    ``normalization``, tokens whose integer ``target`` is ``ignore_index`` left out), the entropies the controller
    measures (``[N]`` or ``[N, T]``) and their mask (``None``: all count). ``input`` names the tensor in errors."""
    if logits.ndim == 2:
        h = entropy_fn(logits)
        return h, h, None
    if logits.ndim != 3:
        raise ValueError(f"`{input}` must have shape [N, C] or [N, T, V], got {list(logits.shape)}")
    tokens = entropy_fn(logits)
    mask = None
    if isinstance(target, torch.Tensor) and not target.is_floating_point() and target.shape == tokens.shape:
        mask = not_ignored(target, ignore_index)
    m = torch.ones_like(tokens, dtype=torch.bool) if mask is None else mask
    return aggregate_tokens(tokens, m, normalization), tokens, mask


def window_statistics(
    h: torch.Tensor, mask: torch.Tensor | None, logits: torch.Tensor, target: Any, per_class: bool
) -> torch.Tensor:
    """The local window statistics of one batch of entropies ``h`` (NaN / inf counted apart and left out); with
    ``per_class`` and ``[N, C]`` logits, also the sums and counts per true class (integer ``target [N]``) or else per
    predicted class.

    Example:
        >>> window_statistics(torch.tensor([0.5, float("nan")]), None, torch.zeros(2, 3), None, per_class=False)
        tensor([0.5000, 1.0000, 1.0000])
    """
    h = h.detach() if h.requires_grad else h
    if mask is None and h.device.type == "cpu" and not (per_class and logits.ndim == 2) and h.is_floating_point():
        # the usual case on the CPU, where reading a number syncs nothing: a finite sum means every value is finite
        # (a NaN or an infinity makes it NaN / inf), so one sum and no test (kernels of their own after a backward)
        total = float(h.sum())
        if math.isfinite(total):
            return torch.tensor([total, h.numel(), 0.0], dtype=h.dtype)
    # (`h - h` is 0 for a finite value, NaN for NaN / inf: two kernels where `isfinite` runs four; a logging step
    # folds its window after the backward, when each kernel costs most)
    finite = (h - h).eq(0) if h.is_floating_point() else torch.ones_like(h, dtype=torch.bool)
    counted = finite if mask is None else mask & finite
    kept = counted.sum()
    seen = h.numel() if mask is None else mask.sum()  # the non-finite ones of these are counted apart
    h = torch.nan_to_num(h, 0.0, 0.0, 0.0) if mask is None else torch.where(counted, h, 0.0)
    # one stack (promoted to h's dtype): sum over the counted samples, their count, the non-finite count
    head = torch.stack([h.sum(), kept, seen - kept])
    if not (per_class and logits.ndim == 2):
        return head
    num_classes = logits.shape[-1]
    use_target = isinstance(target, torch.Tensor) and not target.is_floating_point() and target.ndim == 1
    labels = target.long() if use_target else logits.detach().argmax(-1)
    valid = (labels >= 0) & (labels < num_classes) & counted
    labels = torch.where(valid, labels, torch.zeros_like(labels))
    w = valid.to(h.dtype)
    sums = torch.zeros(num_classes, dtype=h.dtype, device=h.device).index_add_(0, labels, h * w)
    counts = torch.zeros(num_classes, dtype=h.dtype, device=h.device).index_add_(0, labels, w)
    return torch.cat([head, sums, counts])


def merge_window(window: torch.Tensor | None, stats: torch.Tensor) -> torch.Tensor:
    """``window + stats``; ``stats`` alone when there is no window yet or its layout changed."""
    return stats if window is None or window.shape != stats.shape else window + stats


def class_means(name: str, reduced: Any) -> dict[str, float]:
    """``{f"{name}/class_{c}": mean entropy}`` for the classes present in the (global) window ``reduced`` (a tensor
    or its values as a list).

    Example:
        >>> class_means("entropy", [3.0, 3.0, 0.0, 1.0, 2.0, 0.0, 1.0, 2.0, 0.0])
        {'entropy/class_0': 1.0, 'entropy/class_1': 1.0}
    """
    values = reduced.tolist() if isinstance(reduced, torch.Tensor) else list(reduced)
    if len(values) <= 3:
        return {}
    num_classes = (len(values) - 3) // 2
    sums, counts = values[3 : 3 + num_classes], values[3 + num_classes :]
    return {f"{name}/class_{c}": v / max(n, 1.0) for c, (v, n) in enumerate(zip(sums, counts)) if n > 0}


def upgrade_window(window: torch.Tensor) -> torch.Tensor:
    """A window from a checkpoint before the non-finite count, ``[sum, count, ...]``, as ``[sum, count, 0, ...]``."""
    return torch.cat([window[:2], window.new_zeros(1), window[2:]])
