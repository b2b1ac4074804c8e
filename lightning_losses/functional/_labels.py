"""Shared preamble of the integer-label multi-class losses: checks, log-softmax, the target's log-probability."""

from __future__ import annotations

from typing import NamedTuple

import torch

from lightning_losses._validation.tensors import as_index, check_multiclass, not_ignored
from lightning_losses._validation.tensors import upcast_half as _upcast

__all__ = ["LabelLogProbs", "label_log_probs", "masked"]


class LabelLogProbs(NamedTuple):
    """What :func:`label_log_probs` returns.

    Attributes:
        z: logits, float32 when they arrived in half precision.
        logp: ``[N, C]`` log-softmax of ``z``.
        logp_y: ``[N]`` log-probability of each sample's label (0 for ignored samples).
        valid: ``[N]`` bool, ``False`` where the label is ``ignore_index``.
        target: ``[N]`` labels with ignored entries replaced by 0 (safe to index with).
    """

    z: torch.Tensor
    logp: torch.Tensor
    logp_y: torch.Tensor
    valid: torch.Tensor
    target: torch.Tensor


def label_log_probs(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    name: str,
    ignore_index: int = -100,
    validate_args: bool = True,
    min_classes: int = 1,
) -> LabelLogProbs:
    """Validate ``logits [N, C]`` with integer ``target [N]`` and return the pieces every label loss needs.

    Raises:
        ValueError: soft targets (the loss ``name`` takes integer labels), fewer than ``min_classes`` classes, or
            any check of :func:`~lightning_losses._validation.tensors.check_multiclass`.
    """
    if check_multiclass(logits, target, ignore_index=ignore_index, validate_args=validate_args):
        raise ValueError(f"`{name}` takes integer labels `target [N]`; soft targets are not supported")
    if logits.shape[1] < min_classes:
        raise ValueError(f"`{name}` needs at least {min_classes} classes, got `logits` with C = {logits.shape[1]}")
    z = _upcast(logits)
    logp = torch.log_softmax(z, dim=-1)
    valid = not_ignored(target, ignore_index)
    safe = as_index(torch.where(valid, target, torch.zeros_like(target)))
    logp_y = logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    return LabelLogProbs(z, logp, logp_y, valid, safe)


def masked(loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Zero the loss of ignored samples (``where``: a non-finite loss value there reaches neither the total nor, through
    this op, the gradient). Non-finite *inputs* of an ignored row (NaN logits) can still give NaN gradients through
    the loss's own backward (e.g. ``log_softmax``'s), exactly as with ``torch.nn.functional.cross_entropy(
    ignore_index=...)``."""
    return torch.where(valid, loss, torch.zeros_like(loss))
