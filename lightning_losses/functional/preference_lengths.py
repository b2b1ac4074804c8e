r"""Pairwise preference losses that also take response lengths (``[N]`` per pair): RPO (DPO plus an SFT term on the
chosen answer) and SimPO (reference-free, length-normalised).

Conventions are described in :mod:`lightning_losses.functional.preference`, which re-exports both functions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.functional.preference_pairwise import check_sequence_logps, dpo

__all__ = ["rpo", "simpo"]


def _nll(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor | None, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return -chosen_logps
    if chosen_lengths is None:
        raise ValueError(
            "`chosen_lengths` [N] (number of response tokens of each chosen answer) is required for the "
            "length-averaged SFT term (sft_reduction='mean'); pass it or use sft_reduction='sum'"
        )
    return -chosen_logps / chosen_lengths.to(chosen_logps.dtype).clamp_min(1.0)


def rpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    sft_reduction: str = "mean",
) -> torch.Tensor:
    r"""RPO: DPO plus an SFT term on the chosen answer (Liu et al., *Provably Mitigating Overoptimization in RLHF: Your
    SFT Loss is Implicitly an Adversarial Regularizer*, NeurIPS 2024).

    .. math:: \ell = \ell_{\mathrm{DPO}} + \alpha\,\mathrm{NLL}(y_w),\qquad
        \mathrm{NLL}(y_w) = -\log\pi_\theta(y_w\mid x)\,/\,|y_w| \ \text{(mean)}\ \text{or}\ -\log\pi_\theta(y_w\mid x)
        \ \text{(sum)}

    The NLL comes from ``chosen_logps`` (summed token log-probs) and ``chosen_lengths`` (valid token count of each
    chosen answer, required for ``sft_reduction="mean"``). TRL's ``rpo_alpha`` uses the token mean over the whole
    batch (one normaliser for all pairs); here the mean is per sequence, so that the loss stays per-sample (identical
    when all chosen answers have the same length). The authors' repository offers both sum and mean.

    Example:
        >>> x = torch.tensor([-4.0])
        >>> rpo(x, x, x, x, torch.tensor([2]), alpha=1.0).round(decimals=4)  # log 2 + 4/2
        tensor([2.6931])
    """
    (lengths,) = check_sequence_logps(chosen_lengths=chosen_lengths) or (None,)
    if lengths is not None and lengths.shape != chosen_logps.shape:
        raise ValueError(f"`chosen_lengths` must have shape {list(chosen_logps.shape)}, got {list(lengths.shape)}")
    loss = dpo(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
    return loss + alpha * _nll(_upcast(chosen_logps), lengths, sft_reduction)


def simpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    r"""SimPO (Meng, Xia, Chen, NeurIPS 2024): reference-free, length-normalised, with a target margin ``γ``.

    .. math:: \ell = -\log\sigma\Big(\frac{\beta}{|y_w|}\log\pi_\theta(y_w) - \frac{\beta}{|y_l|}\log\pi_\theta(y_l)
        - \gamma\Big)

    ``*_logps`` are summed token log-probs and ``*_lengths`` the valid token counts (pass ones if your log-probs are
    already averages). Matches TRL's CPO ``loss_type="simpo"`` (which writes ``β(Δ̄ − γ/β)``) and the authors'
    ``gamma_beta_ratio`` form. Defaults ``β = 2``, ``γ = 1`` (the authors' β = 2 with ``γ/β = 0.5``).

    Example:
        >>> simpo(torch.tensor([-2.0]), torch.tensor([-6.0]), torch.tensor([2]), torch.tensor([3]), beta=1.0, gamma=1.0)
        tensor([0.6931])
    """
    c, r, lc, lr = check_sequence_logps(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    margin = c / lc.to(c.dtype).clamp_min(1.0) - r / lr.to(r.dtype).clamp_min(1.0)
    return -F.logsigmoid(beta * margin - gamma)
