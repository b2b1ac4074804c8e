"""Registered distillation losses (thin modules over :mod:`lightning_losses.functional.distillation`).

Inputs: student ``logits [N, C]``, ``teacher_logits [N, C]`` (never receives a gradient) and ``target [N]`` labels
where used. Compute the teacher forward yourself (``eval()`` mode, ``torch.no_grad()``) and pass its logits.
"""

from __future__ import annotations

import torch

from lightning_losses import functional as LF
from lightning_losses._validation import check_bool, check_int, check_number
from lightning_losses.functional import distillation_heads as LFH
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import DistillationLoss

__all__ = ["KD", "PLD", "BinaryKLNorm", "DualHeadKD", "SelfDistillation"]


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


@LOSSES.register("self_distillation")
class SelfDistillation(DistillationLoss):
    r"""Self-distillation under label noise (Das & Sanghavi, ICML 2023): :math:`\xi\,\mathrm{CE}(q, z) + (1 - \xi)
    \,\mathrm{CE}(y, z)` with the teacher's softmax ``q`` (see :func:`~lightning_losses.functional.distillation_heads
    .self_distillation`).

    Args:
        xi: teacher weight ``ξ`` (any finite value; ``ξ > 1`` puts a negative weight on the labels, the paper's best
            setting at high noise). Default 1.5.
        hard: use the teacher's arg-max labels instead of its probabilities. Default False.
        ignore_index: label without label term. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> z = torch.zeros(2, 3)
        >>> ll.build_loss("self_distillation", xi=2.0)(logits=z, teacher_logits=z, target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(
        self, xi: float = 1.5, hard: bool = False, ignore_index: int = -100, validate_args: bool = True
    ) -> None:
        super().__init__(validate_args)
        self.xi = check_number("xi", xi)
        self.hard = check_bool("hard", hard)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kw = {"xi": self.xi, "hard": self.hard, "ignore_index": self.ignore_index}
        return LFH.self_distillation(logits, teacher_logits, target, validate_args=self.validate_args, **kw)


@LOSSES.register("binary_kl_norm")
class BinaryKLNorm(DistillationLoss):
    r"""BinaryKL-Norm (Yang et al., 2024), the logit-level distillation loss of dual-head KD: per class the KL from a
    fair coin to :math:`\sigma((z - t)/T)`, summed, times :math:`T^2` (see :func:`~lightning_losses.functional.
    distillation_heads.binary_kl_norm`). Give it the **auxiliary** head's logits (``inputs: {logits: aux_logits}``
    in a recipe), or use :class:`DualHeadKD`.

    Args:
        temperature: ``T > 0``. Default 2.0.
    """

    def __init__(self, temperature: float = 2.0, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)

    def forward(self, logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return LFH.binary_kl_norm(logits, teacher_logits, temperature=self.temperature)


@LOSSES.register("dual_head_kd", aliases=("dhkd",))
class DualHeadKD(DistillationLoss):
    r"""Dual-head KD (Yang et al., 2024): cross entropy on the main head's ``logits`` plus ``kd_weight`` ·
    BinaryKL-Norm of the auxiliary head's ``aux_logits`` against ``teacher_logits`` (see
    :func:`~lightning_losses.functional.distillation_heads.dual_head_kd`).

    The model needs a second linear head on the same features; both heads' parameters must be in the optimizer (they
    are, as submodules of your LightningModule). Predict with the main head.

    Args:
        temperature: ``T > 0`` of BinaryKL-Norm. Default 2.0.
        kd_weight: ``w ≥ 0``. Default 1.0.
        ignore_index: label without CE term. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> z = torch.zeros(2, 3)
        >>> ll.build_loss("dual_head_kd")(logits=z, aux_logits=z, teacher_logits=z, target=torch.tensor([0, 1]))
        tensor([1.0986, 1.0986])
    """

    def __init__(
        self, temperature: float = 2.0, kd_weight: float = 1.0, ignore_index: int = -100, validate_args: bool = True
    ) -> None:
        super().__init__(validate_args)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        self.kd_weight = check_number("kd_weight", kd_weight, low=0.0)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(
        self, logits: torch.Tensor, aux_logits: torch.Tensor, teacher_logits: torch.Tensor, target: torch.Tensor
    ) -> torch.Tensor:
        kw = {"temperature": self.temperature, "kd_weight": self.kd_weight, "ignore_index": self.ignore_index}
        return LFH.dual_head_kd(logits, aux_logits, teacher_logits, target, validate_args=self.validate_args, **kw)
