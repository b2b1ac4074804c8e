r"""LookSAM (Liu et al., CVPR 2022) around the engine: the component :math:`g_v` of the SAM gradient orthogonal to
:math:`g`, stored on perturbed steps, and the plain steps in between that add :math:`\alpha\,\|g\|/\|g_v\|\,g_v`
(:class:`~lightning_losses.perturbation.Perturbation` with ``reuse_alpha``)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_losses import distributed
from lightning_losses.perturbation import functional as F
from lightning_losses.perturbation.sharding import ShardSum, grad_shard, shard_sum_for

__all__ = ["extrapolate", "mean_over_ranks", "orthogonal"]


def orthogonal(
    first_grads: list[Tensor], params: list[Tensor], inv_scale: Tensor | None, shard_sum: ShardSum | None = None
) -> list[Tensor]:
    """:math:`g_v` from the ascent gradient at :math:`w` and the descent gradient now in ``.grad`` (unscaled by
    ``inv_scale``), averaged over ranks so that every replica applies the same update. Sharded parameters
    (``shard_sum``): local shards of gradients already reduced over the data-parallel group, kept as they are."""
    final = [grad_shard(p).detach() for p in params]
    if inv_scale is not None:
        final = torch._foreach_mul(final, inv_scale.to(final[0].device))
    stored = F.looksam_orthogonal(first_grads, final, shard_sum=shard_sum)
    return stored if shard_sum is not None else mean_over_ranks(stored)


def extrapolate(params: list[Tensor], stored: list[Tensor], alpha: float, eps: float) -> None:
    """Replace ``.grad`` of ``params`` by LookSAM's cheap step with the stored :math:`g_v` (when they match)."""
    with_grad = [p for p in params if p.grad is not None]
    if len(with_grad) != len(stored or []):
        return
    grads = [grad_shard(p) for p in with_grad]
    stored = [o.to(g.device, g.dtype) for o, g in zip(stored, grads)]
    with torch.no_grad():
        new = F.looksam_extrapolate(grads, stored, alpha, eps, shard_sum_for(with_grad))
        torch._foreach_copy_(grads, new)


def mean_over_ranks(tensors: list[Tensor]) -> list[Tensor]:
    """Average ``tensors`` over ranks (one all-reduce); unchanged outside distributed runs."""
    if not distributed.is_distributed():
        return tensors
    flat = torch.cat([t.reshape(-1) for t in tensors])
    flat = distributed.global_mean(flat)
    return [c.view_as(t) for c, t in zip(flat.split([t.numel() for t in tensors]), tensors)]
