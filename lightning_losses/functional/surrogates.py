r"""Per-sample multi-class surrogates built on the softmax (pure functions): PolyLoss, comp-sum, Taylor CE,
squentropy and one-vs-rest.

All take ``logits [N, C]`` and integer ``target [N]`` (``poly1`` also takes ``[N, C]`` probabilities), return ``[N]``
(float32 for half-precision inputs) and give ignored samples (``ignore_index``) loss 0. Powers of ``p_y`` and of
``1 - p_y`` are computed from ``log p_y`` (``exp`` / ``expm1``), never from a rounded probability.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation import check_int, check_number
from lightning_losses._validation.tensors import as_index, check_multiclass, not_ignored
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.functional._labels import label_log_probs, masked
from lightning_losses.functional.classification import cross_entropy, focal_term

__all__ = ["comp_sum", "ovr", "poly1", "poly_focal", "squentropy", "taylor_ce"]


def poly1(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    epsilon: float = 1.0,
    label_smoothing: float = 0.0,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Poly-1 loss (Leng et al., *PolyLoss: A Polynomial Expansion Perspective of Classification Loss Functions*,
    ICLR 2022): :math:`\ell_i = \mathrm{CE}_i + \varepsilon\,(1 - p_{t,i})`, with :math:`p_t = \sum_c q_c p_c`.

    ``q`` is the (label-smoothed, PyTorch construction ``ε_ls / C``) one-hot or the given soft target, as in the
    paper's reference implementation (``pt = sum(smoothed_labels * softmax)``); the CE part is
    :func:`~lightning_losses.functional.cross_entropy`. ``epsilon >= -1`` keeps the leading coefficient of the
    polynomial expansion non-negative; the paper's default is ``epsilon = 1``.

    Example:
        >>> poly1(torch.tensor([[0.0, 0.0]]), torch.tensor([0])).round(decimals=4)
        tensor([1.1931])
    """
    epsilon = check_number("epsilon", epsilon, low=-1.0)
    label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
    ce = cross_entropy(
        logits, target, label_smoothing=label_smoothing, ignore_index=ignore_index, validate_args=validate_args
    )
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    num_classes = logits.shape[-1]
    if target.is_floating_point():
        q = target.to(logp.dtype)
        if label_smoothing > 0:
            q = q * (1.0 - label_smoothing) + label_smoothing / num_classes
        return ce + epsilon * (q * -torch.expm1(logp)).sum(dim=-1)
    valid = not_ignored(target, ignore_index)
    safe = as_index(torch.where(valid, target, torch.zeros_like(target)))
    one_minus_py = -torch.expm1(logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1))
    one_minus_pt = (1.0 - label_smoothing) * one_minus_py + label_smoothing * (1.0 - 1.0 / num_classes)
    return masked(ce + epsilon * one_minus_pt, valid)


def poly_focal(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    epsilon: float = 1.0,
    gamma: float = 2.0,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Poly-1 focal loss (Leng et al., ICLR 2022), softmax form:
    :math:`\ell_i = -(1 - p_{i,y_i})^\gamma \log p_{i,y_i} + \varepsilon\,(1 - p_{i,y_i})^{\gamma + 1}`.

    The focal part is :func:`~lightning_losses.functional.focal_term` (finite for ``gamma < 1`` at saturated
    logits); ``(1 - p)^{gamma + 1}`` has a finite derivative everywhere. ``gamma = 0`` is :func:`poly1`.

    Example:
        >>> poly_focal(torch.tensor([[0.0, 0.0]]), torch.tensor([0]), gamma=0.0).round(decimals=4)
        tensor([1.1931])
    """
    epsilon = check_number("epsilon", epsilon, low=-1.0)
    gamma = check_number("gamma", gamma, low=0.0)
    parts = label_log_probs(logits, target, name="poly_focal", ignore_index=ignore_index, validate_args=validate_args)
    ce = (-parts.logp_y).clamp_min(0.0)
    u = -torch.expm1(-ce)
    return masked(focal_term(ce, gamma) + epsilon * u.pow(gamma + 1.0), parts.valid)


def comp_sum(
    logits: torch.Tensor, target: torch.Tensor, *, tau: float, ignore_index: int = -100, validate_args: bool = True
) -> torch.Tensor:
    r"""Comp-sum loss (Mao, Mohri, Zhong, *Cross-Entropy Loss Functions: Theoretical Analysis and Applications*,
    ICML 2023): :math:`\ell_\tau = \Phi_\tau(u)` with :math:`u = \sum_{y' \ne y} e^{z_{y'} - z_y} = 1/p_y - 1`,
    :math:`\Phi_1(u) = \log(1 + u)` and :math:`\Phi_\tau(u) = ((1 + u)^{1 - \tau} - 1)/(1 - \tau)`, i.e.

    .. math:: \ell_\tau = \frac{1 - p_y^{\,\tau - 1}}{\tau - 1} \quad (\tau \ne 1), \qquad \ell_1 = -\log p_y .

    ``tau = 0`` is the sum-exponential loss, ``tau = 1`` cross entropy, ``tau = 1 + q`` GCE(q), ``tau = 2`` MAE
    (``1 - p_y``). Computed as ``-expm1((tau - 1) log p_y) / (tau - 1)``. For ``tau < 1`` the loss grows like
    ``p_y^{-(1 - tau)}`` and overflows float32 once a logit margin exceeds about ``88 / (1 - tau)``.

    Example:
        >>> comp_sum(torch.tensor([[0.0, 0.0]]), torch.tensor([0]), tau=2.0)
        tensor([0.5000])
    """
    tau = check_number("tau", tau, low=0.0)
    parts = label_log_probs(logits, target, name="comp_sum", ignore_index=ignore_index, validate_args=validate_args)
    if tau == 1.0:
        return masked(-parts.logp_y, parts.valid)
    return masked(-torch.expm1((tau - 1.0) * parts.logp_y) / (tau - 1.0), parts.valid)


def taylor_ce(
    logits: torch.Tensor, target: torch.Tensor, *, order: int = 2, ignore_index: int = -100, validate_args: bool = True
) -> torch.Tensor:
    r"""Taylor cross entropy (Feng et al., *Can Cross Entropy Loss Be Robust to Label Noise?*, IJCAI 2020): the
    order-``t`` Taylor series of CE around ``p_y = 1``, :math:`\ell_i = \sum_{j=1}^{t} (1 - p_{i,y_i})^j / j`.

    ``order = 1`` is :func:`~lightning_losses.functional.mae`; ``order -> inf`` is cross entropy.

    Example:
        >>> taylor_ce(torch.tensor([[0.0, 0.0]]), torch.tensor([0]), order=2)
        tensor([0.6250])
    """
    order = check_int("order", order, low=1)
    parts = label_log_probs(logits, target, name="taylor_ce", ignore_index=ignore_index, validate_args=validate_args)
    u = -torch.expm1(parts.logp_y)
    loss = sum(u.pow(j) / j for j in range(1, order + 1))
    return masked(loss, parts.valid)


def squentropy(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100, validate_args: bool = True
) -> torch.Tensor:
    r"""Squentropy (Hui, Belkin, Wright, *Cut your Losses with Squentropy*, ICML 2023): cross entropy plus the average
    square loss over the incorrect classes, :math:`\ell_i = -\log p_{i,y_i} + \frac{1}{C-1}\sum_{j \ne y_i} z_{ij}^2`.

    The squares act on the raw logits, as in the authors' training code (*Like-Hui/Squentropy_vision*
    ``svhn.py``, ``loss_type == 'sqen'``: the sum of squared logits minus the true-class one, over ``C - 1``,
    plus cross entropy; the script's extra ``resquare`` multiplier is left out, as in the paper's parameter-free
    form).
    No hyperparameters. Needs ``C >= 2``.

    Example:
        >>> squentropy(torch.tensor([[1.0, 2.0, 0.0]]), torch.tensor([0])).round(decimals=4)
        tensor([3.4076])
    """
    parts = label_log_probs(
        logits, target, name="squentropy", ignore_index=ignore_index, validate_args=validate_args, min_classes=2
    )
    num_classes = logits.shape[-1]
    is_target = F.one_hot(parts.target, num_classes).bool()
    squares = torch.where(is_target, torch.zeros_like(parts.z), parts.z.square()).sum(dim=-1)
    return masked(-parts.logp_y + squares / (num_classes - 1), parts.valid)


def ovr(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int = -100, validate_args: bool = True
) -> torch.Tensor:
    r"""One-vs-rest logistic loss: one binary problem per class, summed over classes,
    :math:`\ell_i = \sum_c \log(1 + e^{-s_{ic} z_{ic}})` with :math:`s_{ic} = +1` for :math:`c = y_i`, else -1.

    Equals ``C`` times :func:`~lightning_losses.functional.bce` on the one-hot target (``bce`` averages over labels).
    Used for calibrated one-vs-all classifiers (Padhy et al., *Revisiting One-vs-All Classifiers for Predictive
    Uncertainty and Out-of-Distribution Detection in Neural Networks*, 2020).

    Example:
        >>> ovr(torch.tensor([[0.0, 0.0]]), torch.tensor([0])).round(decimals=4)
        tensor([1.3863])
    """
    if check_multiclass(logits, target, ignore_index=ignore_index, validate_args=validate_args):
        raise ValueError("`ovr` takes integer labels `target [N]`; soft targets are not supported")
    z = _upcast(logits)
    valid = not_ignored(target, ignore_index)
    safe = as_index(torch.where(valid, target, torch.zeros_like(target)))
    one_hot = F.one_hot(safe, logits.shape[-1]).to(z.dtype)
    loss = F.binary_cross_entropy_with_logits(z, one_hot, reduction="none").sum(dim=-1)
    return masked(loss, valid)
