r"""Loss-based weight formulas: mean-1 softmax weights of the (min-max normalised) batch losses.

KL-regularised DRO (:func:`loss_softmax_weights`) and the LinUpper / Quadratic / Extremes shapes of Sow et al.
(ICLR 2025), plus the input checks shared with :mod:`lightning_losses.functional.reweighting_spectral`. Conventions
(detached global-batch losses, ``mask``) are described in :mod:`lightning_losses.functional.reweighting`, which
re-exports every public function here.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = [
    "check_losses",
    "check_mask",
    "extremes_weights",
    "lin_upper_weights",
    "loss_softmax_weights",
    "minmax_normalise",
    "quadratic_weights",
    "softmax_weights",
]

_NORM_EPS = 1e-6


def check_losses(losses: torch.Tensor) -> None:
    if not isinstance(losses, torch.Tensor):
        raise TypeError(f"`losses` must be a torch.Tensor, got {type(losses).__name__}")
    if losses.ndim != 1 or not losses.is_floating_point():
        raise ValueError(f"`losses` must be a floating tensor of shape [N], got {losses.dtype} {list(losses.shape)}")


def check_mask(mask: torch.Tensor | None, losses: torch.Tensor) -> torch.Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.shape != losses.shape:
        got = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"`mask` must be a boolean tensor of shape {list(losses.shape)}, got {got}")
    return mask.to(torch.bool)


def softmax_weights(scores: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Mean-1 softmax weights :math:`w_i = N\,\mathrm{softmax}(s/r)_i` (max-shifted, so overflow-free).

    With ``mask``: the softmax runs over the counted samples only, :math:`N` is their number, masked ones get 0.

    Example:
        >>> import math
        >>> softmax_weights(torch.tensor([0.0, math.log(3.0)]))
        tensor([0.5000, 1.5000])
        >>> softmax_weights(torch.tensor([0.0, 9.0, math.log(3.0)]), mask=torch.tensor([True, False, True]))
        tensor([0.5000, 0.0000, 1.5000])
    """
    check_losses(scores)
    mask = check_mask(mask, scores)
    if scores.numel() == 0:
        return scores.clone()
    if mask is None:
        return torch.softmax(scores / temperature, dim=0) * scores.numel()
    z = (scores / temperature).masked_fill(~mask, float("-inf"))
    return (torch.softmax(z, dim=0) * mask.sum().to(scores.dtype)).masked_fill(~mask, 0.0)


def loss_softmax_weights(
    losses: torch.Tensor, temperature: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""KL-regularised DRO weights :math:`w_i \propto \exp(\ell_i / r)`, mean 1.

    The closed form of :math:`\max_{w \in \Delta} \sum_i w_i \ell_i - r\,\mathrm{KL}(w \,\|\, u)` (Sow et al., ICLR
    2024, "Doubly Robust Instance-Reweighted Adversarial Training"). Small ``r`` concentrates on the hardest samples.

    Example:
        >>> loss_softmax_weights(torch.tensor([1.0, 1.0, 1.0, 1.0]), temperature=0.5)
        tensor([1., 1., 1., 1.])
    """
    return softmax_weights(losses, temperature, mask)


def minmax_normalise(losses: torch.Tensor, delta: float = 1.0, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Map losses onto :math:`[-\delta, \delta]` with the batch min and max (Sow et al., ICLR 2025).

    .. math:: \tilde\ell = \frac{2\delta\,\ell}{\ell_{\max} - \ell_{\min}} - \frac{\delta(\ell_{\max} + \ell_{\min})}
        {\ell_{\max} - \ell_{\min}}

    The range is clamped below at ``1e-6``, so a constant batch maps to 0 (uniform weights downstream). With
    ``mask``, min and max are taken over the counted samples and masked ones map to 0.

    Example:
        >>> minmax_normalise(torch.tensor([0.0, 1.0, 2.0]))
        tensor([-1.,  0.,  1.])
    """
    check_losses(losses)
    mask = check_mask(mask, losses)
    if losses.numel() == 0:
        return losses.clone()
    if mask is None:
        lo, hi = losses.min(), losses.max()
    else:
        lo, hi = losses.masked_fill(~mask, float("inf")).min(), losses.masked_fill(~mask, float("-inf")).max()
    span = (hi - lo).clamp_min(_NORM_EPS)
    out = 2.0 * delta * losses / span - delta * (hi + lo) / span
    return out if mask is None else out.masked_fill(~mask, 0.0)


def _loss_based(losses, g: Callable[[torch.Tensor], torch.Tensor], delta: float, temperature: float, mask=None):
    return softmax_weights(g(minmax_normalise(losses, delta, mask)), temperature, mask)


def lin_upper_weights(
    losses: torch.Tensor, delta: float = 1.0, temperature: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""LinUpper: :math:`g = \min(\tilde\ell + \delta, \delta)`, :math:`w = N\,\mathrm{softmax}(g / r)`.

    Low losses get small weights; every loss above the batch midpoint gets the same (largest) weight.

    Example:
        >>> lin_upper_weights(torch.tensor([0.0, 1.0, 2.0])).round(decimals=4)
        tensor([0.4661, 1.2670, 1.2670])
    """
    return _loss_based(losses, lambda x: torch.clamp(x + delta, max=delta), delta, temperature, mask)


def quadratic_weights(
    losses: torch.Tensor, delta: float = 1.0, temperature: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Quadratic: :math:`g = 1 - \tilde\ell^2/\delta^2`; favours medium losses, suppresses both extremes.

    Example:
        >>> quadratic_weights(torch.tensor([0.0, 1.0, 2.0])).round(decimals=4)
        tensor([0.6358, 1.7284, 0.6358])
    """
    return _loss_based(losses, lambda x: 1.0 - x.square() / delta**2, delta, temperature, mask)


def extremes_weights(
    losses: torch.Tensor, delta: float = 1.0, temperature: float = 1.0, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Extremes: :math:`g = |\tilde\ell|`; favours both tails.

    Example:
        >>> extremes_weights(torch.tensor([0.0, 1.0, 2.0])).round(decimals=4)
        tensor([1.2670, 0.4661, 1.2670])
    """
    return _loss_based(losses, torch.abs, delta, temperature, mask)
