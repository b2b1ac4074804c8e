"""Thin wrappers over ``torch.distributed`` used wherever a statistic must be global.

Every function is a no-op (identity) when no process group is initialised, so the same code runs in one process and
under DDP. Collectives are only issued where the library documents a sync point (one packed ``all_reduce`` per
training step in :func:`lightning_losses.reduction.weighted_mean`, plus whatever a component declares).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_with_grad",
    "all_reduce_sum_with_grad",
    "global_sum",
    "is_distributed",
    "rank",
    "world_size",
]


def is_distributed() -> bool:
    """True when a default process group with more than one process is initialised."""
    return _AVAILABLE and dist.is_initialized() and dist.get_world_size() > 1


_AVAILABLE = dist.is_available()  # fixed for the build of torch


def world_size() -> int:
    """Number of processes in the default group (1 without one)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the default group (0 without one)."""
    return dist.get_rank() if is_distributed() else 0


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes (a detached copy; no gradient flows through the collective).

    Example:
        >>> global_sum(torch.tensor([1.0, 2.0]))  # one process: unchanged
        tensor([1., 2.])
    """
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns this rank's slice of the all-reduced upstream gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.size = tensor.shape[0]
        sizes = torch.tensor([tensor.shape[0]], device=tensor.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(dist.get_world_size())]
        dist.all_gather(all_sizes, sizes)
        all_sizes_int = [int(s) for s in all_sizes]
        ctx.sizes = all_sizes_int
        ctx.rank = dist.get_rank()
        max_size = max(all_sizes_int)
        padded = tensor.new_zeros((max_size, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        gathered = [torch.empty_like(padded) for _ in all_sizes_int]
        dist.all_gather(gathered, padded.contiguous())
        return torch.cat([g[:s] for g, s in zip(gathered, all_sizes_int)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.size]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from all ranks along dim 0 (sizes may differ), keeping gradients.

    The backward sums the upstream gradient over ranks and returns this rank's slice: with a loss computed on the
    gathered batch and scaled as a per-rank share, DDP's gradient average equals one process on the concatenated
    batch. Identity without a process group.
    """
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


class _AllReduceSumWithGrad(torch.autograd.Function):
    """All-reduce (sum) whose backward also all-reduces (sums) the upstream gradient over ranks."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        out = tensor.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    r"""Sum ``tensor`` over all processes, keeping gradients (for set-level losses: soft TP/FP/FN counts).

    Every rank gets :math:`S = \sum_r s_r` and computes the same set-level loss :math:`f(S)`. The backward sums the
    upstream gradient over ranks, so rank ``r`` receives :math:`k f'(S)\,\partial s_r/\partial\theta`; DDP's average
    over the ``k`` ranks is then :math:`f'(S)\,\partial S/\partial\theta`: the gradient of one process on the
    concatenated batch. Add :math:`f(S)` to each rank's loss **as is** (no ``k`` factor). Every rank must call
    ``backward`` (as under DDP). Identity without a process group; no host sync.

    Example:
        >>> all_reduce_sum_with_grad(torch.tensor([1.0, 2.0]))  # one process: unchanged
        tensor([1., 2.])
    """
    if not is_distributed():
        return tensor
    return _AllReduceSumWithGrad.apply(tensor)
