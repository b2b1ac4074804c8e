r"""The pure maths of a target-entropy constraint: the constraint error and one projected dual-ascent step.

Shared by :class:`~lightning_losses.entropy.EntropyController` (the entropy pillar) and the policy losses' entropy
targets (:mod:`lightning_losses.losses.policy`); see :mod:`lightning_losses.entropy.controller` for the method.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["dual_ascent_step", "entropy_error"]


def entropy_error(
    mean_entropy: torch.Tensor | float, *, target: float | None = None, band: Sequence[float] | None = None
) -> torch.Tensor:
    r"""Constraint error: :math:`H^* - \bar H` for a ``target``; for ``band = (low, high)`` the distance back into
    the band (:math:`\mathrm{low} - \bar H` below it, :math:`\mathrm{high} - \bar H` above it, 0 inside).

    Example:
        >>> float(entropy_error(0.7, band=(0.5, 1.0))), float(entropy_error(1.5, band=(0.5, 1.0)))
        (0.0, -0.5)
    """
    if (target is None) == (band is None):
        raise ValueError("give exactly one of `target` and `band`")
    h = torch.as_tensor(mean_entropy, dtype=torch.float64 if not isinstance(mean_entropy, torch.Tensor) else None)
    if band is not None:
        low, high = band
        return torch.where(h < low, low - h, torch.where(h > high, high - h, torch.zeros_like(h)))
    return target - h


def dual_ascent_step(
    beta: torch.Tensor | float, error: torch.Tensor | float, *, lr: float, beta_min: float, beta_max: float
) -> torch.Tensor:
    r"""One projected dual-ascent step :math:`\mathrm{clip}(\beta + \eta\,e, \beta_{\min}, \beta_{\max})` (pure).

    Example:
        >>> float(dual_ascent_step(0.0, 0.3, lr=1.0, beta_min=-1.0, beta_max=1.0))
        0.3
        >>> float(dual_ascent_step(0.9, 0.3, lr=1.0, beta_min=-1.0, beta_max=1.0))  # clipped
        1.0
    """
    beta = torch.as_tensor(beta, dtype=torch.float64 if not isinstance(beta, torch.Tensor) else None)
    return (beta + lr * torch.as_tensor(error, dtype=beta.dtype, device=beta.device)).clamp(beta_min, beta_max)
