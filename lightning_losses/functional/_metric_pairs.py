"""Shared machinery of the metric-learning losses: input checks, anchor/reference pairs and their masks.

The input convention is described in :mod:`lightning_losses.functional.metric_learning`; the losses live there
(contrastive) and in :mod:`lightning_losses.functional.metric_pairwise` (pair-based).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import shape_str
from lightning_losses.distributed import all_gather_with_grad, is_distributed, rank

__all__ = ["Pairs", "finish", "full_precision", "masked_lse", "run", "sim", "valid_anchors", "valid_rows"]


def _check_labels(name: str, labels: object, rows: int, of: str) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"`{name}` must hold integer labels (int64), got {labels.dtype}")
    if labels.shape != (rows,):
        raise ValueError(f"`{name}` must have shape [{rows}] to match `{of}`, got {shape_str(labels)}")


def _check_embeddings(name: str, x: object, dim: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"`{name}` must be a floating tensor of shape [N, D], got {x.dtype} {shape_str(x)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"`{name}` must have D = {dim} columns like `embeddings`, got {shape_str(x)}")


def _check_inputs(embeddings, target, ref_embeddings, ref_target, *, labels_required: bool) -> None:
    _check_embeddings("embeddings", embeddings)
    n = embeddings.shape[0]
    if target is None:
        if labels_required:
            raise ValueError("`target` [N] integer labels are required")
        if ref_embeddings is None:
            raise ValueError("without `target`, pass `ref_embeddings` (paired views: row i is the positive of row i)")
    else:
        _check_labels("target", target, n, "embeddings")
    if ref_embeddings is None:
        if ref_target is not None:
            raise ValueError("`ref_target` was given without `ref_embeddings`")
        return
    _check_embeddings("ref_embeddings", ref_embeddings, embeddings.shape[1])
    m = ref_embeddings.shape[0]
    if ref_target is None:
        if m != n:
            raise ValueError(
                f"`ref_embeddings` has {m} rows but `embeddings` {n}: pass `ref_target` unless the rows are paired"
            )
    else:
        if target is None:
            raise ValueError("`ref_target` needs `target` (labels on both sides)")
        _check_labels("ref_target", ref_target, m, "ref_embeddings")


@dataclass
class Pairs:
    """Anchors, references and the pair masks of one call (``[n, M]`` booleans)."""

    anchors: torch.Tensor
    refs: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _labels(target, ref_target, n: int, m_local: int, gather: bool, device) -> tuple:
    """Anchor labels ``[n]``, reference labels ``[M]`` and this rank's row offset in the gathered references."""
    local_ref = target if ref_target is None else ref_target
    if local_ref is None:  # paired views without labels: instance ids = global row index
        local_ref = torch.arange(m_local, device=device)
    offset = torch.zeros((), dtype=torch.long, device=device)
    ref_labels = local_ref
    if gather and is_distributed():
        owner = torch.full((m_local,), rank(), dtype=torch.long, device=device)
        packed = all_gather_with_grad(torch.stack([local_ref.long(), owner], dim=1))
        ref_labels, offset = packed[:, 0], (packed[:, 1] < rank()).sum()
    if target is None:
        ref_labels = torch.arange(ref_labels.shape[0], device=device)
        anchor_labels = offset + torch.arange(n, device=device)
    else:
        anchor_labels = target
    return anchor_labels.long(), ref_labels.long(), offset


def _masks(target, ref_embeddings, ref_target, n: int, m_local: int, gather: bool, device):
    anchor_labels, ref_labels, offset = _labels(target, ref_target, n, m_local, gather, device)
    same = anchor_labels[:, None] == ref_labels[None, :]
    neg = ~same
    if ref_embeddings is None:  # references are the anchors themselves: exclude the self pair
        cols = torch.arange(ref_labels.shape[0], device=device)
        same = same & (cols[None, :] != (offset + torch.arange(n, device=device))[:, None])
    return same, neg


def _pairs(embeddings, target, ref_embeddings, ref_target, *, normalize: bool, gather: bool) -> Pairs:
    dtype = _compute_dtype(embeddings)
    anchors = embeddings.to(dtype)
    if normalize:
        anchors = F.normalize(anchors, dim=1)
    if ref_embeddings is None:
        refs = anchors
    else:
        refs = ref_embeddings.to(dtype)
        refs = F.normalize(refs, dim=1) if normalize else refs
    m_local = refs.shape[0]
    if gather:  # identity in one process (counted as a global-batch reduction: `_accumulation`)
        refs = all_gather_with_grad(refs)
    pos, neg = _masks(target, ref_embeddings, ref_target, anchors.shape[0], m_local, gather, anchors.device)
    return Pairs(anchors, refs, pos, neg)


def masked_lse(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise ``log sum_{mask} exp(x)``; rows with no entry get a very negative finite value (callers zero them)."""
    filled = torch.where(mask, x, torch.full_like(x, torch.finfo(x.dtype).min))
    return torch.logsumexp(filled, dim=1)


def sim(p: Pairs) -> torch.Tensor:
    return p.anchors @ p.refs.T


def finish(loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, loss, torch.zeros_like(loss))


def valid_rows(p: Pairs, needs_negative: bool) -> torch.Tensor:
    valid = p.pos.any(dim=1)
    return valid & p.neg.any(dim=1) if needs_negative else valid


def valid_anchors(
    embeddings: torch.Tensor,
    target: torch.Tensor | None,
    *,
    ref_embeddings: torch.Tensor | None = None,
    ref_target: torch.Tensor | None = None,
    needs_negative: bool = False,
    gather: bool = True,
) -> torch.Tensor:
    """Boolean ``[N]``: anchors with at least one positive (and one negative when ``needs_negative``).

    Under DDP with ``gather=True`` the labels of every rank count (one small all-gather of labels).

    Example:
        >>> valid_anchors(torch.zeros(3, 2), torch.tensor([0, 0, 1]))
        tensor([ True,  True, False])
    """
    _check_inputs(embeddings, target, ref_embeddings, ref_target, labels_required=False)
    m_local = embeddings.shape[0] if ref_embeddings is None else ref_embeddings.shape[0]
    with torch.no_grad():
        pos, neg = _masks(target, ref_embeddings, ref_target, embeddings.shape[0], m_local, gather, embeddings.device)
    valid = pos.any(dim=1)
    return valid & neg.any(dim=1) if needs_negative else valid


def run(embeddings, target, ref_embeddings, ref_target, *, normalize, gather, labels_required=True) -> Pairs:
    _check_inputs(embeddings, target, ref_embeddings, ref_target, labels_required=labels_required)
    return _pairs(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather)


def full_precision(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run ``fn`` with autocast disabled (its inputs are upcast to float32 inside)."""

    @functools.wraps(fn)
    def wrapper(embeddings, *args, **kwargs):
        device = embeddings.device.type if isinstance(embeddings, torch.Tensor) else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            return fn(embeddings, *args, **kwargs)

    return wrapper
