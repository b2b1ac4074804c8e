r"""The one place where per-sample losses become a scalar: weighted mean over the **global** batch.

.. math::
    L_{\text{rank}} = k \cdot \frac{\sum_{i \in \text{rank}} w_i \ell_i}{\sum_{\text{all ranks}} w_i}

where ``k`` is the world size. DDP averages gradients over the ``k`` ranks, so the effective gradient is that of
:math:`\sum_{\text{all}} w_i\ell_i / \sum_{\text{all}} w_i`: one process on the concatenated batch, whatever the
per-rank batch sizes. All global statistics (weight sum, logging sums) travel in **one** packed ``all_reduce`` per
call: the documented sync point of a training step.
"""

from __future__ import annotations

import torch

from lightning_losses.distributed import global_sum, is_distributed, world_size

__all__ = ["weighted_mean"]


def weighted_mean(
    per_sample: torch.Tensor, weights: torch.Tensor | None, stats: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Globally normalised weighted mean of ``per_sample`` losses.

    Args:
        per_sample: ``[N]`` losses (with gradient).
        weights: ``[N]`` non-negative weights (detached); masked samples carry weight 0. ``None``: every sample
            weighs 1 (one process: the mean, without building, summing and normalising a weight vector).
        stats: optional ``[S]`` extra local sums to reduce in the same collective (for logging).

    Returns:
        ``(loss, value, global_stats)``: the rank's share to backpropagate, the global weighted mean (detached, equal
        on every rank) and the globally summed ``stats`` (empty when none were given).

    Example:
        >>> loss, value, _ = weighted_mean(torch.tensor([1.0, 3.0]), torch.tensor([1.0, 3.0]))
        >>> float(loss), float(value)
        (2.5, 2.5)
    """
    dtype = per_sample.dtype
    count = per_sample.shape[0]
    if weights is None:
        if count and not is_distributed():
            # the normalised unit weights in one fill: `dot` (one autograd node, whose backward is one multiply) is
            # cheaper than `mean` (sum, divide) and gives the same value as the weighted path
            loss = torch.dot(per_sample, per_sample.new_full((count,), 1.0 / count))
            value = loss.detach()
            return loss, value, value.new_empty(0) if stats is None else stats.detach().to(dtype)
        weights = torch.ones_like(per_sample)
    weights = weights.detach()
    if weights.dtype != dtype:
        weights = weights.to(dtype)
    tiny = torch.finfo(dtype).tiny
    if not is_distributed():  # the local sums are the global ones: nothing to pack for a collective
        # one autograd node, whose backward hands `per_sample` a contiguous gradient (the normalised weights)
        loss = torch.dot(per_sample, weights / weights.sum().clamp_min(tiny))
        return loss, loss.detach(), weights[:0] if stats is None else stats.detach().to(dtype)
    packed = torch.stack([weights.sum(), torch.dot(per_sample.detach(), weights)])
    if stats is not None:
        packed = torch.cat([packed, stats.detach().to(dtype)])
    reduced = global_sum(packed)
    total_weight = reduced[0].clamp_min(tiny)
    loss = torch.dot(per_sample, weights / (total_weight / world_size()))
    return loss, reduced[1] / total_weight, reduced[2:]
