r"""SOVR: switching from cross-entropy to the one-vs-the-rest loss for the small-margin samples (pure function)."""

from __future__ import annotations

import torch

from lightning_losses._validation import check_number
from lightning_losses._validation.tensors import as_index, check_multiclass, not_ignored
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.distributed import all_gather_rows
from lightning_losses.functional._labels import masked
from lightning_losses.functional.classification import cross_entropy
from lightning_losses.functional.surrogates import ovr

__all__ = ["logit_margin", "sovr", "sovr_selection"]


def logit_margin(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Logit margin :math:`m_i = z_{i,y_i} - \max_{k \ne y_i} z_{ik}` (``target`` must be valid class indices).

    Example:
        >>> logit_margin(torch.tensor([[2.0, 0.5, 1.0]]), torch.tensor([0]))
        tensor([1.])
    """
    z = _upcast(logits)
    own = z.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    others = z.scatter(-1, target.unsqueeze(-1), float("-inf")).amax(dim=-1)
    return own - others


def sovr_selection(margins: torch.Tensor, valid: torch.Tensor, fraction: float, gather: bool = True) -> torch.Tensor:
    r"""Boolean ``[N]``: the sample is among the :math:`\lfloor M \cdot N_{valid} \rfloor` smallest margins of the
    (global, with ``gather`` under DDP) batch; ties by batch position (rank order under DDP), invalid samples never.
    A non-finite margin (NaN / inf logits) counts as invalid: it takes no part in the ranking nor in :math:`N_{valid}`,
    so the other samples are switched as in the batch without it."""
    valid = valid & torch.isfinite(margins.detach())
    keyed = torch.where(valid, margins.detach(), torch.full_like(margins, float("inf")))
    mine = None
    if gather:
        rows, mine = all_gather_rows(torch.stack([keyed, valid.to(keyed.dtype)], dim=1).detach())
        keyed, count = rows[:, 0], rows[:, 1].sum()
    else:
        count = valid.sum()
    k = torch.floor(count.to(torch.float64) * fraction).to(torch.int64)
    position = torch.empty_like(keyed, dtype=torch.int64)
    position[torch.argsort(keyed, stable=True)] = torch.arange(keyed.numel(), device=keyed.device)
    chosen = position < k
    return chosen if mine is None else chosen[mine]


def sovr(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    fraction: float = 0.4,
    gather: bool = True,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Switching one-vs-the-rest loss (SOVR; Kanai et al., *One-vs-the-Rest Loss to Focus on Important Samples in
    Adversarial Training*, ICML 2023): the fraction :math:`M` of samples with the smallest logit margins
    :math:`m_i = z_{i,y_i} - \max_{k \ne y_i} z_{ik}` (the "important" ones) get the one-vs-the-rest loss, the others
    cross-entropy:

    .. math::
        \ell_i = \begin{cases} -\log\sigma(z_{i,y_i}) - \sum_{k \ne y_i}\log(1 - \sigma(z_{ik})) & i \in S_M \\
        -\log \mathrm{softmax}(z_i)_{y_i} & \text{otherwise} \end{cases}

    :math:`S_M`: the :math:`\lfloor M N \rfloor` smallest margins of the batch (``N`` valid samples; with ``gather``
    under DDP the global batch, so k ranks equal one process on the concatenated batch). The selection is detached
    (a switch, not a weight). In adversarial training pass the logits of the adversarial examples.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.1, 0.0]])
        >>> sovr(logits, torch.tensor([0, 0]), fraction=0.5).round(decimals=4)  # the second sample switches to OVR
        tensor([0.1269, 1.3375])
    """
    fraction = check_number("fraction", fraction, low=0.0, high=1.0)
    if check_multiclass(logits, target, ignore_index=ignore_index, validate_args=validate_args):
        raise ValueError("`sovr` takes integer labels `target [N]`; soft targets are not supported")
    valid = not_ignored(target, ignore_index)
    safe = as_index(torch.where(valid, target, torch.zeros_like(target)))
    switch = sovr_selection(logit_margin(logits, safe), valid, fraction, gather)
    ce = cross_entropy(logits, safe, validate_args=False)
    one_vs_rest = ovr(logits, safe, validate_args=False)
    return masked(torch.where(switch, one_vs_rest, ce.to(one_vs_rest.dtype)), valid)
