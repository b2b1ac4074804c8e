r"""Binary / multi-label losses beyond BCE (pure functions): ``logits [N]`` or ``[N, K]``, ``target`` alike in [0, 1].

Element-wise losses (:func:`sigmoid_focal`, :func:`asymmetric`) return ``[N]``, the mean over the ``K`` labels (as
:func:`lightning_losses.functional.bce`). Set-level losses (:func:`dice`, :func:`tversky`, :func:`anyloss`) build
soft confusion counts and take ``reduction``:

* ``"global"`` (default): counts summed over the batch per label (under DDP over the **global** batch, with
  gradients, via :func:`lightning_losses.distributed.all_reduce_sum_with_grad`), one loss per label, mean over labels:
  a scalar, identical on every rank. This is the form that tracks the corpus-level metric (*Simpson's Bias in NLP
  Training*, 2021).
* ``"sample"``: counts summed over each sample's ``K`` labels: ``[N]`` (for ``[N]`` logits, ``K = 1``: Li et al.'s
  per-example form).

Half-precision logits are computed in float32; every probability is a (log-)sigmoid, never ``log(sigmoid)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import check_binary
from lightning_losses.distributed import all_reduce_sum_with_grad
from lightning_losses.functional.overlap import is_softmax_mode, softmax_dice

__all__ = ["ANYLOSS_METRICS", "anyloss", "asymmetric", "dice", "sigmoid_focal", "tversky"]

ANYLOSS_METRICS = ("f1", "fbeta", "balanced_accuracy", "gmean", "accuracy")
REDUCTIONS = ("global", "sample")


def _prepare(logits: torch.Tensor, target: torch.Tensor, validate_args: bool) -> tuple[torch.Tensor, torch.Tensor]:
    check_binary(logits, target, validate_args=validate_args)
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return z, target.to(z.dtype)


def _label_mean(loss: torch.Tensor) -> torch.Tensor:
    return loss.mean(dim=-1) if loss.ndim == 2 else loss


def _pow0(x: torch.Tensor, gamma: float) -> torch.Tensor:
    """``x ** gamma`` for ``x >= 0`` whose gradient is 0 (not ``0 * inf``) where ``x == 0``."""
    if gamma == 0:
        return torch.ones_like(x)
    positive = x > 0
    return torch.where(positive, torch.exp(gamma * torch.log(torch.where(positive, x, torch.ones_like(x)))), 0.0)


def sigmoid_focal(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    alpha: float | None = 0.25,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample sigmoid focal loss (Lin et al., *Focal Loss for Dense Object Detection*, ICCV 2017).

    torchvision's ``sigmoid_focal_loss`` semantics, per label, then the mean over labels:

    .. math:: \ell = \alpha_t\,(1 - p_t)^\gamma\,\mathrm{BCE}(z, y),\quad
              1 - p_t = y(1 - p) + (1 - y)p,\quad \alpha_t = \alpha y + (1 - \alpha)(1 - y)

    ``alpha=None`` disables the weighting (torchvision's ``alpha < 0``). The modulator is computed in log space,
    :math:`(1 - p_t)^\gamma = \exp\big(\gamma\,\mathrm{logaddexp}(\log y + \log\sigma(-z),\ \log(1 - y) +
    \log\sigma(z))\big)`, so value and gradient stay finite for every ``gamma >= 0`` at saturated logits (the naive
    ``(1 - p_t) ** gamma`` has a ``0 * inf = NaN`` gradient for ``gamma < 1`` once ``p_t`` rounds to 1).

    Example:
        >>> sigmoid_focal(torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])).round(decimals=4)
        tensor([0.0433, 0.0005])
    """
    z, y = _prepare(logits, target, validate_args)
    ce = F.binary_cross_entropy_with_logits(z, y, reduction="none")
    log_1m_pt = torch.logaddexp(torch.log(y) + F.logsigmoid(-z), torch.log1p(-y) + F.logsigmoid(z))
    loss = ce * torch.exp(gamma * log_1m_pt) if gamma != 0 else ce
    if alpha is not None:
        loss = loss * (alpha * y + (1.0 - alpha) * (1.0 - y))
    return _label_mean(loss)


def asymmetric(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma_pos: float = 0.0,
    gamma_neg: float = 4.0,
    clip: float = 0.05,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample asymmetric loss, ASL (Ridnik et al., *Asymmetric Loss For Multi-Label Classification*, ICCV 2021).

    .. math::
        \ell = -y\,(1 - p)^{\gamma_+}\log p \;-\; (1 - y)\,p_m^{\gamma_-}\log(1 - p_m),\qquad p_m = \max(p - m, 0)

    with :math:`p = \sigma(z)` and the probability margin ``m = clip`` (``0`` disables shifting). Defaults are the
    paper's recommendation (``gamma_pos=0, gamma_neg=4, clip=0.05``; the authors' class defaults to
    ``gamma_pos=1``). Logs are exact (:math:`\log p = \log\sigma(z)`, :math:`\log(1 - p_m) = \min(\log(\sigma(-z) +
    m), 0)`), not ``log(clamp(x, eps))``; the focusing weights keep their gradient (the reference's
    ``disable_torch_grad_focal_loss=False``). Mean over labels (the reference sums: a factor ``K``).

    Example:
        >>> logits, target = torch.tensor([[0.0, 1.0], [2.0, -1.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> asymmetric(logits, target).round(decimals=4)
        tensor([0.4695, 1.0798])
    """
    z, y = _prepare(logits, target, validate_args)
    log_p = F.logsigmoid(z)
    pos = torch.exp(gamma_pos * F.logsigmoid(-z)) * log_p if gamma_pos != 0 else log_p
    if clip > 0:
        log_neg = torch.log(torch.sigmoid(-z) + clip).clamp_max(0.0)
        neg = _pow0((torch.sigmoid(z) - clip).clamp_min(0.0), gamma_neg) * log_neg
    else:
        log_neg = F.logsigmoid(-z)
        neg = torch.exp(gamma_neg * log_p) * log_neg if gamma_neg != 0 else log_neg
    return _label_mean(-(y * pos + (1.0 - y) * neg))


def _counts(parts: list[torch.Tensor], reduction: str, sync: bool) -> torch.Tensor:
    """Stack element-wise soft counts ``[N, K]`` and sum them per sample (``[M, N]``) or per label (``[M, K]``)."""
    stacked = torch.stack([p if p.ndim == 2 else p.unsqueeze(-1) for p in parts])
    if reduction == "sample":
        return stacked.sum(dim=-1)
    counts = stacked.sum(dim=1)
    return all_reduce_sum_with_grad(counts) if sync else counts


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def _finish(loss: torch.Tensor, reduction: str) -> torch.Tensor:
    return loss if reduction == "sample" else loss.mean()


def _check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")


def dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    smooth: float = 1.0,
    alpha: float = 0.0,
    reduction: str = "global",
    sync: bool = True,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Soft Sørensen-Dice loss, self-adjusting when ``alpha > 0`` (Li et al., *Dice Loss for Data-imbalanced NLP
    Tasks*, ACL 2020). Integer labels ``target [N, ...]`` with ``logits [N, C, ...]`` select the multi-class softmax
    mode, :func:`~lightning_losses.functional.overlap.softmax_dice` (``ignore_index`` applies there; ``alpha`` must
    be 0).

    .. math:: \ell = 1 - \frac{2\sum \tilde p\,y + s}{\sum \tilde p + \sum y + s},\qquad
              \tilde p = (1 - p)^\alpha p,\ p = \sigma(z)

    sums per label over the (global) batch, or per sample over its labels (``reduction``, see the module docstring).
    ``s`` is ``smooth``. :math:`\tilde p = \exp(\alpha\log\sigma(-z) + \log\sigma(z))` (finite gradients for any
    ``alpha``). ``reduction="global"`` returns a scalar; ``sync=False`` keeps the counts local to this process.

    Example:
        >>> dice(torch.tensor([10.0, -10.0]), torch.tensor([1.0, 0.0])).round(decimals=4)
        tensor(0.)
    """
    _check_reduction(reduction)
    if is_softmax_mode(logits, target):
        if alpha != 0:
            raise ValueError(f"`alpha` (self-adjusting Dice) must be 0 with integer class labels, got {alpha!r}")
        return softmax_dice(
            logits,
            target,
            smooth=smooth,
            reduction=reduction,
            ignore_index=ignore_index,
            sync=sync,
            validate_args=validate_args,
        )
    z, y = _prepare(logits, target, validate_args)
    p = torch.exp(alpha * F.logsigmoid(-z) + F.logsigmoid(z)) if alpha != 0 else torch.sigmoid(z)
    inter, p_sum, y_sum = _counts([p * y, p, y], reduction, sync)
    loss = 1.0 - _ratio(2.0 * inter + smooth, p_sum + y_sum + smooth)
    return _finish(loss, reduction)


def tversky(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 0.3,
    beta: float = 0.7,
    smooth: float = 1.0,
    reduction: str = "global",
    sync: bool = True,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Soft Tversky loss (Salehi, Erdogmus & Gholipour, *Tversky loss function for image segmentation using 3D fully
    convolutional deep networks*, 2017).

    .. math:: \ell = 1 - \frac{TP + s}{TP + \alpha\,FP + \beta\,FN + s},\quad
              TP = \sum p y,\ FP = \sum p(1 - y),\ FN = \sum (1 - p)y

    ``alpha`` weighs false positives, ``beta`` false negatives (defaults 0.3 / 0.7, the paper's best: recall
    favoured). Sums as in :func:`dice` (``reduction``, ``sync``). With ``alpha = beta = 0.5`` the denominator is
    :math:`\tfrac12(\sum p + \sum y) + s`, so the loss is :math:`1 - (2TP + 2s)/(\sum p + \sum y + 2s)`: Dice with
    ``smooth = 2s``, which is :func:`dice` with the same ``smooth`` only when ``smooth = 0``.

    Example:
        >>> tversky(torch.tensor([10.0, -10.0]), torch.tensor([1.0, 0.0])).round(decimals=4)
        tensor(0.)
    """
    _check_reduction(reduction)
    z, y = _prepare(logits, target, validate_args)
    p, q = torch.sigmoid(z), torch.sigmoid(-z)
    tp, fp, fn = _counts([p * y, p * (1.0 - y), q * y], reduction, sync)
    loss = 1.0 - _ratio(tp + smooth, tp + alpha * fp + beta * fn + smooth)
    return _finish(loss, reduction)


def anyloss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    metric: str = "f1",
    amplifier: float = 73.0,
    beta: float = 1.0,
    reduction: str = "global",
    sync: bool = True,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""AnyLoss: ``1 - metric`` on a soft confusion matrix (Han, Moniz & Chawla, *AnyLoss: Transforming
    Classification Metrics into Loss Functions*, KDD 2024).

    The approximation function sharpens probabilities towards {0, 1}: :math:`a = A(p) = \sigma\big(L(p - 0.5)\big)`,
    :math:`p = \sigma(z)`, ``L = amplifier`` (73 in the authors' example). Then :math:`TP = \sum y a`,
    :math:`FN = \sum y(1 - a)`, :math:`FP = \sum (1 - y)a`, :math:`TN = \sum (1 - y)(1 - a)` and

    * ``"accuracy"``: :math:`(TP + TN)/(TP + TN + FP + FN)`
    * ``"f1"`` / ``"fbeta"``: :math:`(1 + \beta^2)TP / \big((1 + \beta^2)TP + \beta^2 FN + FP\big)` (``f1``: β = 1)
    * ``"balanced_accuracy"``: :math:`\tfrac12\big(TP/(TP + FN) + TN/(TN + FP)\big)`
    * ``"gmean"``: :math:`\sqrt{TP/(TP + FN)\cdot TN/(TN + FP)}`

    A rate whose denominator is 0 (no positives / negatives in the counted set) counts as 0. Multi-label: one metric
    per label, mean of ``1 - metric`` over labels (the paper is binary). Counts follow ``reduction`` and ``sync``
    as in :func:`dice`.

    Example:
        >>> anyloss(torch.tensor([5.0, -5.0, 5.0]), torch.tensor([1.0, 0.0, 1.0])).round(decimals=4)
        tensor(0.)
    """
    _check_reduction(reduction)
    if metric not in ANYLOSS_METRICS:
        raise ValueError(f"`metric` must be one of {ANYLOSS_METRICS}, got {metric!r}")
    z, y = _prepare(logits, target, validate_args)
    u = amplifier * (torch.sigmoid(z) - 0.5)
    a, na = torch.sigmoid(u), torch.sigmoid(-u)
    tp, fn, fp, tn = _counts([y * a, y * na, (1.0 - y) * a, (1.0 - y) * na], reduction, sync)
    if metric == "accuracy":
        score = _ratio(tp + tn, tp + tn + fp + fn)
    elif metric in ("f1", "fbeta"):
        b2 = 1.0 if metric == "f1" else beta**2
        score = _ratio((1.0 + b2) * tp, (1.0 + b2) * tp + b2 * fn + fp)
    else:
        tpr, tnr = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
        if metric == "balanced_accuracy":
            score = 0.5 * (tpr + tnr)
        else:
            score = torch.sqrt((tpr * tnr).clamp_min(torch.finfo(tpr.dtype).tiny))
    return _finish(1.0 - score, reduction)
