r"""Per-token losses ``[N, T]`` -> one value per sequence ``[N]``: the four token normalisations.

Shared by the policy losses, the token-level LM losses, linear cross-entropy and entropy control. With ``mask`` 1 on
the valid tokens (``S_i`` the token-loss sum of sequence ``i``):

* ``"token"``: global token mean (DAPO / verl ``token-mean``): response ``i`` gets
  :math:`S_i \cdot N_g / T_g` with :math:`S_i` its token-loss sum, :math:`T_g` the valid tokens and :math:`N_g` the
  responses with at least one valid token, both summed over the **global** batch (one all-reduce). A uniform mean
  of these over the :math:`N_g` counted responses (what the objective does) is :math:`\sum_i S_i / T_g`;
* ``"sequence"``: token mean within each response (GRPO paper, verl ``seq-mean-token-mean``);
* ``"sum"``: token sum per response (verl ``seq-mean-token-sum``);
* ``"constant"``: token sum divided by the padded length ``T`` (Dr. GRPO, verl ``seq-mean-token-sum-norm``).
"""

from __future__ import annotations

import torch

from lightning_losses.distributed import global_sum

__all__ = ["NORMALIZATIONS", "aggregate_tokens"]

NORMALIZATIONS = ("token", "sequence", "sum", "constant")


def aggregate_tokens(token_losses: torch.Tensor, mask: torch.Tensor, normalization: str = "token") -> torch.Tensor:
    """Per-token losses ``[N, T]`` -> per-response ``[N]`` (the four normalisations: see the module docstring).

    Example:
        >>> losses, mask = torch.tensor([[1.0, 3.0], [2.0, 0.0]]), torch.tensor([[1, 1], [1, 0]])
        >>> aggregate_tokens(losses, mask, "sequence"), aggregate_tokens(losses, mask, "token")
        (tensor([2., 2.]), tensor([2.6667, 1.3333]))
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}, got {normalization!r}")
    m = mask.to(token_losses.dtype)
    sums = (token_losses * m).sum(-1)
    if normalization == "sum":
        return sums
    if normalization == "constant":
        return sums / max(1, token_losses.shape[-1])
    counts = m.sum(-1)
    if normalization == "sequence":
        return sums / counts.clamp_min(1.0)
    totals = global_sum(torch.stack([counts.sum(), (counts > 0).sum().to(counts.dtype)]))
    return sums * (totals[1] / totals[0].clamp_min(1.0))
