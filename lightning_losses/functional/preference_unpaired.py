r"""Unpaired preference and unlearning functions on sequence log-probabilities (``[N]`` per sequence): KTO and its
reference point, NPO, and the WPO log-weights.

Conventions are described in :mod:`lightning_losses.functional.preference`, which re-exports every function here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import as_index, not_ignored
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.distributed import global_sum
from lightning_losses.functional.preference_pairwise import check_sequence_logps

__all__ = ["kto", "kto_reference_kl", "npo", "wpo_log_weights"]


def kto_reference_kl(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    r"""KTO's reference point :math:`z_0 = \max(0, \widehat{\mathrm{KL}}(\pi_\theta\|\pi_{\mathrm{ref}}))`, detached.

    :math:`\widehat{\mathrm{KL}}` is the mean of ``kl_logps − ref_kl_logps`` over the **global** batch: the policy and
    reference log-probs of *mismatched* completions (the completion of another example paired with this prompt, as in
    the paper and TRL's KL dataset). Under DDP the sum and count are all-reduced in one collective, so every rank
    gets the same ``z_0`` (TRL averages per-process means instead; identical when ranks hold equally many pairs).

    Example:
        >>> kto_reference_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0]))
        tensor(0.5000)
    """
    kl, ref = check_sequence_logps(kl_logps=kl_logps, ref_kl_logps=ref_kl_logps)
    diff = (kl - ref).detach()
    stats = global_sum(torch.stack([diff.sum(), diff.new_tensor(float(diff.numel()))]))
    return (stats[0] / stats[1].clamp_min(1.0)).clamp_min(0.0)


def kto(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    target: torch.Tensor,
    z_ref: torch.Tensor | float,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    r"""KTO (Ethayarajh et al., ICML 2024) on unpaired binary feedback.

    With :math:`r = \log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y)` and the detached reference point ``z_ref``
    (see :func:`kto_reference_kl`):

    .. math:: \ell = \lambda_D\,\big(1 - \sigma(\beta(r - z))\big)\ \text{if desirable},\qquad
        \ell = \lambda_U\,\big(1 - \sigma(\beta(z - r))\big)\ \text{otherwise}

    i.e. :math:`\lambda_y - v(x, y)` of the paper (Eq. 7); matches TRL's ``loss_type="kto"``. ``target`` is 1 (or
    ``True``) for desirable completions and 0 for undesirable ones.

    Example:
        >>> kto(torch.tensor([-1.0, -1.0]), torch.tensor([-1.0, -1.0]), torch.tensor([1, 0]), 0.0)
        tensor([0.5000, 0.5000])
    """
    lp, ref = check_sequence_logps(logps=logps, ref_logps=ref_logps)
    if not isinstance(target, torch.Tensor) or target.shape != lp.shape or target.is_floating_point():
        got = f"{target.dtype} {list(target.shape)}" if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(
            f"`target` must be an integer or bool tensor of shape {list(lp.shape)} (1 = desirable), got {got}"
        )
    z = torch.as_tensor(z_ref, dtype=lp.dtype, device=lp.device).detach()
    r = lp - ref.detach()
    desirable = target.bool()
    return torch.where(
        desirable,
        desirable_weight * torch.sigmoid(-beta * (r - z)),
        undesirable_weight * torch.sigmoid(-beta * (z - r)),
    )


def npo(logps: torch.Tensor, ref_logps: torch.Tensor, *, beta: float = 0.1) -> torch.Tensor:
    r"""NPO, negative preference optimisation for unlearning (Zhang, Lin, Bai, Mei, 2024), on forget-set sequences.

    .. math:: \ell = \frac{2}{\beta}\log\Big(1 + \big(\tfrac{\pi_\theta(y)}{\pi_{\mathrm{ref}}(y)}\big)^\beta\Big)
        = \frac{2}{\beta}\,\mathrm{softplus}\big(\beta(\log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y))\big)

    Its gradient is that of gradient ascent on the NLL scaled by :math:`2\sigma(\beta r) \le 2`, which vanishes once
    the sequence is forgotten; ``β → 0`` recovers plain gradient ascent. Usually combined with a retain-set CE term.

    Example:
        >>> npo(torch.tensor([-3.0]), torch.tensor([-3.0]), beta=1.0).round(decimals=4)  # 2 log 2
        tensor([1.3863])
    """
    lp, ref = check_sequence_logps(logps=logps, ref_logps=ref_logps)
    return (2.0 / beta) * F.softplus(beta * (lp - ref.detach()))


def wpo_log_weights(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, alignment: str = "sampled"
) -> torch.Tensor:
    r"""Per-sequence WPO log-weights (Zhou et al., *WPO*, EMNLP 2024, Eq. 2), detached.

    .. math:: \log w(x, y) = \frac{1}{|y|}\sum_t \Big(\log\pi_\theta(y_t\mid\cdot) - \log Z_t\Big),\quad
        \log Z_t = \log\sum_v \pi_\theta(v\mid\cdot)^2\ (\text{"sampled"}),\ \max_v\log\pi_\theta(v\mid\cdot)\
        (\text{"greedy"}),\ 0\ (\text{"none"})

    ``"sampled"`` matches TRL's ``use_weighting`` (``logsumexp(2·log_softmax)``); ``"none"`` is the plain
    length-normalised probability. Feed the chosen and rejected values to the ``wpo`` reweighter.

    Args:
        logits: ``[N, T, V]`` (already aligned with ``labels``: position t predicts ``labels[:, t]``).
        labels: ``[N, T]`` token ids, ``ignore_index`` where not part of the response.

    Example:
        >>> wpo_log_weights(torch.zeros(1, 2, 4), torch.tensor([[1, -100]]))  # uniform: log(1/4) - log(1/4)
        tensor([0.])
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"`logits` must be [N, T, V] and `labels` [N, T], got {list(logits.shape)} and {list(labels.shape)}"
        )
    if alignment not in ("sampled", "greedy", "none"):
        raise ValueError(f"`alignment` must be one of 'sampled', 'greedy', 'none', got {alignment!r}")
    with torch.no_grad():
        logp = torch.log_softmax(_upcast(logits.detach()), dim=-1)
        valid = not_ignored(labels, ignore_index)
        token = logp.gather(-1, as_index(torch.where(valid, labels, 0)).unsqueeze(-1)).squeeze(-1)
        if alignment == "sampled":
            token = token - torch.logsumexp(2.0 * logp, dim=-1)
        elif alignment == "greedy":
            token = token - logp.amax(dim=-1)
        count = valid.sum(-1).clamp_min(1).to(token.dtype)
        return (token * valid).sum(-1) / count
