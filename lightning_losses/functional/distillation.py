r"""Per-sample knowledge-distillation losses (pure functions).

Inputs: student ``logits [N, C]``, ``teacher_logits [N, C]`` (detached here: no gradient ever reaches the teacher)
and, where used, integer labels ``target [N]``. Half-precision logits are computed in float32 (log-softmax forms).
"""

from __future__ import annotations

import torch

from lightning_losses._validation.tensors import as_index, check_multiclass, require_tensor, shape_str
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.functional.classification import cross_entropy

__all__ = ["kd", "pld"]


def check_teacher(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Validate ``teacher_logits`` (floating, the shape of ``logits``) and return it detached and upcast."""
    require_tensor("teacher_logits", teacher_logits)
    if not teacher_logits.is_floating_point() or teacher_logits.shape != logits.shape:
        raise ValueError(
            f"`teacher_logits` must be a floating tensor with the shape of `logits` {shape_str(logits)}, "
            f"got {teacher_logits.dtype} {shape_str(teacher_logits)}"
        )
    return _upcast(teacher_logits.detach())


def kd(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    temperature: float = 4.0,
    ce_weight: float = 0.0,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample knowledge distillation (Hinton, Vinyals & Dean, *Distilling the Knowledge in a Neural Network*,
    2015), optionally mixed with cross entropy on the labels.

    .. math::
        \ell_i = (1 - w)\,T^2\,\mathrm{KL}\big(\mathrm{softmax}(t_i/T)\,\|\,\mathrm{softmax}(z_i/T)\big)
                 + w\,\mathrm{CE}(z_i, y_i)

    ``T`` is ``temperature`` (the :math:`T^2` keeps gradient magnitudes comparable across temperatures), ``w`` is
    ``ce_weight`` in ``[0, 1]`` (``target`` required when ``w > 0``; samples labelled ``ignore_index`` get no CE).
    The KL is computed from log-softmaxes, with :math:`0 \log 0 = 0` where the teacher puts no mass.

    Example:
        >>> kd(torch.zeros(2, 3), torch.zeros(2, 3))
        tensor([0., 0.])
    """
    require_tensor("logits", logits)
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"`logits` must be a floating tensor of shape [N, C], got {logits.dtype} {shape_str(logits)}")
    teacher = check_teacher(logits, teacher_logits)
    log_s = torch.log_softmax(_upcast(logits) / temperature, dim=-1)
    log_t = torch.log_softmax(teacher / temperature, dim=-1)
    p_t = log_t.exp()
    # 0 log 0 = 0 where the teacher puts no mass; `p_t * 0` (not a constant 0) keeps a non-finite teacher row NaN
    # instead of a finite 0 whose gradient would be NaN
    kl = torch.where(p_t > 0, p_t * (log_t - log_s), p_t * 0).sum(dim=-1) * temperature**2
    if ce_weight == 0:
        return kl
    if target is None:
        raise ValueError("`kd` with `ce_weight` > 0 needs integer labels `target [N]`")
    ce = cross_entropy(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    return (1.0 - ce_weight) * kl + ce_weight * ce


def pld(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 1.0,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample Plackett-Luce distillation (Bassam, Zhu & Bian, *PLD: A Choice-Theoretic List-Wise Knowledge
    Distillation*, 2025).

    The teacher-optimal ranking :math:`\pi` puts the true label first, then the other classes by decreasing teacher
    logit. Each position is a Plackett-Luce choice among the classes not yet ranked, weighted by the teacher's
    confidence in the chosen class, :math:`w_k = \mathrm{softmax}(t/\tau)_{\pi_k}`:

    .. math:: \ell_i = \sum_{k=1}^{C} w_k\Big(\log\sum_{j \ge k} e^{z_{\pi_j}} - z_{\pi_k}\Big)

    The first term is :math:`w_{y}\,\mathrm{CE}(z, y)`; the loss is convex and invariant to shifting ``logits``.
    Suffix log-sum-exps come from one ``logcumsumexp`` over the reversed ranking (stable at any logit scale).
    ``temperature`` (:math:`\tau`) only shapes the weights.

    Checked against the paper's abstract and published summaries (ranking, teacher-softmax weights, first step =
    weighted CE); the paper's own temperature default was not verified, hence ``temperature=1`` (plain softmax).

    Example:
        >>> pld(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), torch.tensor([0])).round(decimals=4)
        tensor([0.5067])
    """
    check_multiclass(logits, target, validate_args=validate_args)
    if target.is_floating_point():
        raise ValueError("`pld` takes integer labels `target [N]`; soft targets are not supported")
    teacher = check_teacher(logits, teacher_logits)
    target = as_index(target)
    z = _upcast(logits)
    # ranking: true label first (pushed to +inf), then the rest by decreasing teacher logit
    key = teacher.scatter(-1, target.unsqueeze(-1), float("inf"))
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    z_ranked = z.gather(-1, order)
    weights = torch.softmax(teacher / temperature, dim=-1).gather(-1, order)
    suffix_lse = torch.logcumsumexp(z_ranked.flip(-1), dim=-1).flip(-1)
    return (weights * (suffix_lse - z_ranked)).sum(dim=-1)
