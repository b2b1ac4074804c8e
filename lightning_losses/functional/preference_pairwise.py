r"""DPO-family pairwise preference losses on sequence log-probabilities (``[N]`` per pair): DPO, robust DPO, IPO and
H-DPO, with the shared input check and the implicit-reward margin ``Δ``.

Conventions (margin, numerics, references) are described in :mod:`lightning_losses.functional.preference`, which
re-exports every function here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import upcast_half as _upcast

__all__ = ["DIVERGENCES", "check_sequence_logps", "divergence_score", "dpo", "hdpo", "ipo", "preference_margin", "rdpo"]

#: The f-divergences of f-DPO (Wang et al., ICLR 2024, *Beyond Reverse KL*), TRL's ``f_divergence_type`` values.
DIVERGENCES = ("reverse_kl", "forward_kl", "js_divergence", "alpha_divergence")


def check_sequence_logps(**tensors: torch.Tensor | None) -> list[torch.Tensor]:
    """Validate named ``[N]`` tensors of one shape (``None`` entries are skipped) and return them upcast.

    Lengths (names ending in ``_lengths``) may be integer tensors; everything else must be floating.

    Raises:
        TypeError: an input is not a tensor.
        ValueError: an input is not 1-D, not floating, or the shapes differ.
    """
    out: list[torch.Tensor] = []
    shape = None
    first = ""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(f"`{name}` must be a 1-D tensor [N] (one value per sequence), got shape {list(t.shape)}")
        if not name.endswith("_lengths") and not t.is_floating_point():
            raise ValueError(f"`{name}` must be a floating tensor, got {t.dtype}")
        if shape is None:
            shape, first = t.shape, name
        elif t.shape != shape:
            raise ValueError(f"`{name}` must have the shape of `{first}` {list(shape)}, got {list(t.shape)}")
        out.append(_upcast(t) if t.is_floating_point() else t)
    return out


def divergence_score(logratio: torch.Tensor, divergence: str = "reverse_kl", f_alpha: float = 0.5) -> torch.Tensor:
    r"""The f-DPO score :math:`s = f'(u)` of a log-ratio :math:`\log u = \log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y)`.

    ``reverse_kl`` (DPO): :math:`\log u`; ``forward_kl``: :math:`1 - u^{-1}`; ``js_divergence``:
    :math:`\log\frac{2u}{1+u} = \log 2 + \log\sigma(\log u)`; ``alpha_divergence``:
    :math:`(u^{\alpha-1} - 1)/(\alpha - 1)` (``α → 1`` is ``reverse_kl``). These are TRL's (≥ 0.29)
    ``f_divergence_type`` scores; as there, the alpha exponent is clamped at 80 in float32 (half precision is upcast
    here); float64 is not clamped. TRL ≤ 0.28 parametrised ``alpha_divergence`` by ``1 − α`` (old ``α = 1`` is
    ``forward_kl``). Constant offsets cancel in the margin :math:`s_w - s_l`.

    Example:
        >>> divergence_score(torch.tensor([0.0, 1.0]), "js_divergence").round(decimals=4)
        tensor([0.0000, 0.3799])
    """
    if divergence == "reverse_kl" or (divergence == "alpha_divergence" and abs(f_alpha - 1.0) < 1e-6):
        return logratio
    if divergence == "forward_kl":
        return -torch.expm1(-logratio)
    if divergence == "js_divergence":
        return math.log(2.0) + F.logsigmoid(logratio)
    if divergence == "alpha_divergence":
        t = (f_alpha - 1.0) * logratio
        if t.dtype != torch.float64:
            t = t.clamp(max=80.0)
        return torch.expm1(t) / (f_alpha - 1.0)
    raise ValueError(f"`divergence` must be one of {list(DIVERGENCES)}, got {divergence!r}")


def preference_margin(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    alpha: float = 1.0,
    divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> torch.Tensor:
    r"""``Δ_α = (α·log π(y_w) − log π_ref(y_w)) − (α·log π(y_l) − log π_ref(y_l))``; ``α = 1`` is DPO's margin.

    With ``divergence`` other than ``"reverse_kl"``, the margin of f-DPO: :math:`s_w - s_l` with each log-ratio mapped
    by :func:`divergence_score` (``f_alpha`` is the alpha-divergence's ``α``).

    Example:
        >>> preference_margin(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
        tensor([2.])
    """
    c, r, rc, rr = check_sequence_logps(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    if divergence == "reverse_kl":
        return (alpha * c - rc.detach()) - (alpha * r - rr.detach())
    chosen = divergence_score(alpha * c - rc.detach(), divergence, f_alpha)
    return chosen - divergence_score(alpha * r - rr.detach(), divergence, f_alpha)


def smoothed_logistic(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    r"""``−(1 − ε) log σ(z) − ε log σ(−z)``: the logistic loss of a margin with label smoothing ``ε`` (cDPO, AOT)."""
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def dpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> torch.Tensor:
    r"""DPO (Rafailov et al., NeurIPS 2023), conservative DPO when ``label_smoothing = ε > 0``.

    .. math:: \ell = -(1-\varepsilon)\log\sigma(\beta\Delta) - \varepsilon\log\sigma(-\beta\Delta)

    ``ε = 0`` matches TRL's ``loss_type="sigmoid"``. The cDPO smoothing (Mitchell 2023) matches TRL ≤ 0.28's
    ``label_smoothing`` with ``"sigmoid"``; TRL ≥ 0.29 reads ``label_smoothing`` only for robust / exo_pair / aot.
    ``ε`` is a confidence limit (the loss is minimised at a finite margin), not a de-biasing; for that use
    :func:`rdpo`. ``divergence`` / ``f_alpha`` give f-DPO (TRL's ``f_divergence_type`` /
    ``f_alpha_divergence_coef``; see :func:`divergence_score`); likewise in :func:`rdpo` and :func:`ipo`.

    Example:
        >>> x = torch.tensor([-1.0, -2.0])
        >>> dpo(x, x, x, x).round(decimals=4)  # zero margin: log 2
        tensor([0.6931, 0.6931])
    """
    delta = preference_margin(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, divergence=divergence, f_alpha=f_alpha
    )
    return smoothed_logistic(beta * delta, label_smoothing)


def rdpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    eps: float = 0.1,
    divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> torch.Tensor:
    r"""Robust DPO (Chowdhury, Kini, Natarajan, ICML 2024): DPO de-biased for preference flips at rate ``ε < 1/2``.

    .. math:: \ell = \frac{(1-\varepsilon)\,\ell_{\mathrm{DPO}}(\Delta) - \varepsilon\,\ell_{\mathrm{DPO}}(-\Delta)}
        {1 - 2\varepsilon},\qquad \ell_{\mathrm{DPO}}(\Delta) = -\log\sigma(\beta\Delta)

    An unbiased estimate of the clean-label DPO loss (it can be negative). Matches TRL's ``loss_type="robust"`` with
    ``label_smoothing = ε``. ``ε = 0`` is DPO.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> rdpo(x, x, x, x, eps=0.2).round(decimals=4)  # zero margin: log 2 as well
        tensor([0.6931])
    """
    delta = preference_margin(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, divergence=divergence, f_alpha=f_alpha
    )
    z = beta * delta
    return ((1.0 - eps) * -F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


def ipo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    divergence: str = "reverse_kl",
    f_alpha: float = 0.5,
) -> torch.Tensor:
    r"""IPO (Azar et al., AISTATS 2024, Eq. 17): :math:`\ell = (\Delta - \tfrac{1}{2\beta})^2` (``β`` is the paper's τ).

    TRL's ``loss_type="ipo"`` applies it to **length-averaged** scores; pass ``logps / lengths`` to match that (with
    ``divergence="reverse_kl"``; for another divergence TRL divides the transformed scores, not the log-probs).

    Example:
        >>> x = torch.tensor([-1.0])
        >>> ipo(x, x, x, x, beta=0.5)
        tensor([1.])
    """
    delta = preference_margin(
        chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, divergence=divergence, f_alpha=f_alpha
    )
    return (delta - 1.0 / (2.0 * beta)).square()


def hdpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.95,
) -> torch.Tensor:
    r"""H-DPO, entropy-controllable DPO (Omura, Fujita, Kataoka, 2024, arXiv:2411.07595).

    Replacing the reverse KL :math:`-H(\pi) + H(\pi,\pi_{\mathrm{ref}})` of the RLHF objective by
    :math:`-\alpha H(\pi) + H(\pi, \pi_{\mathrm{ref}})` gives the optimum
    :math:`\pi^* \propto (\pi_{\mathrm{ref}} e^{r/\beta})^{1/\alpha}`, hence

    .. math:: \ell = -\log\sigma\big(\beta[\alpha\log\pi_\theta(y_w) - \log\pi_{\mathrm{ref}}(y_w)]
        - \beta[\alpha\log\pi_\theta(y_l) - \log\pi_{\mathrm{ref}}(y_l)]\big)

    ``α < 1`` lowers the entropy of the fitted policy (sharper, mode-seeking); ``α = 1`` is DPO (tested). The formula is
    re-derived here from the objective stated in the paper's abstract and the method notes; the default ``α = 0.95`` is
    a mild sharpening, not a value verified against the paper's tables.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> hdpo(x, x, x, x, alpha=1.0).round(decimals=4)
        tensor([0.6931])
    """
    delta = preference_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, alpha=alpha)
    return -F.logsigmoid(beta * delta)
