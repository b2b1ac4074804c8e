r"""Memorization-aware training (MAT): the per-example logit shift from held-out predictions, as pure functions.

Bayat, Pezeshki, Dohmatob, Lopez-Paz, Vincent, *The Pitfalls of Memorization: When Memorization Hurts
Generalization* (2024). With held-out logits :math:`h_i` of each training example (from a model that did not train
on it) and a temperature :math:`T`:

.. math::
    q_i = \mathrm{softmax}(h_i / T), \qquad
    J_{kc} = \sum_{j:\,y_j = c} q_{jk}, \qquad
    P(y = c \mid \hat y = k) = J_{kc} / \textstyle\sum_{c'} J_{kc'},

    s_{ic} = \log\Big(\sum_k q_{ik}\,P(y = c \mid \hat y = k) + \epsilon\Big), \qquad
    \ell_i = \mathrm{CE}(z_i + s_i,\ y_i)

(:math:`J` over the batch: the authors calibrate on every mini-batch; the :math:`1/N` of their joint cancels in the
row normalisation). The shift is a constant (no gradient flows through it).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mat_joint", "mat_loss", "mat_shift"]


def mat_joint(
    held_out_logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""The ``float64 [C, C]`` matrix :math:`J_{kc} = \sum_{j: y_j = c} \mathrm{softmax}(h_j / T)_k` (rows: held-out
    class :math:`k`, columns: label :math:`c`); ``False`` entries of ``valid`` add nothing.

    Example:
        >>> mat_joint(torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]), 2, 1.0).round(decimals=4)
        tensor([[1.1497, 0.0000],
                [0.8503, 0.0000]], dtype=torch.float64)
    """
    probs = (held_out_logits.detach().to(torch.float64) / temperature).softmax(-1)
    keep = torch.ones_like(target, dtype=torch.bool) if valid is None else valid
    label = torch.where(keep, target, torch.zeros_like(target)).long()
    onehot = F.one_hot(label, num_classes).to(torch.float64) * keep.unsqueeze(1)
    return probs.T @ onehot


def mat_shift(
    held_out_logits: torch.Tensor, joint: torch.Tensor, temperature: float, eps: float = 1e-6
) -> torch.Tensor:
    r"""The ``float64 [N, C]`` shift :math:`s_{ic} = \log(\sum_k q_{ik} P(y=c \mid \hat y=k) + \epsilon)` for the
    calibration ``joint`` (:func:`mat_joint`; a held-out class no sample was predicted as has an all-zero row).

    Example:
        >>> ho = torch.tensor([[9.0, 0.0], [0.0, 9.0]])
        >>> mat_shift(ho, mat_joint(ho, torch.tensor([0, 1]), 2, 1.0), 1.0).exp().round(decimals=3)
        tensor([[1., 0.],
                [0., 1.]], dtype=torch.float64)
    """
    probs = (held_out_logits.detach().to(torch.float64) / temperature).softmax(-1)
    cond = joint / joint.sum(1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return torch.log(probs @ cond + eps)


def mat_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    held_out_logits: torch.Tensor,
    temperature: float = 0.1,
    eps: float = 1e-6,
    ignore_index: int = -100,
) -> torch.Tensor:
    r"""Per-sample MAT loss :math:`\mathrm{CE}(z_i + s_i, y_i)` with the calibration over this batch (see the module
    docstring); ignored labels get 0.

    Example:
        >>> z, y = torch.zeros(2, 2), torch.tensor([0, 1])
        >>> mat_loss(z, y, held_out_logits=torch.tensor([[3.0, 0.0], [0.0, 3.0]]), temperature=1.0).round(decimals=4)
        tensor([0.0947, 0.0947])
    """
    valid = target != ignore_index
    joint = mat_joint(held_out_logits, target, logits.shape[-1], temperature, valid)
    shift = mat_shift(held_out_logits, joint, temperature, eps)
    return F.cross_entropy(logits + shift.to(logits.dtype), target, ignore_index=ignore_index, reduction="none")
