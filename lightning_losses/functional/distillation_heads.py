r"""Per-sample self-distillation and dual-head distillation (pure functions).

Inputs as :mod:`lightning_losses.functional.distillation`: student ``logits [N, C]``, ``teacher_logits [N, C]``
(detached), integer labels ``target [N]``; dual-head KD adds the auxiliary head's ``aux_logits [N, C]``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.functional.classification import cross_entropy
from lightning_losses.functional.distillation import check_teacher

__all__ = ["binary_kl_norm", "dual_head_kd", "self_distillation"]


def self_distillation(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    xi: float = 1.5,
    hard: bool = False,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Self-distillation under label noise (Das & Sanghavi, *Understanding Self-Distillation in the Presence of Label
    Noise*, ICML 2023): the student fits a mix of the teacher's predictions and the given labels,

    .. math:: \ell_i = \xi\,\mathrm{CE}(q_i, z_i) + (1 - \xi)\,\mathrm{CE}(y_i, z_i)

    with :math:`q = \mathrm{softmax}(t)` (``hard=True``: the teacher's arg-max label). The teacher is typically the
    previous round's model (the same architecture). The paper finds :math:`\xi > 1` best at 30-50 % label noise, which
    puts a **negative** weight :math:`1 - \xi` on the given labels; default ``ξ = 1.5``. ``ξ = 0`` is cross entropy,
    ``ξ = 1`` pure distillation. A sample labelled ``ignore_index`` keeps only the teacher term.

    Example:
        >>> self_distillation(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([0]), xi=1.0).round(decimals=4)
        tensor([0.6931])
    """
    teacher = check_teacher(logits, teacher_logits)
    soft = F.one_hot(teacher.argmax(-1), logits.shape[-1]).to(teacher.dtype) if hard else torch.softmax(teacher, -1)
    log_s = torch.log_softmax(_upcast(logits), dim=-1)
    # 0 log 0 = 0 where the teacher puts no mass (as in `kd`); a non-finite teacher row stays NaN
    teacher_term = -torch.where(soft > 0, soft * log_s, soft * 0).sum(-1)
    label_term = cross_entropy(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    return xi * teacher_term + (1.0 - xi) * label_term


def binary_kl_norm(aux_logits: torch.Tensor, teacher_logits: torch.Tensor, *, temperature: float = 2.0) -> torch.Tensor:
    r"""BinaryKL-Norm, the logit-level loss of dual-head KD (Yang et al., 2024): per class, the KL from a fair coin to
    :math:`d = \sigma((a - t)/T)`, summed over classes and scaled by :math:`T^2`,

    .. math:: \ell_i = T^2\sum_c\Big(-\tfrac12\log\sigma(x_{ic}) - \tfrac12\log\sigma(-x_{ic}) - \log 2\Big),
        \qquad x = (a - t)/T

    zero exactly when the auxiliary logits equal the teacher's (not only up to a shift, unlike a softmax KL).
    Computed with ``logsigmoid``; the authors clamp :math:`d` to :math:`[10^{-8}, 1 - 10^{-8}]`, which only differs
    for :math:`|x| > 18.4`. Default ``T = 2`` (the authors' default).

    Example:
        >>> binary_kl_norm(torch.zeros(1, 3), torch.zeros(1, 3))
        tensor([0.])
    """
    teacher = check_teacher(aux_logits, teacher_logits)
    x = (_upcast(aux_logits) - teacher) / temperature
    per_class = -0.5 * (F.logsigmoid(x) + F.logsigmoid(-x)) - math.log(2.0)
    return temperature**2 * per_class.sum(-1)


def dual_head_kd(
    logits: torch.Tensor,
    aux_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    temperature: float = 2.0,
    kd_weight: float = 1.0,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Dual-head knowledge distillation (Yang, Zong, Huang, Feng, An, *Dual-Head Knowledge Distillation: Enhancing
    Logits Utilization with an Auxiliary Head*, 2024): the main head learns the labels, an auxiliary linear head on the
    same features learns the teacher's logits, so the two losses meet only in the backbone,

    .. math:: \ell_i = \mathrm{CE}(z_i, y_i) + w\,\mathrm{BinaryKLNorm}_T(a_i, t_i)

    (:func:`binary_kl_norm`; ``w`` is ``kd_weight``, default 1.0; ``T = 2``). Putting both losses on one head collapses
    it (the paper's neural-collapse analysis). Predict with the main head. As in the authors' training loop.

    Example:
        >>> z = torch.zeros(1, 2)
        >>> dual_head_kd(z, z, z, torch.tensor([0])).round(decimals=4)
        tensor([0.6931])
    """
    ce = cross_entropy(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    return ce + kd_weight * binary_kl_norm(aux_logits, teacher_logits, temperature=temperature)
