r"""ESAM's sharpness-sensitive data selection (Du et al., ICLR 2022): the descent pass at :math:`w + \epsilon` keeps
the samples whose loss the perturbation raised most.

With per-sample losses :math:`\ell_i(w)` (first pass) and :math:`\ell_i(w + \epsilon)` (descent pass), the sharpness
of sample :math:`i` is :math:`s_i = \ell_i(w + \epsilon) - \ell_i(w)`; the :math:`k = \max(1, \lfloor \gamma B
\rfloor)` samples of largest :math:`s_i` (this rank's batch of :math:`B`, as the reference selects per rank) make the
descent loss :math:`\frac{1}{k}\sum_{i \in \text{top-}k} \ell_i(w + \epsilon)`. Differences from the reference
(dydjw9/Efficient_SAM): it keeps samples with :math:`s_i` *strictly* above the :math:`k`-th largest (so at most
:math:`k - 1`) and runs a separate forward on the kept subset (BatchNorm then normalises with the subset's statistics);
here the top :math:`k` of the full-batch descent forward are kept (same gradient without BatchNorm, none of the
reference's backward savings).
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_losses.errors import ConfigurationError

__all__ = ["selected_loss"]


def selected_loss(perturbed: Tensor, before: Tensor, fraction: float, weights: Tensor | None = None) -> Tensor:
    r"""The mean of ``perturbed`` (per-sample losses at :math:`w + \epsilon`, with gradient) over the
    :math:`\max(1, \lfloor\gamma B\rfloor)` samples of largest ``perturbed - before`` (``before``: at :math:`w`).
    ``weights`` (a reweighter's, detached) weight the kept samples' mean.

    Example:
        >>> selected_loss(torch.tensor([1.0, 5.0, 2.0, 4.0]), torch.tensor([1.0, 1.0, 1.0, 1.0]), 0.5)
        tensor(4.5000)
    """
    if perturbed.ndim != 1 or before.shape != perturbed.shape:
        raise ValueError(
            f"data selection needs per-sample losses of one shape [N] at w and at w + eps, got "
            f"{list(before.shape)} and {list(perturbed.shape)}"
        )
    k = max(1, int(fraction * perturbed.shape[0]))
    sharpness = perturbed.detach() - before.detach()
    keep = torch.zeros_like(sharpness, dtype=torch.bool)
    keep[torch.topk(sharpness, k).indices] = True
    w = keep.to(perturbed.dtype) if weights is None else keep.to(perturbed.dtype) * weights.to(perturbed.dtype)
    return (w * perturbed).sum() / w.sum().clamp_min(torch.finfo(perturbed.dtype).tiny)


def check_selection(fraction: float, accumulate: int, who: str) -> None:
    """Refuse data selection with gradient accumulation (the replayed micro-batches would not be selected)."""
    if fraction < 1.0 and accumulate > 1:
        raise ConfigurationError(
            f"{who}: data selection (`select_fraction` / esam's `gamma` < 1) needs accumulate_grad_batches=1, got "
            f"{accumulate}; pass gamma=1.0 to use the whole batch"
        )
