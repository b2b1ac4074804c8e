r"""Norms, scalings and the ball projection behind :mod:`~lightning_losses.perturbation.functional`, on lists of
tensors.

Norms are ``"global"`` (one L2 norm over all tensors), ``"per_tensor"`` or ``"layer_relative"`` (each tensor on its
own; the radius of the latter is relative to :math:`\|w_l\|`). All functions are pure unless asked to work in place,
use ``torch._foreach_*`` kernels and never synchronise with the host; with a ``shard_sum``
(:class:`~lightning_losses.perturbation.sharding.ShardSum`) the tensors are local shards and every norm is that of the
full tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "RADIUS_MODES",
    "SCALINGS",
    "ShardSumFn",
    "ball_radii",
    "delta_grad_cosine",
    "delta_grad_statistics",
    "foreach_mul",
    "global_norm",
    "mode_norms",
    "project_to_ball",
    "scale_by",
    "scaling_factors",
    "tensor_norms",
]

RADIUS_MODES = ("global", "per_tensor", "layer_relative")
SCALINGS = (None, "adaptive", "adaptive_p2")


ShardSumFn = Callable[[Tensor], Tensor]  #: per-tensor local sums -> per-tensor totals over the shard groups


def tensor_norms(tensors: Sequence[Tensor], shard_sum: ShardSumFn | None = None) -> Tensor:
    """L2 norm of each tensor, stacked into a 1-D float32 (or float64) tensor; with ``shard_sum`` the tensors are
    local shards and each norm is that of the full tensor (local sums of squares summed over its shards)."""
    if not tensors:
        return torch.zeros(0)
    norms = torch._foreach_norm(list(tensors))
    dtypes = {n.dtype for n in norms}
    dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    stacked = torch.stack(norms if dtypes == {dtype} else [n.to(dtype) for n in norms])  # no casts when all agree
    return stacked if shard_sum is None else shard_sum(stacked.square()).sqrt()


def global_norm(tensors: Sequence[Tensor], shard_sum: ShardSumFn | None = None) -> Tensor:
    r"""One L2 norm over all tensors, :math:`\sqrt{\sum_l \|t_l\|^2}` (0-d tensor; ``shard_sum``: of local shards).

    Example:
        >>> float(global_norm([torch.tensor([3.0]), torch.tensor([4.0])]))
        5.0
    """
    return torch.linalg.vector_norm(tensor_norms(tensors, shard_sum))


def delta_grad_statistics(
    shards: Sequence[Tensor],
    saved: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    shard_sum: ShardSumFn | None = None,
    delta_norm: Tensor | None = None,
    delta: Sequence[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Cosine between the perturbation :math:`\delta` = ``shards - saved`` and ``grads`` (the gradient at
    :math:`w + \delta`) (float32 0-d), and the L2 norm of ``grads`` (0-d, float64 if a tensor is, else float32).

    .. math:: \cos = \frac{\sum_l \langle \delta_l, g_l\rangle}{\|\delta\|\,\|g\|}

    For SAM, whose :math:`\delta` lies along the gradient at :math:`w`, this is the cosine between the gradients at
    :math:`w` and :math:`w + \delta`. Reuses the step's tensors: one tensor-sized temporary at a time
    (:math:`\delta_l`), no parameter-sized copy; the cosine is invariant to a gradient scale, the norm is not (divide
    it out). A caller that already has :math:`\|\delta\|` (the engine: its ``norm`` statistic) passes it as
    ``delta_norm``, and only the dot products and the gradient's norms are computed; one that kept :math:`\delta`
    itself passes it as ``delta`` (no subtraction: a kernel and a temporary per tensor less). Sharded tensors (FSDP2):
    ``shards``, ``saved`` and ``grads`` are the local pieces and ``shard_sum`` sums the per-tensor sums over the groups
    that shard each tensor (one collective). A tensor without gradient is left out (both NaN when none has one).

    Example:
        >>> cos, norm = delta_grad_statistics([torch.ones(2)], [torch.zeros(2)], [torch.tensor([0.0, 2.0])])
        >>> cos, norm
        (tensor(0.7071), tensor(2.))
    """
    if all(g is None for g in grads):
        return torch.tensor(float("nan")), torch.tensor(float("nan"))
    # per tensor of the local piece: <d, g>, |g|^2 (and |d|^2), all dot products (one kernel, warm after the first:
    # a logging step runs these after the backward, when each new kernel costs most); zeros without gradient
    dots: list[Tensor] = []
    grad_squares: list[Tensor] = []
    squares: list[Tensor] = []
    deltas = [None] * len(shards) if delta is None else delta
    for x, s, g, d in zip(shards, saved, grads, deltas):  # the engine's shards, saved copies and .grad need no detach
        if g is None:
            zero = x.new_zeros((), dtype=torch.float32)
            dots.append(zero)
            grad_squares.append(zero)
            squares.append(zero)
            continue
        full = (torch.float32, torch.float64)  # half precision: the difference and the sums in float32
        if d is None:  # w + delta - w (a caller's own tensors: no graph)
            x = x.detach() if x.requires_grad else x
            d = x - s if x.dtype in full else x.float() - s.float()
        elif d.dtype not in full:
            d = d.float()
        g = g.detach() if g.requires_grad else g
        d, g = d.reshape(-1), g.reshape(-1)
        g = g if g.dtype == d.dtype else g.to(d.dtype)
        dots.append(torch.dot(d, g))
        grad_squares.append(torch.dot(g, g))
        if delta_norm is None:
            squares.append(torch.dot(d, d))
    columns = dots + grad_squares + (squares if delta_norm is None else [])
    # [tensors, columns] (one stack, promoted to float64 if a tensor is)
    terms = torch.stack(columns).view(len(columns) // len(dots), len(dots)).T
    if shard_sum is not None:  # one all-reduce for every column
        terms = shard_sum(terms.contiguous())
    sums = terms.sum(0)
    dtype = sums.dtype
    grad_norm = sums[1].sqrt()
    dnorm = sums[2].sqrt() if delta_norm is None else delta_norm.to(dtype)
    return (sums[0] / (dnorm * grad_norm).clamp_min(torch.finfo(dtype).tiny)).float(), grad_norm


def delta_grad_cosine(
    shards: Sequence[Tensor],
    saved: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    shard_sum: ShardSumFn | None = None,
) -> Tensor:
    r"""Cosine between the perturbation :math:`\delta` = ``shards - saved`` and ``grads`` (the gradient at
    :math:`w + \delta`), float32 0-d: the first value of :func:`delta_grad_statistics` (see there).

    Example:
        >>> delta_grad_cosine([torch.tensor([1.0, 1.0])], [torch.tensor([0.0, 0.0])], [torch.tensor([0.0, 2.0])])
        tensor(0.7071)
    """
    return delta_grad_statistics(shards, saved, grads, shard_sum)[0]


def scaling_factors(
    params: Sequence[Tensor], scaling: str | None, eta: float = 0.0, scale_mask: Sequence[bool] | None = None
) -> list[Tensor] | None:
    r"""The element-wise scaling :math:`T` (``None`` for plain SAM).

    ``"adaptive"``: :math:`T = |w| + \eta` where ``scale_mask`` is True (the ASAM authors apply it to parameters whose
    name contains ``weight``), :math:`T = 1` elsewhere. ``"adaptive_p2"``: :math:`T = |w|` on every tensor.
    """
    if scaling is None:
        return None
    absolute = list(torch._foreach_abs(list(params)))
    if scaling == "adaptive_p2":
        return absolute
    if scaling != "adaptive":
        raise ValueError(f"`scaling` must be one of {SCALINGS}, got {scaling!r}")
    torch._foreach_add_(absolute, eta)
    if scale_mask is not None:
        absolute = [a if m else torch.ones_like(a) for a, m in zip(absolute, scale_mask)]
    return absolute


def ball_radii(radius: float | Tensor, mode: str, params: Sequence[Tensor], shard_sum: ShardSumFn | None) -> Tensor:
    r"""The ball's radius :math:`R`: one per tensor (:math:`R\,\|w_l\|`) for ``"layer_relative"``, else a scalar."""
    if mode == "layer_relative":
        return tensor_norms(params, shard_sum) * radius
    return torch.as_tensor(radius, dtype=torch.float64 if params and params[0].dtype == torch.float64 else None)


def foreach_mul(tensors: list[Tensor], other: Any, inplace: bool) -> list[Tensor]:
    """``tensors * other`` (a list of tensors or a scalar), written into ``tensors`` when ``inplace``."""
    if inplace:
        torch._foreach_mul_(tensors, other)
        return tensors
    return list(torch._foreach_mul(tensors, other))


def scale_by(tensors: list[Tensor], factors: Tensor, mode: str, inplace: bool = False) -> list[Tensor]:
    """Multiply by a scalar (``global``) or one factor per tensor (into ``tensors`` themselves if ``inplace``)."""
    if mode == "global":
        return foreach_mul(tensors, factors.to(tensors[0].dtype), inplace)
    return foreach_mul(tensors, [f.to(t.dtype) for f, t in zip(factors.unbind(0), tensors)], inplace)


def mode_norms(tensors: list[Tensor], mode: str, shard_sum: ShardSumFn | None = None) -> Tensor:
    """One norm over all tensors (``"global"``, 0-d) or one per tensor (1-D)."""
    return global_norm(tensors, shard_sum) if mode == "global" else tensor_norms(tensors, shard_sum)


def project_to_ball(
    delta: list[Tensor],
    radii: Tensor,
    mode: str,
    scale: list[Tensor] | None,
    eps: float,
    inplace: bool = False,
    norms: Tensor | None = None,
    shard_sum: ShardSumFn | None = None,
) -> list[Tensor]:
    r"""Scale ``delta`` by :math:`\min(1, R / (\|T^{-1}\delta\| + \epsilon))` (globally or per tensor); ``norms``
    are those of :math:`T^{-1}\delta` when the caller knows them."""
    if norms is None:
        measured = delta
        if scale is not None:
            measured = [torch.nan_to_num(d / t, nan=0.0, posinf=0.0, neginf=0.0) for d, t in zip(delta, scale)]
        norms = mode_norms(measured, mode, shard_sum)
    factors = torch.clamp(radii / (norms + eps), max=1.0)
    return scale_by(delta, factors, mode, inplace)
