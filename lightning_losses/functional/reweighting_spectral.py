r"""Spectral (sorted-loss) weight formulas: spectral risk measures, CVaR, average top-k and loss truncation.

Each weight depends on the sample's rank in the batch's ascending loss order (stable: ties by position). Conventions
(detached global-batch losses, ``mask``) are described in :mod:`lightning_losses.functional.reweighting`, which
re-exports every function here.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from lightning_losses.functional.reweighting_loss_based import check_losses, check_mask

__all__ = ["cvar_weights", "sorted_weights", "spectral_risk_weights", "top_k_weights", "truncation_weights"]


def _ascending_ranks(losses: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of every sample in ascending loss order with masked samples first (stable: ties by position), and the
    number of masked samples (the rank of the first counted one)."""
    order = torch.sort(losses.masked_fill(~mask, float("-inf")), stable=True).indices
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(losses.numel(), device=losses.device)
    return ranks, (~mask).sum()


def sorted_weights(
    losses: torch.Tensor, cdf: Callable[[torch.Tensor], torch.Tensor], mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Spectral (sorted-loss) weights from the cumulative spectrum :math:`S` on quantile levels :math:`[0, 1]`.

    The sample of ascending rank :math:`j \in \{0..N-1\}` gets :math:`N\,(S(\frac{j+1}{N}) - S(\frac{j}{N})) / S(1)`.
    Ties are broken by position (stable sort), so the result is deterministic. With ``mask``, ranks and :math:`N`
    count the unmasked samples only.
    """
    check_losses(losses)
    mask = check_mask(mask, losses)
    n = losses.numel()
    if n == 0:
        return losses.clone()
    if mask is not None:
        ranks, n_masked = _ascending_ranks(losses, mask)
        n_valid = (n - n_masked).to(torch.float64)
        j = ranks.to(torch.float64) - n_masked.to(torch.float64)  # rank among the counted samples (< 0: masked)
        safe = n_valid.clamp_min(1.0)
        lo, hi = (j / safe).clamp(0.0, 1.0), ((j + 1.0) / safe).clamp(0.0, 1.0)
        total = cdf(torch.ones(1, dtype=torch.float64, device=losses.device))[0]
        return torch.where(j >= 0, (cdf(hi) - cdf(lo)) * (n_valid / total), 0.0).to(losses.dtype)
    levels = torch.arange(n + 1, dtype=torch.float64, device=losses.device) / n
    cum = cdf(levels)
    per_rank = (cum[1:] - cum[:-1]) * (n / cum[-1])
    order = torch.sort(losses, stable=True).indices
    weights = torch.empty(n, dtype=torch.float64, device=losses.device)
    weights[order] = per_rank
    return weights.to(losses.dtype)


def spectral_risk_weights(
    losses: torch.Tensor, spectrum: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Weights of a spectral risk measure; ``spectrum`` is a density on quantile levels, in ``m`` equal bins.

    Bin ``b`` covers quantile levels :math:`[b/m, (b+1)/m)` (bin 0 = lowest losses). When :math:`N = m` the weights
    are ``spectrum`` (rescaled to mean 1) assigned in ascending loss order, as in Prospect (Mehta et al., ICLR
    2024); for other batch sizes the density is integrated over each rank's quantile interval.

    Example:
        >>> spectral_risk_weights(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([0.0, 1.0, 2.0]))
        tensor([2., 0., 1.])
    """
    spectrum = spectrum.to(device=losses.device, dtype=torch.float64)
    m = spectrum.numel()
    cum = torch.cat([spectrum.new_zeros(1), spectrum.cumsum(0)])

    def cdf(u: torch.Tensor) -> torch.Tensor:
        x = u * m
        j = x.floor().clamp(max=m - 1).long()
        return cum[j] + (x - j) * spectrum[j]

    return sorted_weights(losses, cdf, mask)


def cvar_weights(losses: torch.Tensor, alpha: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""CVaR at level :math:`\alpha`: uniform weight on the top :math:`\alpha` fraction of losses, 0 elsewhere.

    Spectrum density :math:`1/\alpha` on :math:`[1-\alpha, 1]`; when :math:`\alpha N` is not an integer the sample
    straddling the threshold gets the fractional share (Prospect's superquantile spectrum). Mean 1.

    Example:
        >>> cvar_weights(torch.tensor([0.1, 0.4, 0.3, 0.2]), alpha=0.5)
        tensor([0., 2., 2., 0.])
    """
    return sorted_weights(losses, lambda u: (u - (1.0 - alpha)).clamp_min(0.0) / alpha, mask)


def top_k_weights(losses: torch.Tensor, k: int, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Average top-k loss: weight :math:`N/k` on the ``k`` largest losses (all samples when :math:`k \ge N`).

    Example:
        >>> top_k_weights(torch.tensor([0.1, 0.4, 0.3, 0.2]), k=1)
        tensor([0., 4., 0., 0.])
    """
    check_losses(losses)
    mask = check_mask(mask, losses)
    n = losses.numel()
    if mask is not None:
        ranks, n_masked = _ascending_ranks(losses, mask)
        n_valid = n - n_masked
        k_eff = n_valid.clamp(max=k)
        value = n_valid.to(losses.dtype) / k_eff.clamp_min(1).to(losses.dtype)
        return torch.where((ranks >= n - k_eff) & mask, value, 0.0).to(losses.dtype)
    k = min(k, n)
    weights = torch.zeros_like(losses)
    if k:
        weights[torch.sort(losses, stable=True).indices[n - k :]] = n / k
    return weights


def truncation_weights(losses: torch.Tensor, drop_fraction: float, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Loss truncation: weight 0 on the :math:`\lfloor fN \rfloor` largest losses, 1 elsewhere (not mean 1).

    Example:
        >>> truncation_weights(torch.tensor([0.1, 0.9, 0.5, 0.2]), drop_fraction=0.25)
        tensor([1., 0., 1., 1.])
    """
    check_losses(losses)
    mask = check_mask(mask, losses)
    n = losses.numel()
    if mask is not None:
        ranks, n_masked = _ascending_ranks(losses, mask)
        drop = torch.floor(drop_fraction * (n - n_masked).to(torch.float64) + 1e-9)
        return (mask & (ranks < n - drop)).to(losses.dtype)
    drop = int(math.floor(drop_fraction * n + 1e-9))
    weights = torch.ones_like(losses)
    if drop:
        order = torch.sort(losses, stable=True).indices
        weights[order[n - drop :]] = 0.0
    return weights
