r"""Pairwise AUC surrogate (pure function): every positive scored against every negative of the **global** batch.

The Wilcoxon-Mann-Whitney statistic counts the fraction of (positive, negative) pairs ranked correctly; its smooth
surrogates replace the step :math:`1[s_p > s_n]` by a convex loss of the score gap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import check_binary
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.distributed import all_gather_with_grad

__all__ = ["AUC_SURROGATES", "auc_pairwise"]

#: Pair losses of the score gap ``g = s_p - s_n``.
AUC_SURROGATES = ("logistic", "squared_hinge")


def _pair_loss(gap: torch.Tensor, surrogate: str, margin: float) -> torch.Tensor:
    if surrogate == "logistic":
        return F.softplus(-gap)
    if surrogate == "squared_hinge":
        return torch.relu(margin - gap).square()
    raise ValueError(f"`surrogate` must be one of {list(AUC_SURROGATES)}, got {surrogate!r}")


def auc_pairwise(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    surrogate: str = "logistic",
    margin: float = 1.0,
    gather: bool = True,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample pairwise AUC loss (Mann-Whitney surrogate; the "BCE over score differences" of *Optimizing What
    Matters: AUC-Driven Learning for Robust Neural Retrieval*, 2025; squared hinge as in LibAUC's pairwise losses).

    With :math:`P` positives and :math:`M` negatives in the (global) batch and a pair loss :math:`f` of the gap
    :math:`s_p - s_n` (``logistic``: :math:`\log(1 + e^{-(s_p - s_n)})`; ``squared_hinge``:
    :math:`\max(0, m - (s_p - s_n))^2`), each positive gets the mean over the negatives and each negative the mean
    over the positives:

    .. math:: \ell_p = \frac1M\sum_n f(s_p - s_n),\qquad \ell_n = \frac1P\sum_p f(s_p - s_n)

    so that the **mean over all** :math:`N = P + M` **samples is exactly the pairwise loss**
    :math:`\frac{1}{PM}\sum_{p,n} f(s_p - s_n)` (since :math:`1/M + 1/P = N/(PM)`). A sample without any pair
    partner (no negatives, or no positives, in the global batch) gets 0. Multi-label ``[N, K]``: per label, then the
    mean over labels. Soft targets are thresholded at 0.5.

    With ``gather=True`` (default) under DDP, the partners come from every rank (gathered with gradients), so k ranks
    equal one process on the concatenated batch; ``gather=False`` pairs within the local batch only.

    Example:
        >>> auc_pairwise(torch.tensor([2.0, -1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0])).round(decimals=4)
        tensor([0.0878, 0.0486, 0.1269])
    """
    check_binary(logits, target, validate_args=validate_args)
    z = _upcast(logits)
    y = target.to(z.dtype)
    if surrogate not in AUC_SURROGATES:
        raise ValueError(f"`surrogate` must be one of {list(AUC_SURROGATES)}, got {surrogate!r}")
    column = z.ndim == 1
    z, pos = (z.unsqueeze(-1), y.unsqueeze(-1) > 0.5) if column else (z, y > 0.5)
    ref_z, ref_pos = z, pos
    if gather:  # identity in one process (counted as a global-batch reduction: `_accumulation`)
        ref_z = all_gather_with_grad(z)
        ref_pos = all_gather_with_grad(pos.to(z.dtype)).detach() > 0.5
    # gap[i, j, k] = s_i - s_j for label k, signed so that f(gap) is the pair loss of the (positive, negative) pair
    gap = z.unsqueeze(1) - ref_z.unsqueeze(0)
    sign = torch.where(pos, 1.0, -1.0).to(z.dtype).unsqueeze(1)
    partner = pos.unsqueeze(1) != ref_pos.unsqueeze(0)  # [N, R, K]: the other class
    pair = torch.where(partner, _pair_loss(sign * gap, surrogate, margin), 0.0)
    count = partner.sum(1).to(z.dtype)
    out = pair.sum(1) / count.clamp_min(1.0)
    return out.squeeze(-1) if column else out.mean(-1)
