r"""Per-sample multi-class losses (pure functions). Each returns ``[N]``; nothing is reduced here.

Logits are upcast to float32 when they arrive in half precision (log-softmax form throughout: never
``log(softmax(z))``), and the result is returned in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import (
    as_index,
    check_label_range,
    check_multiclass,
    check_per_class,
    not_ignored,
)
from lightning_losses._validation.tensors import upcast_half as _upcast

__all__ = ["asymmetric_single_label", "cross_entropy", "focal", "focal_term"]


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    label_smoothing: float = 0.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample cross entropy with label smoothing, class weights, soft targets and ``ignore_index``.

    .. math::
        \ell_i = -\sum_c w_c\, q_{ic} \log \mathrm{softmax}(z_i)_c,\qquad
        q_i = (1-\varepsilon)\,\delta_{y_i} + \varepsilon / C

    (PyTorch's construction: the smoothing mass ``ε/C`` goes to every class, the target included). With integer
    labels and class weights this equals ``torch.nn.functional.cross_entropy(..., reduction="none")``: the sample's
    class weight multiplies its loss, and the normaliser is left to the reduction step. Samples whose label is
    ``ignore_index`` get loss 0 (the objective also drops them from the normaliser).

    References: softmax outputs trained by cross entropy as class posteriors (Bridle, *Probabilistic
    Interpretation of Feedforward Classification Network Outputs*, 1990); label smoothing (Szegedy et al.,
    *Rethinking the Inception Architecture for Computer Vision*, CVPR 2016).

    Args:
        logits: ``[N, C]`` unnormalised scores.
        target: ``[N]`` integer labels, or ``[N, C]`` class probabilities (soft targets).
        label_smoothing: ``ε`` in ``[0, 1]``.
        weight: optional ``[C]`` class weights.
        ignore_index: label value that contributes nothing (integer targets only).
        validate_args: check the label range (one host sync).

    Returns:
        ``[N]`` float tensor.

    Example:
        >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
        >>> cross_entropy(logits, torch.tensor([0, 0])).round(decimals=4)
        tensor([0.1269, 2.1269])
    """
    # on CPU torch's kernel checks every label itself (an IndexError, turned into the library's message below): the
    # range check's reduction and host read run only when a label is out of range
    on_cpu = isinstance(target, torch.Tensor) and target.device.type == "cpu"
    soft = check_multiclass(logits, target, ignore_index=ignore_index, validate_args=validate_args and not on_cpu)
    if weight is not None:
        check_per_class("weight", weight, logits.shape[-1])
    logits = _upcast(logits)
    if weight is not None and (weight.dtype != logits.dtype or weight.device != logits.device):
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    try:
        # torch's fused kernel implements exactly this formula (tests check it against an explicit loop)
        return F.cross_entropy(
            logits,
            target if soft or target.dtype == torch.int64 else target.long(),
            weight=weight,
            ignore_index=-100 if soft else ignore_index,  # unused for soft targets
            reduction="none",
            label_smoothing=label_smoothing,
        )
    except IndexError as err:  # "Target 5 is out of bounds." (CPU): the library's message, naming the labels
        if not (validate_args and on_cpu and not soft):
            raise
        out_of_range = err
    check_label_range(target, logits.shape[1], ignore_index)  # raises the ValueError
    raise out_of_range  # pragma: no cover - only if torch's kernel rejected a label the check accepts


class _FocalTerm(torch.autograd.Function):
    r"""``ce * (1 - exp(-ce))^gamma`` with a hand-written, everywhere-finite derivative.

    With :math:`u = 1 - e^{-\ell} = -\mathrm{expm1}(-\ell)`:
    :math:`\frac{d}{d\ell}\,\ell u^\gamma = u^\gamma\,(1 + \gamma\, e^{-\ell}\,\ell / u)`, and :math:`\ell/u \to 1` as
    :math:`\ell \to 0`, so the saturated case (``ℓ = 0`` exactly, e.g. logits of 1e4) has derivative 0 instead of the
    ``0 * inf = NaN`` that autograd produces through ``pow`` for ``gamma < 1``.
    """

    @staticmethod
    def forward(ctx, ce: torch.Tensor, gamma: float) -> torch.Tensor:  # type: ignore[override]
        u = -torch.expm1(-ce)
        mod = u.pow(gamma)
        ctx.save_for_backward(ce, u, mod)
        ctx.gamma = gamma
        return ce * mod

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        ce, u, mod = ctx.saved_tensors
        ratio = torch.where(u > 0, ce / torch.where(u > 0, u, torch.ones_like(u)), torch.ones_like(u))
        return grad * mod * (1.0 + ctx.gamma * torch.exp(-ce) * ratio), None


def focal_term(ce: torch.Tensor, gamma: float) -> torch.Tensor:
    r"""Modulated loss :math:`\ell\,(1 - e^{-\ell})^\gamma` from a per-sample ``ce = -log p_t >= 0``.

    Finite value and gradient for any ``gamma >= 0`` including saturated predictions (``ce == 0``).
    """
    if gamma == 0:
        return ce
    return _FocalTerm.apply(ce.clamp_min(0.0), float(gamma))


def focal(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | Sequence[float] | torch.Tensor | None = None,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample softmax focal loss (Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017).

    .. math:: \ell_i = -\alpha_{y_i}\,(1 - p_{i,y_i})^\gamma \log p_{i,y_i}

    computed from ``ce = -log p_t`` (log-softmax form) as ``ce * (1 - exp(-ce))^gamma`` with a stable derivative
    (see :func:`focal_term`). ``gamma = 0`` is cross entropy. ``alpha`` is ``None`` (no weighting, fvcore's
    ``alpha=-1``), a scalar, or per-class weights ``[C]``.

    Example:
        >>> logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
        >>> focal(logits, torch.tensor([0, 0]), gamma=2.0).round(decimals=4)
        tensor([0.0000, 0.1733])
    """
    check_multiclass(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    if target.is_floating_point():
        raise ValueError("`focal` takes integer labels `target [N]`; soft targets are not supported")
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    valid = not_ignored(target, ignore_index)
    safe_target = as_index(torch.where(valid, target, torch.zeros_like(target)))
    ce = -logp.gather(-1, safe_target.unsqueeze(-1)).squeeze(-1)
    loss = focal_term(ce, gamma)
    if alpha is not None:
        alpha_t = torch.as_tensor(alpha, dtype=loss.dtype, device=loss.device)
        if alpha_t.ndim:
            check_per_class("alpha", alpha_t, logits.shape[-1])
        loss = loss * (alpha_t[safe_target] if alpha_t.ndim == 1 else alpha_t)
    return torch.where(valid, loss, torch.zeros_like(loss))


def asymmetric_single_label(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    label_smoothing: float = 0.1,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample single-label asymmetric loss (Ridnik et al., *Asymmetric Loss For Multi-Label Classification*,
    ICCV 2021; the authors' ``ASLSingleLabel``): softmax cross entropy whose terms are focused asymmetrically,

    .. math::
        \ell_i = -\sum_c q_{ic}\, w_{ic} \log p_{ic},\qquad w_{iy} = (1 - p_{iy})^{\gamma_+},\
        w_{ic} = p_{ic}^{\gamma_-}\ (c \ne y),\qquad q_i = (1 - \varepsilon)\,\delta_{y_i} + \varepsilon / C

    with ``p = softmax(logits)`` and label smoothing ``ε`` (PyTorch's construction). The focusing weights keep their
    gradient (as the authors'); ``gamma_pos = gamma_neg = 0`` is label-smoothed cross entropy. Samples labelled
    ``ignore_index`` get 0.

    Example:
        >>> asymmetric_single_label(torch.zeros(1, 2), torch.tensor([0]), label_smoothing=0.0).round(decimals=4)
        tensor([0.6931])
    """
    if check_multiclass(logits, target, ignore_index=ignore_index, validate_args=validate_args):
        raise ValueError("`asymmetric_single_label` takes integer labels `target [N]`; soft targets are not supported")
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    valid = not_ignored(target, ignore_index)
    safe = as_index(torch.where(valid, target, torch.zeros_like(target))).unsqueeze(-1)
    onehot = torch.zeros_like(logp).scatter_(-1, safe, 1.0)
    weight = torch.exp(gamma_neg * logp) if gamma_neg != 0 else torch.ones_like(logp)
    if gamma_pos != 0:
        u = -torch.expm1(logp.gather(-1, safe))  # 1 - p_y, accurate near p_y = 1
        positive = u > 0  # (1 - p_y)^gamma_pos with gradient 0 (not NaN) where p_y = 1
        w_pos = torch.where(positive, torch.exp(gamma_pos * torch.log(torch.where(positive, u, 1.0))), 0.0)
        weight = weight.scatter(-1, safe, w_pos)
    else:
        weight = weight.scatter(-1, safe, 1.0)
    q = onehot * (1.0 - label_smoothing) + label_smoothing / logp.shape[-1]
    loss = -(q * weight * logp).sum(-1)
    return torch.where(valid, loss, torch.zeros_like(loss))
