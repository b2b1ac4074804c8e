r"""TRL's further ``DPOTrainer`` loss types on sequence log-probabilities (pure functions, ``[N]`` per pair).

Notation as in :mod:`lightning_losses.functional.preference`: :math:`r_w = \log\pi_\theta(y_w) - \log\pi_{ref}(y_w)`,
:math:`r_l` likewise, :math:`\Delta = s_w - s_l` with :math:`s = r` unless an f-divergence is chosen
(:func:`~lightning_losses.functional.preference_pairwise.divergence_score`; TRL allows it for hinge, exo_pair and
discopop among these). Formulas checked against TRL 1.16 ``trl/trainer/dpo_trainer.py`` and ``kto_trainer.py`` (read
only); each docstring names the paper. The sort-based AOT losses live in
:mod:`~lightning_losses.functional.preference_sorted`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_losses.functional.preference_pairwise import check_sequence_logps, preference_margin
from lightning_losses.functional.preference_unpaired import kto

__all__ = [
    "apo_down",
    "apo_zero",
    "apo_zero_unpaired",
    "bco_pair",
    "discopop",
    "exo_pair",
    "hinge",
    "log_ratios",
    "nca_pair",
    "sppo_hard",
]


def log_ratios(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r_w, r_l)``: policy minus (detached) reference log-probs of the chosen and the rejected answers.

    Example:
        >>> log_ratios(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
        (tensor([1.]), tensor([-1.]))
    """
    c, r, rc, rr = check_sequence_logps(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    return c - rc.detach(), r - rr.detach()


def hinge(c, r, rc, rr, *, beta: float = 0.1, divergence: str = "reverse_kl", f_alpha: float = 0.5) -> torch.Tensor:
    r"""SLiC-HF hinge on the DPO margin (Zhao et al., 2023): :math:`\ell = \max(0, 1 - \beta\Delta)` (TRL ``"hinge"``).

    Zero loss (and gradient) once :math:`\Delta \ge 1/\beta`.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> hinge(x, x, x, x)
        tensor([1.])
    """
    return torch.relu(1.0 - beta * preference_margin(c, r, rc, rr, divergence=divergence, f_alpha=f_alpha))


def exo_pair(
    c,
    r,
    rc,
    rr,
    *,
    beta: float = 0.1,
    label_smoothing: float = 1e-3,
    divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> torch.Tensor:
    r"""EXO-pref (Ji et al., ICML 2024, Eq. 16): :math:`\mathrm{KL}(q\,\|\,[1-\varepsilon, \varepsilon])`,
    :math:`q = \sigma(\beta\Delta)`:

    .. math:: \ell = q\,(\log\sigma(\beta\Delta) - \log(1-\varepsilon))
        + (1-q)\,(\log\sigma(-\beta\Delta) - \log\varepsilon)

    ``ε ∈ (0, 1)`` (``label_smoothing``, default 1e-3 as the paper). TRL ``"exo_pair"``; TRL ≤ 0.28 silently replaced
    ``ε = 0`` by 1e-3, ≥ 0.29 refuses it, as this library does.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> exo_pair(x, x, x, x, label_smoothing=0.5)  # q = 1/2 = the target: KL 0
        tensor([0.])
    """
    z = beta * preference_margin(c, r, rc, rr, divergence=divergence, f_alpha=f_alpha)
    eps = label_smoothing
    q = torch.sigmoid(z)
    return q * (F.logsigmoid(z) - math.log1p(-eps)) + (1.0 - q) * (F.logsigmoid(-z) - math.log(eps))


def discopop(
    c, r, rc, rr, *, beta: float = 0.1, tau: float = 0.05, divergence: str = "reverse_kl", f_alpha: float = 0.5
) -> torch.Tensor:
    r"""DiscoPOP / LRML (Chris Lu et al., NeurIPS 2024, Eq. 5), the log-ratio modulated loss found by LLM discovery.

    .. math:: x = \beta\Delta,\quad m = \sigma(x/\tau),\quad \ell = (1 - m)\,(-\log\sigma(x)) + m\,e^{-x}

    ``τ = 0.05`` (TRL ``discopop_tau``, the paper's value). ``m·e^{-x}`` is computed as
    ``exp(log σ(x/τ) − x)``, finite for any margin when ``τ < 1`` (TRL's direct product overflows to ``0·∞`` for
    ``x < −88`` in float32).

    Example:
        >>> x = torch.tensor([-1.0])
        >>> discopop(x, x, x, x)  # x = 0: (1/2) log 2 + 1/2
        tensor([0.8466])
    """
    x = beta * preference_margin(c, r, rc, rr, divergence=divergence, f_alpha=f_alpha)
    return torch.sigmoid(-x / tau) * -F.logsigmoid(x) + torch.exp(F.logsigmoid(x / tau) - x)


def nca_pair(c, r, rc, rr, *, beta: float = 0.1) -> torch.Tensor:
    r"""NCA (Chen et al., NeurIPS 2024, *Noise Contrastive Alignment*), paired form (TRL ``"nca_pair"``):

    .. math:: \ell = -\log\sigma(\beta r_w) - \tfrac12\log\sigma(-\beta r_w) - \tfrac12\log\sigma(-\beta r_l)

    Example:
        >>> x = torch.tensor([-1.0])
        >>> nca_pair(x, x, x, x).round(decimals=4)  # 2 log 2
        tensor([1.3863])
    """
    rw, rl = log_ratios(c, r, rc, rr)
    return -F.logsigmoid(beta * rw) - 0.5 * F.logsigmoid(-beta * rw) - 0.5 * F.logsigmoid(-beta * rl)


def bco_pair(c, r, rc, rr, *, beta: float = 0.1) -> torch.Tensor:
    r"""BCO, paired (Jung et al., 2024, *Binary Classifier Optimization*): :math:`-\log\sigma(\beta r_w) -
    \log\sigma(-\beta r_l)`.

    Matches TRL ≥ 0.29 ``"bco_pair"`` (stateless). TRL ≤ 0.28 shifted both rewards by ``δ``, a running mean of the
    batch rewards kept across steps (not checkpointed there); for that, pass shifted log-ratios yourself.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> bco_pair(x, x, x, x).round(decimals=4)
        tensor([1.3863])
    """
    rw, rl = log_ratios(c, r, rc, rr)
    return -F.logsigmoid(beta * rw) - F.logsigmoid(-beta * rl)


def sppo_hard(c, r, rc, rr, *, beta: float = 0.1) -> torch.Tensor:
    r"""SPPO with hard win probabilities (Wu et al., 2024, Eq. 4.7 with :math:`P = 1` for the winner, 0 for the
    loser; TRL ``"sppo_hard"``): :math:`\ell = (r_w - \tfrac{1}{2\beta})^2 + (r_l + \tfrac{1}{2\beta})^2`.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> sppo_hard(x, x, x, x, beta=0.5)
        tensor([2.])
    """
    rw, rl = log_ratios(c, r, rc, rr)
    half = 0.5 / beta
    return (rw - half).square() + (rl + half).square()


def apo_zero(c, r, rc, rr, *, beta: float = 0.1) -> torch.Tensor:
    r"""APO-zero (D'Oosterlinck et al., 2024, *Anchored Preference Optimization*, Eq. 7): raise the chosen and lower
    the rejected likelihood, :math:`\ell = (1 - \sigma(\beta r_w)) + \sigma(\beta r_l)` (TRL ``"apo_zero"``). Use it
    when the chosen answers are better than the model's own outputs.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> apo_zero(x, x, x, x)
        tensor([1.])
    """
    rw, rl = log_ratios(c, r, rc, rr)
    return (1.0 - torch.sigmoid(beta * rw)) + torch.sigmoid(beta * rl)


def apo_down(c, r, rc, rr, *, beta: float = 0.1) -> torch.Tensor:
    r"""APO-down (D'Oosterlinck et al., 2024, Eq. 8): lower both likelihoods, the rejected one more,
    :math:`\ell = \sigma(\beta r_w) + (1 - \sigma(\beta(r_w - r_l)))` (TRL ``"apo_down"``). Use it when the chosen
    answers are worse than the model's own outputs.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> apo_down(x, x, x, x)
        tensor([1.])
    """
    rw, rl = log_ratios(c, r, rc, rr)
    return torch.sigmoid(beta * rw) + (1.0 - torch.sigmoid(beta * (rw - rl)))


def apo_zero_unpaired(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    target: torch.Tensor,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    r"""APO-zero on unpaired completions (TRL ``KTOTrainer`` ``loss_type="apo_zero_unpaired"``):
    :math:`\lambda_D(1 - \sigma(\beta r))` for a desirable completion (``target = 1``), :math:`\lambda_U\sigma(\beta r)`
    for an undesirable one (``target = 0``): KTO with its reference point fixed at 0
    (:func:`~lightning_losses.functional.preference.kto` with ``z_ref = 0``), so no mismatched-completion forward.

    Example:
        >>> x = torch.tensor([-1.0, -1.0])
        >>> apo_zero_unpaired(x, x, torch.tensor([1, 0]))
        tensor([0.5000, 0.5000])
    """
    weights = {"desirable_weight": desirable_weight, "undesirable_weight": undesirable_weight}
    return kto(logps, ref_logps, target, 0.0, beta=beta, **weights)
