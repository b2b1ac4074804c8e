r"""Pure weight formulas of the sample reweighters (no state, no collectives).

Every function maps detached losses (and, where needed, groups / classes / running statistics) of **one** batch
(the global batch, under DDP) to weights. Per-sample weights are ``[N]`` with mean 1 unless a docstring says
otherwise; the objective divides by the global weight sum anyway (:func:`lightning_losses.reduction.weighted_mean`).
The stateful reweighters in :mod:`lightning_losses.reweighting` call these after their one sync point.

The formulas live in three modules, all importable from here: loss-based softmax weights
(:mod:`~lightning_losses.functional.reweighting_loss_based`), spectral / sorted-loss weights
(:mod:`~lightning_losses.functional.reweighting_spectral`), and the group, class and diagnostic functions below.

The loss-based functions take an optional boolean ``mask`` (``False`` = not counted, e.g. ``ignore_index``): masked
samples get weight 0 and take no part in the normalisation (min / max, softmax, ranks, ``N``), so the other weights
equal those of the batch without them; computed on device (no host sync).

Example:
    >>> import torch
    >>> loss_softmax_weights(torch.tensor([0.0, 0.0]), temperature=1.0)
    tensor([1., 1.])
"""

from __future__ import annotations

import math

import torch

from lightning_losses.functional.reweighting_loss_based import (
    extremes_weights,
    lin_upper_weights,
    loss_softmax_weights,
    minmax_normalise,
    quadratic_weights,
    softmax_weights,
)
from lightning_losses.functional.reweighting_spectral import (
    cvar_weights,
    sorted_weights,
    spectral_risk_weights,
    top_k_weights,
    truncation_weights,
)

__all__ = [
    "class_balanced_weights",
    "cvar_weights",
    "effective_sample_size",
    "extremes_weights",
    "group_dro_update",
    "group_dro_weights",
    "lin_upper_weights",
    "loss_softmax_weights",
    "minmax_normalise",
    "normalised_weight_entropy",
    "quadratic_weights",
    "softmax_weights",
    "sorted_weights",
    "spectral_risk_weights",
    "top_k_weights",
    "truncation_weights",
]


def group_dro_update(
    q: torch.Tensor, group_loss: torch.Tensor, step_size: float, adjustment: torch.Tensor | None = None
) -> torch.Tensor:
    r"""One exponentiated-gradient step of Group DRO (Sagawa et al., ICLR 2020).

    :math:`q_g \leftarrow q_g \exp(\eta (\hat L_g + C_g)) / Z`; ``group_loss`` is the batch mean loss per group (0 for
    groups absent from the batch, as in the reference code), ``adjustment`` the optional :math:`C/\sqrt{n_g}`.
    Computed in log space, so large steps do not overflow.

    Example:
        >>> group_dro_update(torch.tensor([0.5, 0.5]), torch.tensor([0.0, math.log(3.0)]), step_size=1.0)
        tensor([0.2500, 0.7500])
    """
    adjusted = group_loss if adjustment is None else group_loss + adjustment
    return torch.softmax(q.clamp_min(torch.finfo(q.dtype).tiny).log() + step_size * adjusted, dim=0)


def group_dro_weights(group: torch.Tensor, q: torch.Tensor, group_count: torch.Tensor) -> torch.Tensor:
    r"""Per-sample weights :math:`w_i = N q_{g_i} / n_{g_i}` so that :math:`\frac1N\sum_i w_i \ell_i = \sum_g q_g
    \hat L_g`; ``group_count`` holds the samples per group in the (global) batch, :math:`N` its sum, so a rank's
    slice gets the same weights as in the concatenated batch. Mean :math:`\sum_{g \text{ present}} q_g \le 1`.

    Example:
        >>> group_dro_weights(torch.tensor([0, 0, 1]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 1.0]))
        tensor([0.7500, 0.7500, 1.5000])
    """
    counts = group_count.to(q.dtype)
    return q[group] / counts[group].clamp_min(1.0) * counts.sum()


def class_balanced_weights(samples_per_class: torch.Tensor, beta: float) -> torch.Tensor:
    r"""Class-balanced weights from the effective number of samples (Cui et al., CVPR 2019).

    :math:`w_c = (1 - \beta) / (1 - \beta^{n_c})`, normalised so :math:`\sum_c w_c = C` (the paper's convention).
    Classes with :math:`n_c = 0` get the weight of :math:`n_c = 1`. ``beta = 0`` gives uniform weights.

    Example:
        >>> class_balanced_weights(torch.tensor([1.0, 3.0]), beta=0.999).round(decimals=4)
        tensor([1.4996, 0.5004])
    """
    counts = samples_per_class.to(torch.float64).clamp_min(1.0)
    if beta == 0.0:
        raw = torch.ones_like(counts)
    else:
        raw = (1.0 - beta) / (-torch.expm1(counts * math.log(beta)))
    dtype = samples_per_class.dtype if samples_per_class.is_floating_point() else torch.float32
    return (raw * (counts.numel() / raw.sum())).to(dtype)


def effective_sample_size(weights: torch.Tensor) -> torch.Tensor:
    r"""Relative effective sample size :math:`(\sum w)^2 / (N \sum w^2)` in :math:`(0, 1]` (1 = uniform).

    Example:
        >>> effective_sample_size(torch.tensor([1.0, 1.0, 0.0, 0.0]))
        tensor(0.5000)
    """
    w = weights.to(torch.float64)
    return (w.sum().square() / (w.numel() * w.square().sum()).clamp_min(1e-300)).to(weights.dtype)


def normalised_weight_entropy(weights: torch.Tensor) -> torch.Tensor:
    r"""Entropy of :math:`p = w / \sum w` divided by :math:`\log N` (1 = uniform, 0 = one sample).

    Example:
        >>> normalised_weight_entropy(torch.tensor([1.0, 1.0, 0.0, 0.0]))
        tensor(0.5000)
    """
    w = weights.to(torch.float64)
    n = w.numel()
    if n < 2:
        return weights.new_ones(())
    p = w / w.sum()
    h = -(p * p.clamp_min(1e-300).log()).sum()
    return (h / math.log(n)).to(weights.dtype)
