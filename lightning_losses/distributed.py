"""Thin wrappers over ``torch.distributed`` used wherever a statistic must be global.

Every function is a no-op (identity) when no process group is initialised, so the same code runs in one process and
under DDP. Collectives are only issued where the library documents a sync point (one packed ``all_reduce`` per
training step in :func:`lightning_losses.reduction.weighted_mean`, plus whatever a component declares).

Every reduction goes over the **data-parallel group**: the processes that see different samples of the global batch.
It is the world under DDP and the ``data_parallel`` dimension of the device mesh under Lightning's
``ModelParallelStrategy`` (FSDP2 / tensor parallelism), where the ranks of a tensor-parallel group share one batch.
``LossesMixin`` and the library's callbacks register it in ``setup`` (:func:`use_strategy`) and drop it in
``teardown``; :func:`set_data_parallel_group` sets it directly. Unregistered, it is the world.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

__all__ = [
    "all_gather_values",
    "all_gather_with_grad",
    "all_reduce_sum_with_grad",
    "data_parallel_group",
    "data_parallel_group_of",
    "global_mean",
    "global_reductions",
    "global_sum",
    "global_sum_values",
    "is_distributed",
    "rank",
    "rank_zero_share",
    "set_data_parallel_group",
    "use_strategy",
    "world_size",
]

_AVAILABLE = dist.is_available()  # fixed for the build of torch
_DATA_PARALLEL_GROUP: Any = None  # None: the default group (the world)
_REDUCTIONS = 0  # calls of the global reductions below (one process too): see `global_reductions`


def global_reductions() -> int:
    """How many global-batch reductions (:func:`global_sum`, the all-gathers, :func:`all_reduce_sum_with_grad`) ran
    in this process so far, distributed or not: a loss whose forward moves it depends on the whole batch."""
    return _REDUCTIONS


def _count() -> None:
    global _REDUCTIONS
    _REDUCTIONS += 1


def set_data_parallel_group(group: Any) -> None:
    """Make ``group`` (a ``ProcessGroup``; ``None``: the world) the group every reduction of the library goes over."""
    global _DATA_PARALLEL_GROUP
    _DATA_PARALLEL_GROUP = group


def data_parallel_group() -> Any:
    """The registered data-parallel process group (``None``: the default group, the world)."""
    return _DATA_PARALLEL_GROUP


def data_parallel_group_of(strategy: Any) -> Any:
    """The data-parallel group of a Lightning strategy: the ``data_parallel`` dimension of its device mesh
    (``ModelParallelStrategy``), ``None`` (the world) for strategies without one (DDP, one device)."""
    try:
        mesh = getattr(strategy, "device_mesh", None)
    except RuntimeError:  # ModelParallelStrategy before its processes are initialised
        return None
    if mesh is None or "data_parallel" not in (getattr(mesh, "mesh_dim_names", None) or ()):
        return None
    return mesh["data_parallel"].get_group()


def use_strategy(strategy: Any) -> None:
    """Register the data-parallel group of a Lightning ``strategy`` (:func:`data_parallel_group_of`)."""
    set_data_parallel_group(data_parallel_group_of(strategy))


def is_distributed() -> bool:
    """True when a process group is initialised and the data-parallel group has more than one process."""
    return _AVAILABLE and dist.is_initialized() and dist.get_world_size(_DATA_PARALLEL_GROUP) > 1


def world_size() -> int:
    """Number of processes in the data-parallel group (1 without a process group)."""
    return dist.get_world_size(_DATA_PARALLEL_GROUP) if is_distributed() else 1


def rank() -> int:
    """Rank of this process in the data-parallel group (0 without a process group)."""
    return dist.get_rank(_DATA_PARALLEL_GROUP) if is_distributed() else 0


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the data-parallel group (a detached copy; no gradient flows through the collective).

    Example:
        >>> global_sum(torch.tensor([1.0, 2.0]))  # one process: unchanged
        tensor([1., 2.])
    """
    _count()
    out = tensor.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=_DATA_PARALLEL_GROUP)
    return out


def global_sum_values(tensor: torch.Tensor) -> list[Any]:
    """:func:`global_sum` of ``tensor`` read to the host (``tolist``): for the values a logging step writes. In one
    process, the read alone (no copy); under DDP, one collective on a copy.

    Example:
        >>> global_sum_values(torch.tensor([1.0, 2.0]))
        [1.0, 2.0]
    """
    if is_distributed():
        return global_sum(tensor).tolist()
    _count()
    return tensor.tolist()  # `tolist` reads values only: no detach needed


def global_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over the data-parallel group (:func:`global_sum` over the group's size; one collective).

    Example:
        >>> global_mean(torch.tensor([1.0, 2.0]))  # one process: unchanged
        tensor([1., 2.])
    """
    return global_sum(tensor) / world_size()


def rank_zero_share(total: torch.Tensor) -> torch.Tensor:
    """A total over the data-parallel group, read back from a checkpoint, as this rank's share: ``total`` on rank 0,
    zeros on the others, so that the next sum over the ranks counts it once (a logging window saved with
    :func:`global_sum`).

    Example:
        >>> rank_zero_share(torch.tensor([3.0]))  # one process: rank 0
        tensor([3.])
    """
    return total.clone() if rank() == 0 else torch.zeros_like(total)


class _AllGatherWithGrad(torch.autograd.Function):
    """All-gather whose backward returns this rank's slice of the all-reduced upstream gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.size = tensor.shape[0]
        sizes = torch.tensor([tensor.shape[0]], device=tensor.device)
        ctx.group = group = _DATA_PARALLEL_GROUP
        all_sizes = [torch.zeros_like(sizes) for _ in range(dist.get_world_size(group))]
        dist.all_gather(all_sizes, sizes, group=group)
        all_sizes_int = [int(s) for s in all_sizes]
        ctx.sizes = all_sizes_int
        ctx.rank = dist.get_rank(group)
        max_size = max(all_sizes_int)
        padded = tensor.new_zeros((max_size, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        gathered = [torch.empty_like(padded) for _ in all_sizes_int]
        dist.all_gather(gathered, padded.contiguous(), group=group)
        return torch.cat([g[:s] for g, s in zip(gathered, all_sizes_int)], dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.size]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from the data-parallel ranks along dim 0 (sizes may differ), keeping gradients.

    The backward sums the upstream gradient over ranks and returns this rank's slice: with a loss computed on the
    gathered batch and scaled as a per-rank share, DDP's gradient average equals one process on the concatenated
    batch. Identity without a process group.
    """
    _count()
    if not is_distributed():
        return tensor
    return _AllGatherWithGrad.apply(tensor)


def all_gather_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rows ``[n, k]`` (floating) of every data-parallel rank in rank order, with gradients
    (:func:`all_gather_with_grad`), and the mask of this rank's rows in them; ``(rows, None)`` without a process group.

    For batch-level orderings (a sort over the global batch) whose per-sample result each rank takes back for its own
    rows: one collective pair, the owner travelling as an extra column.

    Example:
        >>> all_gather_rows(torch.ones(3, 2))[1] is None  # one process
        True
    """
    _count()
    if not is_distributed():
        return rows, None
    owner = rows.new_full((rows.shape[0], 1), float(rank()))
    packed = all_gather_with_grad(torch.cat([rows, owner], dim=1))
    return packed[:, :-1], packed[:, -1].detach() == rank()


def all_gather_values(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` flattened and concatenated from every data-parallel rank in rank order (sizes may differ; detached,
    no gradient). Every rank must call it (two collectives: the sizes, then the values). Flattened identity without a
    process group.

    Example:
        >>> all_gather_values(torch.ones(2, 2)).shape  # one process
        torch.Size([4])
    """
    _count()
    flat = tensor.detach().reshape(-1)
    if not is_distributed():
        return flat
    return _AllGatherWithGrad.apply(flat)


class _AllReduceSumWithGrad(torch.autograd.Function):
    """All-reduce (sum) whose backward also all-reduces (sums) the upstream gradient over ranks."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.group = _DATA_PARALLEL_GROUP
        out = tensor.contiguous().clone()
        dist.all_reduce(out, op=dist.ReduceOp.SUM, group=ctx.group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        return grad


def all_reduce_sum_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    r"""Sum ``tensor`` over the data-parallel group, keeping gradients (for set-level losses: soft TP/FP/FN counts).

    Every rank gets :math:`S = \sum_r s_r` and computes the same set-level loss :math:`f(S)`. The backward sums the
    upstream gradient over ranks, so rank ``r`` receives :math:`k f'(S)\,\partial s_r/\partial\theta`; DDP's average
    over the ``k`` ranks is then :math:`f'(S)\,\partial S/\partial\theta`: the gradient of one process on the
    concatenated batch. Add :math:`f(S)` to each rank's loss **as is** (no ``k`` factor). Every rank must call
    ``backward`` (as under DDP). Identity without a process group; no host sync.

    Example:
        >>> all_reduce_sum_with_grad(torch.tensor([1.0, 2.0]))  # one process: unchanged
        tensor([1., 2.])
    """
    _count()
    if not is_distributed():
        return tensor
    return _AllReduceSumWithGrad.apply(tensor)
