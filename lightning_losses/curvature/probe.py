"""The probe batch of :class:`~lightning_losses.CurvatureMonitor`: row selection, sums over ranks, and a function of a
module wrapped as a module (for ``torch.func.functional_call``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lightning_losses import distributed

__all__ = ["FunctionModule", "num_rows", "rows", "sum_over_ranks"]


def rows(batch: Any, select: Callable[[torch.Tensor], torch.Tensor], keep_scalars: bool = False) -> Any:
    """``batch`` with ``select`` applied to every tensor that has the batch's leading dimension (others dropped;
    ``keep_scalars``: 0-d tensors too, as one sample's entries are inside ``vmap``)."""

    def keep(v: Any) -> bool:
        return isinstance(v, torch.Tensor) and (keep_scalars or v.ndim > 0)

    if isinstance(batch, torch.Tensor):
        return select(batch)
    if isinstance(batch, Mapping):
        return {k: select(v) for k, v in batch.items() if keep(v)}
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        return [select(v) for v in batch if keep(v)]
    raise TypeError(f"CurvatureMonitor cannot take a probe from a batch of type {type(batch).__name__}")


def num_rows(batch: Any) -> int:
    """Rows of a probe batch (the leading dimension of its first tensor)."""
    first = (
        batch if isinstance(batch, torch.Tensor) else next(iter(batch.values() if isinstance(batch, dict) else batch))
    )
    return int(first.shape[0])


def sum_over_ranks(tensors: Sequence[torch.Tensor], op: Any = None) -> list[torch.Tensor]:
    """The tensors summed (or ``op``-reduced) over the data-parallel group, in one flat collective."""
    if not distributed.is_distributed():
        return list(tensors)
    flat = torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
    dist.all_reduce(flat, op=op or dist.ReduceOp.SUM, group=distributed.data_parallel_group())
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].reshape(t.shape).to(t.dtype))
        start += t.numel()
    return out


class FunctionModule(nn.Module):
    """``fn(module, batch)`` as a module, so ``torch.func.functional_call`` can swap ``module``'s parameters."""

    def __init__(self, module: nn.Module, fn: Callable[[Any, Any], torch.Tensor]) -> None:
        super().__init__()
        self.module, self.fn = module, fn

    def forward(self, batch: Any) -> torch.Tensor:
        return self.fn(self.module, batch)
