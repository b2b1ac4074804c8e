r"""DPO-family pairwise preference losses on sequence log-probabilities (``[N]`` per pair): DPO, robust DPO, IPO and
H-DPO, with the shared input check and the implicit-reward margin ``Δ``.

Conventions (margin, numerics, references) are described in :mod:`lightning_losses.functional.preference`, which
re-exports every function here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import upcast_half as _upcast

__all__ = ["check_sequence_logps", "dpo", "hdpo", "ipo", "preference_margin", "rdpo"]


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


def preference_margin(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    alpha: float = 1.0,
) -> torch.Tensor:
    r"""``Δ_α = (α·log π(y_w) − log π_ref(y_w)) − (α·log π(y_l) − log π_ref(y_l))``; ``α = 1`` is DPO's margin.

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
    return (alpha * c - rc.detach()) - (alpha * r - rr.detach())


def _smoothed_logistic(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
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
) -> torch.Tensor:
    r"""DPO (Rafailov et al., NeurIPS 2023), conservative DPO when ``label_smoothing = ε > 0``.

    .. math:: \ell = -(1-\varepsilon)\log\sigma(\beta\Delta) - \varepsilon\log\sigma(-\beta\Delta)

    Matches TRL's ``loss_type="sigmoid"`` with ``label_smoothing`` (cDPO, Mitchell 2023). ``ε`` is a confidence limit
    (the loss is minimised at a finite margin), not a de-biasing; for that use :func:`rdpo`.

    Example:
        >>> x = torch.tensor([-1.0, -2.0])
        >>> dpo(x, x, x, x).round(decimals=4)  # zero margin: log 2
        tensor([0.6931, 0.6931])
    """
    delta = preference_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _smoothed_logistic(beta * delta, label_smoothing)


def rdpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    eps: float = 0.1,
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
    delta = preference_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * delta
    return ((1.0 - eps) * -F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


def ipo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    r"""IPO (Azar et al., AISTATS 2024, Eq. 17): :math:`\ell = (\Delta - \tfrac{1}{2\beta})^2` (``β`` is the paper's τ).

    TRL's ``loss_type="ipo"`` applies it to **length-averaged** log-probs; pass ``logps / lengths`` to match that.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> ipo(x, x, x, x, beta=0.5)
        tensor([1.])
    """
    delta = preference_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
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
