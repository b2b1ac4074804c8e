"""Sharded parameters (FSDP2 / tensor parallelism): the engine works on local shards.

A parameter that is a ``torch.distributed.tensor.DTensor`` is perturbed through its local shard
(:func:`local`): every element-wise operation is local, and every norm or inner product is a sum of local pieces
all-reduced over the groups that shard the tensor (:class:`ShardSum`: the mesh dimensions whose placement is a
``Shard``; a ``Replicate`` dimension already holds the whole value and is not summed over). A gradient laid out
otherwise than its parameter (a ``Partial`` sum under tensor parallelism) is redistributed to the parameter's layout
before it is read (:func:`grad_shard`). Plain tensors (one
process, DDP) pass through unchanged and cost nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "fsdp_units",
    "reshard_all",
    "SUPPORTED_STRATEGIES",
    "ShardSum",
    "check_strategy",
    "grad_shard",
    "is_sharded",
    "local",
    "shard_sum_for",
    "to_global",
]

try:  # torch >= 2.4 exposes DTensor publicly
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - builds without distributed
    DTensor = None  # type: ignore[assignment,misc]


def is_sharded(tensor: Any) -> bool:
    """Whether ``tensor`` is a ``DTensor`` (a parameter or gradient of FSDP2 / tensor parallelism)."""
    return DTensor is not None and isinstance(tensor, DTensor)


def local(tensor: Tensor) -> Tensor:
    """This process's shard of ``tensor`` (the tensor itself when it is not a ``DTensor``); shares its storage."""
    return tensor.to_local() if is_sharded(tensor) else tensor


def grad_shard(param: Tensor) -> Tensor | None:
    """This process's shard of ``param.grad``, laid out as ``param`` (``None`` without a gradient).

    Under tensor parallelism a gradient may carry another layout than its parameter: a replicated weight used on
    sharded activations gets a ``Partial`` (pending sum) gradient, whose local piece is not the gradient. Such a
    gradient is redistributed to the parameter's placements first (one all-reduce or reduce-scatter, which the
    optimizer's update would otherwise do) and stored back in ``param.grad``.
    """
    grad = param.grad
    if grad is None:
        return None
    if is_sharded(grad) and is_sharded(param) and tuple(grad.placements) != tuple(param.placements):
        grad = grad.redistribute(param.device_mesh, param.placements)
        param.grad = grad
    return local(grad)


def fsdp_units(module: torch.nn.Module) -> list[Any]:
    """The FSDP2 units (``fully_shard`` modules) in ``module``; empty without FSDP2."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch without FSDP2
        return []
    return [unit for unit in module.modules() if isinstance(unit, FSDPModule)]


def reshard_all(module: torch.nn.Module, units: Sequence[Any] | None = None) -> None:
    """Reshard every FSDP2 unit of ``module`` (no-op for units already sharded, and without FSDP2); ``units``: the
    result of :func:`fsdp_units`, for a caller that keeps it (the module tree is walked once, not at every step).

    An evaluation pass leaves the root unit unsharded (FSDP2 keeps the root's gathered parameters for the next
    backward, which an inference pass never runs), and an unsharded unit registers its *unsharded* parameters on the
    module: the perturbation must see, save and move the sharded ones. Called before a training step reads the
    module's parameters; the next forward gathers them again (once per evaluation, not per step).
    """
    for unit in fsdp_units(module) if units is None else units:
        unit.reshard()


def to_global(shard: Tensor, like: Tensor) -> Tensor:
    """``shard`` (a local piece of ``like``) as a ``DTensor`` laid out as ``like``; ``shard`` itself otherwise."""
    if not is_sharded(like):
        return shard
    return DTensor.from_local(shard, like.device_mesh, like.placements, shape=like.shape, stride=like.stride())


def _shard_groups(tensor: Tensor) -> tuple[Any, ...]:
    if not is_sharded(tensor):
        return ()
    if any(p.is_partial() for p in tensor.placements):
        from lightning_losses.errors import ConfigurationError

        raise ConfigurationError(
            f"a perturbed tensor must be laid out as `Shard` or `Replicate` on every mesh dimension, got placements "
            f"{tuple(tensor.placements)}: a `Partial` piece is not a part of the tensor (redistribute it first)"
        )
    mesh = tensor.device_mesh
    return tuple(mesh.get_group(dim) for dim, p in enumerate(tensor.placements) if p.is_shard())


class ShardSum:
    """Sum per-tensor local values (sums of squares, inner products) over the groups that shard each tensor.

    Called with a tensor holding one local value per tensor (in the order given to :func:`shard_sum_for`; a row of
    several values per tensor is summed alike), it returns the per-tensor totals: one ``all_reduce`` per distinct
    set of shard groups (one for FSDP2 on a 1-D mesh), no host sync.
    """

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        keyed: dict[tuple[int, ...], tuple[tuple[Any, ...], list[int]]] = {}
        for i, t in enumerate(tensors):
            groups = _shard_groups(t)
            if groups:
                keyed.setdefault(tuple(id(g) for g in groups), (groups, []))[1].append(i)
        self.n = len(tensors)
        self.blocks = list(keyed.values())

    def __call__(self, values: Tensor) -> Tensor:
        if values.shape[0] != self.n:
            raise ValueError(f"ShardSum expects {self.n} per-tensor values, got {tuple(values.shape)}")
        out = values.clone()
        for groups, indices in self.blocks:
            if len(indices) == self.n:
                part = out
            else:
                part = out[torch.tensor(indices, device=out.device)].contiguous()
            for group in groups:
                dist.all_reduce(part, op=dist.ReduceOp.SUM, group=group)
            if part is not out:
                out[torch.tensor(indices, device=out.device)] = part
        return out


def shard_sum_for(tensors: Sequence[Tensor]) -> ShardSum | None:
    """A :class:`ShardSum` for ``tensors`` when one of them is sharded, ``None`` (nothing to reduce) otherwise."""
    if not any(is_sharded(t) for t in tensors):
        return None
    return ShardSum(tensors)


#: the strategies the perturbation callbacks support, as the errors name them
SUPPORTED_STRATEGIES = (
    "one device (`SingleDeviceStrategy`), DDP (`DDPStrategy`: `ddp`, `ddp_spawn`, `ddp_fork`, ...) and FSDP2 / "
    "tensor parallelism (`ModelParallelStrategy`, with `sync_ascent=True`)"
)


def check_strategy(strategy: Any, what: str, sync_ascent: bool) -> None:
    """Raise a :class:`~lightning_losses.errors.ConfigurationError` naming ``strategy`` when the perturbation
    ``what`` cannot run exactly under it.

    As :func:`lightning_losses.strategies.check_strategy` (DeepSpeed owns the optimizer step, so the closure the
    perturbation wraps never reaches it; FSDP1 perturbs flat parameters whose norms are not the model's; other
    strategies are untested), and under ``ModelParallelStrategy`` the gradients are reduced over the data-parallel
    group in ``backward`` and each rank holds a shard of every weight, so there is no per-replica ascent:
    ``sync_ascent`` must be ``True``.
    """
    from lightning.pytorch.strategies import ModelParallelStrategy

    from lightning_losses.errors import ConfigurationError
    from lightning_losses.strategies import check_strategy as check_supported

    deepspeed = "DeepSpeed owns the optimizer step, so the perturbed passes cannot run inside it"
    check_supported(strategy, what, supported=SUPPORTED_STRATEGIES, deepspeed=deepspeed)
    if isinstance(strategy, ModelParallelStrategy) and not sync_ascent:
        raise ConfigurationError(
            f"{what} under `{type(strategy).__name__}` needs `sync_ascent=True`, got sync_ascent=False: FSDP2 reduces "
            f"the gradients over the data-parallel group in `backward` and each rank holds only a shard of every "
            f"weight, so a per-replica ascent cannot be formed"
        )
