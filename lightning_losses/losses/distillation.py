"""Registered distillation losses (thin modules over :mod:`lightning_losses.functional.distillation`).

Inputs: student ``logits [N, C]``, ``teacher_logits [N, C]`` (never receives a gradient) and ``target [N]`` labels
where used. Compute the teacher forward yourself (``eval()`` mode, ``torch.no_grad()``) and pass its logits.
"""

from __future__ import annotations

import torch

from lightning_losses import functional as LF
from lightning_losses._validation import check_int, check_number
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import DistillationLoss

__all__ = ["KD", "PLD"]


_DistillationLoss = DistillationLoss  # the former private name, kept importable


@LOSSES.register("kd", aliases=("knowledge_distillation",))
class KD(DistillationLoss):
    r"""Knowledge distillation (Hinton et al., 2015): :math:`(1 - w)T^2\,\mathrm{KL}(p_t^T\|p_s^T) + w\,\mathrm{CE}`.

    Args:
        temperature: ``T > 0``. Default 4.0.
        ce_weight: weight ``w`` in ``[0, 1]`` of cross entropy on ``target``. Default 0 (pure distillation; then
            ``target`` is not needed).
        ignore_index: label without CE term. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("kd", temperature=2.0, ce_weight=0.5)
        >>> s, t = torch.zeros(3, 4), torch.randn(3, 4)
        >>> loss(logits=s, teacher_logits=t, target=torch.tensor([0, 1, 2])).shape
        torch.Size([3])
    """

    def __init__(
        self, temperature: float = 4.0, ce_weight: float = 0.0, ignore_index: int = -100, validate_args: bool = True
    ) -> None:
        super().__init__(validate_args)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        self.ce_weight = check_number("ce_weight", ce_weight, low=0.0, high=1.0)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(
        self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        return LF.kd(
            logits,
            teacher_logits,
            target,
            temperature=self.temperature,
            ce_weight=self.ce_weight,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("pld", aliases=("plackett_luce_distillation",))
class PLD(DistillationLoss):
    r"""Plackett-Luce distillation (Bassam et al., 2025): a teacher-confidence-weighted list-wise loss over the
    ranking "true label first, then by teacher logit"; replaces CE + KD (no mixing weight).

    :math:`\sum_k w_k(\log\sum_{j\ge k} e^{z_{\pi_j}} - z_{\pi_k})`, :math:`w = \mathrm{softmax}(t/\tau)_\pi`.

    Args:
        temperature: ``τ > 0`` of the teacher softmax that gives the weights. Default 1.0.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("pld")
        >>> loss(logits=torch.zeros(2, 3), teacher_logits=torch.randn(2, 3), target=torch.tensor([0, 2])).shape
        torch.Size([2])
    """

    def __init__(self, temperature: float = 1.0, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.pld(logits, teacher_logits, target, temperature=self.temperature, validate_args=self.validate_args)
