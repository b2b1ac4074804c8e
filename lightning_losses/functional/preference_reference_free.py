r"""Reference-free preference losses (CPO, ORPO, AlphaPO) and LD-DPO's length-desensitised log-probs.

``*_logps`` are summed token log-probs of whole answers and ``*_lengths`` their valid token counts, ``[N]`` each.
TRL's ``CPOTrainer`` / ``ORPOTrainer`` add one batch-level NLL (the token mean of the chosen answers' cross-entropy);
here the NLL is **per sequence** (``−log π(y_w)/|y_w|``) so the loss stays per-sample; the two agree when all chosen
answers have one length (tested). Formulas checked against TRL 1.16 ``trl/experimental/cpo`` and ``orpo`` (read
only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses.functional.preference_pairwise import check_sequence_logps, smoothed_logistic

__all__ = ["alphapo", "cpo", "ld_sequence_logps", "orpo"]


def _means(c, r, lc, lr) -> tuple[torch.Tensor, torch.Tensor]:
    c, r, lc, lr = check_sequence_logps(chosen_logps=c, rejected_logps=r, chosen_lengths=lc, rejected_lengths=lr)
    return c / lc.to(c.dtype).clamp_min(1.0), r / lr.to(r.dtype).clamp_min(1.0)


def cpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""CPO (Xu et al., ICML 2024, *Contrastive Preference Optimization*): reference-free DPO plus behaviour cloning.

    .. math:: \ell = -(1-\varepsilon)\log\sigma(\beta x) - \varepsilon\log\sigma(-\beta x)
        - \alpha\,\frac{\log\pi_\theta(y_w)}{|y_w|},\qquad x = \log\pi_\theta(y_w) - \log\pi_\theta(y_l)

    ``alpha`` is TRL's ``cpo_alpha`` (default 1.0); ``chosen_lengths`` is needed when ``alpha > 0``. Matches TRL's
    ``CPOTrainer`` ``loss_type="sigmoid"`` (up to the per-sequence NLL, see the module).

    Example:
        >>> cpo(torch.tensor([-4.0]), torch.tensor([-4.0]), torch.tensor([2]), alpha=1.0).round(decimals=4)  # log 2 + 2
        tensor([2.6931])
    """
    c, r = check_sequence_logps(chosen_logps=chosen_logps, rejected_logps=rejected_logps)
    loss = smoothed_logistic(beta * (c - r), label_smoothing)
    if alpha == 0:
        return loss
    if chosen_lengths is None:
        raise ValueError("`cpo` with `alpha` > 0 needs `chosen_lengths` [N] for its per-token NLL term; pass it")
    (lengths,) = check_sequence_logps(chosen_logps=c, chosen_lengths=chosen_lengths)[1:]
    return loss - alpha * c / lengths.to(c.dtype).clamp_min(1.0)


def orpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    r"""ORPO (Hong, Lee, Thorne, EMNLP 2024, Eqs. 4-7): NLL plus an odds-ratio term, no reference model.

    .. math:: \bar\ell = \frac{\log\pi_\theta(y)}{|y|},\quad
        \mathrm{logodds}(\bar\ell) = \bar\ell - \log(1 - e^{\bar\ell}),\quad
        \ell = -\bar\ell_w - \beta\log\sigma\big(\mathrm{logodds}(\bar\ell_w) - \mathrm{logodds}(\bar\ell_l)\big)

    ``β = 0.1`` is the paper's λ (TRL's ``beta``). ``log(1 − e^x)`` is computed as ``log(−expm1(x))``; a mean log-prob
    of exactly 0 (probability 1) gives an infinite odds, as in TRL.

    Example:
        >>> x = torch.tensor([-2.0])
        >>> orpo(x, x, torch.tensor([2]), torch.tensor([2])).round(decimals=4)  # 1 + 0.1 log 2
        tensor([1.0693])
    """
    w, lo = _means(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)
    log_odds = (w - torch.log(-torch.expm1(w))) - (lo - torch.log(-torch.expm1(lo)))
    return -w - beta * F.logsigmoid(log_odds)


def alphapo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
    alpha: float = 0.25,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""AlphaPO (Gupta et al., ICML 2025): SimPO with the reward shape :math:`R = (1 - \bar p^{-\alpha})/\alpha`,
    :math:`\bar p = \exp(\log\pi_\theta(y)/|y|)`.

    .. math:: x = \beta(R_w - R_l) - \gamma,\qquad \ell = -(1-\varepsilon)\log\sigma(x) - \varepsilon\log\sigma(-x)

    ``α → 0`` is SimPO (:func:`~lightning_losses.functional.preference.simpo`, tested); ``α > 0`` damps the
    likelihood displacement. ``R`` is computed as ``−expm1(−α·ℓ̄)/α``, finite where TRL's ``1 − exp(ℓ̄)^{−α}``
    underflows. Matches TRL's ``CPOTrainer(loss_type="alphapo")`` (= ``"simpo"`` with ``cpo_alpha = 0``) with
    ``simpo_gamma = γ/β``. Defaults ``β = 2``, ``γ = 1`` as :func:`simpo`; ``α = 0.25`` is this library's choice (the
    paper reports a small positive α best; not checked against its tables).

    Example:
        >>> x, n = torch.tensor([-2.0]), torch.tensor([2])
        >>> alphapo(x, x, n, n, gamma=0.0).round(decimals=4)
        tensor([0.6931])
    """
    w, lo = _means(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths)
    if alpha == 0:
        rw, rl = w, lo
    else:
        rw, rl = -torch.expm1(-alpha * w) / alpha, -torch.expm1(-alpha * lo) / alpha
    return smoothed_logistic(beta * (rw - rl) - gamma, label_smoothing)


def ld_sequence_logps(
    chosen_token_logps: torch.Tensor,
    rejected_token_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    ld_alpha: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""LD-DPO's length-desensitised sequence log-probs (Liu et al., 2024; TRL ``ld_alpha``).

    With :math:`\ell_p = \min(|y_w|, |y_l|)` the shared length of a pair, each sequence log-prob is
    :math:`\sum_{t \le \ell_p}\log\pi(y_t) + \alpha\sum_{t > \ell_p}\log\pi(y_t)` (positions counted over the valid
    tokens of the mask). Apply it to the policy and the reference token log-probs alike, then feed any paired loss;
    ``ld_alpha = 1`` is the plain sum.

    Args:
        chosen_token_logps: ``[N, T]`` token log-probs of the chosen answers (``rejected_*`` likewise, ``[N, T']``).
        chosen_mask: ``[N, T]`` 1 where a token belongs to the answer.
        ld_alpha: weight of the tokens beyond the shared length, in ``[0, 1]``.

    Example:
        >>> lp = torch.tensor([[-1.0, -1.0, -1.0]])
        >>> ld_sequence_logps(lp, lp, torch.tensor([[1, 1, 1]]), torch.tensor([[1, 0, 0]]), ld_alpha=0.5)
        (tensor([-2.]), tensor([-1.]))
    """
    out = []
    masks = [chosen_mask.bool(), rejected_mask.bool()]
    shared = torch.minimum(masks[0].sum(-1), masks[1].sum(-1)).unsqueeze(-1)
    for lp, mask in zip((chosen_token_logps, rejected_token_logps), masks):
        if lp.shape != mask.shape or lp.ndim != 2:
            raise ValueError(
                f"token log-probs and their mask must be [N, T] of one shape, got {list(lp.shape)} "
                f"and {list(mask.shape)}"
            )
        position = mask.cumsum(-1)
        lp = lp.masked_fill(~mask, 0.0)
        out.append(torch.where(position <= shared, lp, ld_alpha * lp).sum(-1))
    return out[0], out[1]
