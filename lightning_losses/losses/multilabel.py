"""Registered binary / multi-label losses beyond BCE (thin modules over :mod:`lightning_losses.functional.multilabel`).

``dice``, ``tversky`` and ``anyloss`` are set-level by default (``reduction="global"``): they set ``batch_level``
and return one scalar for the global batch (soft counts all-reduced with gradients under DDP), which the objective
adds to each rank's loss as is. With ``reduction="sample"`` they are ordinary per-sample ``[N]`` losses.
"""

from __future__ import annotations

import torch

from lightning_losses import functional as LF
from lightning_losses._validation import check_bool, check_choice, check_int, check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.multilabel import ANYLOSS_METRICS
from lightning_losses.functional.overlap import soft_f1
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import BinaryLoss, SetLevelLoss

__all__ = ["AnyLoss", "Asymmetric", "Dice", "SigmoidFocal", "SoftF1", "Tversky"]


_BinaryLoss, _SetLevelLoss = BinaryLoss, SetLevelLoss  # the former private names, kept importable


@LOSSES.register("sigmoid_focal", aliases=("sigmoid_focal_loss", "binary_focal"))
class SigmoidFocal(BinaryLoss):
    r"""Sigmoid focal loss, torchvision semantics: :math:`\alpha_t(1 - p_t)^\gamma\,\mathrm{BCE}`, mean over labels.

    Stable for any ``gamma >= 0`` at saturated logits (log-space modulator, see
    :func:`lightning_losses.functional.sigmoid_focal`).

    Args:
        gamma: focusing parameter ``>= 0``. Default 2.0 (paper, torchvision).
        alpha: positive-class weight in ``[0, 1]``, or ``None`` for no weighting (fvcore's ``-1``). Default 0.25
            (torchvision).

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("sigmoid_focal")(logits=torch.zeros(4, 3), target=torch.ones(4, 3)).shape
        torch.Size([4])
    """

    def __init__(self, gamma: float = 2.0, alpha: float | None = 0.25, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.alpha = None if alpha is None else check_number("alpha", alpha, low=0.0, high=1.0)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.sigmoid_focal(logits, target, gamma=self.gamma, alpha=self.alpha, validate_args=self.validate_args)


@LOSSES.register("asymmetric", aliases=("asl", "asymmetric_loss"))
class Asymmetric(BinaryLoss):
    r"""Asymmetric loss (ASL, Ridnik et al., ICCV 2021) for multi-label classification.

    :math:`-y(1 - p)^{\gamma_+}\log p - (1 - y)p_m^{\gamma_-}\log(1 - p_m)`, :math:`p_m = \max(p - m, 0)`.

    Args:
        gamma_pos: focusing on positives ``>= 0``. Default 0 (paper's recommendation).
        gamma_neg: focusing on negatives ``>= 0``. Default 4.
        clip: probability margin ``m`` in ``[0, 1)`` for negatives. Default 0.05; 0 disables.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("asl")(logits=torch.zeros(2, 5), target=torch.zeros(2, 5)).shape
        torch.Size([2])
    """

    def __init__(
        self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05, validate_args: bool = True
    ) -> None:
        super().__init__(validate_args)
        self.gamma_pos = check_number("gamma_pos", gamma_pos, low=0.0)
        self.gamma_neg = check_number("gamma_neg", gamma_neg, low=0.0)
        self.clip = check_number("clip", clip, low=0.0, high=1.0, high_open=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.asymmetric(
            logits,
            target,
            gamma_pos=self.gamma_pos,
            gamma_neg=self.gamma_neg,
            clip=self.clip,
            validate_args=self.validate_args,
        )


@LOSSES.register("dice", aliases=("dice_loss", "self_adjusting_dice"))
class Dice(SetLevelLoss):
    r"""Soft Dice loss, self-adjusting when ``alpha > 0`` (Li et al., ACL 2020); multi-class softmax mode for
    integer labels (Milletari et al., 3DV 2016; segmentation-models-pytorch's ``DiceLoss(mode="multiclass")``).

    :math:`1 - (2\sum\tilde p y + s)/(\sum\tilde p + \sum y + s)`, :math:`\tilde p = (1 - p)^\alpha p`, with
    :math:`p = \sigma(z)` for a ``target`` shaped like ``logits``; for integer labels ``target [N, ...]`` with
    ``logits [N, C, ...]`` :math:`p = \mathrm{softmax}(z)` over axis 1, ``y`` one-hot, mean over the ``C`` classes
    (:func:`lightning_losses.functional.overlap.softmax_dice`: with ``"global"`` a class absent from the target
    counts 0, as segmentation-models-pytorch).

    Args:
        smooth: ``s >= 0`` added to numerator and denominator. Default 1.0 (segmentation-models-pytorch: 0).
        alpha: self-adjusting exponent ``>= 0`` (sigmoid mode only). Default 0 (plain soft Dice).
        reduction: ``"global"`` (default: per-label / per-class sums over the global batch, one scalar, batch-level)
            or ``"sample"`` (per sample over its labels / pixels, ``[N]``).
        ignore_index: softmax mode: pixels with this label are left out. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("dice", reduction="sample")
        >>> loss(logits=torch.zeros(4, 3), target=torch.ones(4, 3)).shape
        torch.Size([4])
        >>> ll.build_loss("dice").batch_level
        True
        >>> ll.build_loss("dice", smooth=0.0)(logits=torch.zeros(2, 3, 4, 4), target=torch.zeros(2, 4, 4, dtype=int))
        tensor(0.1667)
    """

    def __init__(
        self,
        smooth: float = 1.0,
        alpha: float = 0.0,
        reduction: str = "global",
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.smooth = check_number("smooth", smooth, low=0.0)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self._set_reduction(reduction)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.dice(
            logits,
            target,
            smooth=self.smooth,
            alpha=self.alpha,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("soft_f1", aliases=("softf1", "macro_soft_f1", "soft_f1_loss"))
class SoftF1(SetLevelLoss):
    r"""Macro soft-F1 loss :math:`1 - 2TP/(2TP + FP + FN + \varepsilon)` on soft counts, mean over labels / classes
    (sigmoid multi-label or softmax multi-class mode, as ``dice``); ``double=True`` averages it with the F1 of the
    negatives (double soft-F1). See :func:`lightning_losses.functional.overlap.soft_f1`.

    Args:
        double: add the negative class's soft F1 (rewards true negatives). Default False.
        eps: ``ε > 0`` in the denominator. Default 1e-16.
        reduction: ``"global"`` (default: the batch's macro F1, batch-level) or ``"sample"`` (``[N]``).
        ignore_index: softmax mode: pixels with this label are left out. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("soft_f1")(logits=torch.zeros(4, 3), target=torch.ones(4, 3))
        tensor(0.3333)
    """

    def __init__(
        self,
        double: bool = False,
        eps: float = 1e-16,
        reduction: str = "global",
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.double = check_bool("double", double)
        self.eps = check_number("eps", eps, low=0.0, low_open=True)
        self._set_reduction(reduction)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return soft_f1(
            logits,
            target,
            double=self.double,
            eps=self.eps,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("tversky", aliases=("tversky_loss",))
class Tversky(SetLevelLoss):
    r"""Soft Tversky loss (Salehi et al., 2017): :math:`1 - (TP + s)/(TP + \alpha FP + \beta FN + s)`.

    Args:
        alpha: weight of false positives ``>= 0``. Default 0.3.
        beta: weight of false negatives ``>= 0``. Default 0.7 (the paper's best).
        smooth: ``s >= 0``. Default 1.0. ``alpha = beta = 0.5`` gives ``dice`` with ``smooth = 2s`` (the two agree at
            equal ``smooth`` only when ``smooth = 0``).
        reduction: ``"global"`` (default, batch-level) or ``"sample"`` (``[N]``), as for ``dice``.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("tversky", alpha=0.5, beta=0.5)(logits=torch.zeros(4), target=torch.ones(4)).ndim
        0
    """

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        smooth: float = 1.0,
        reduction: str = "global",
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.beta = check_number("beta", beta, low=0.0)
        self.smooth = check_number("smooth", smooth, low=0.0)
        if self.alpha + self.beta == 0 and self.smooth == 0:
            raise ConfigurationError("`alpha`, `beta` and `smooth` cannot all be 0 (the Tversky index is then 1)")
        self._set_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.tversky(
            logits,
            target,
            alpha=self.alpha,
            beta=self.beta,
            smooth=self.smooth,
            reduction=self.reduction,
            validate_args=self.validate_args,
        )


@LOSSES.register("anyloss", aliases=("any_loss",))
class AnyLoss(SetLevelLoss):
    r"""AnyLoss (Han et al., KDD 2024): ``1 - metric`` on the soft confusion matrix of :math:`\sigma(L(p - 0.5))`.

    Args:
        metric: ``"f1"`` (default), ``"fbeta"``, ``"balanced_accuracy"``, ``"gmean"`` or ``"accuracy"``.
        amplifier: ``L > 0``, sharpness of the approximation function. Default 73 (authors' example).
        beta: ``β > 0`` for ``"fbeta"`` (must stay 1 otherwise). Default 1.
        reduction: ``"global"`` (default, batch-level: the metric of the global batch) or ``"sample"``
            (per-sample over its labels, ``[N]``).

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("anyloss", metric="fbeta", beta=2.0)(logits=torch.zeros(8), target=torch.ones(8)).ndim
        0
    """

    def __init__(
        self,
        metric: str = "f1",
        amplifier: float = 73.0,
        beta: float = 1.0,
        reduction: str = "global",
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.metric = check_choice("metric", metric, ANYLOSS_METRICS)
        self.amplifier = check_number("amplifier", amplifier, low=0.0, low_open=True)
        self.beta = check_number("beta", beta, low=0.0, low_open=True)
        if self.metric != "fbeta" and self.beta != 1.0:
            raise ConfigurationError(f"`beta` only applies to metric 'fbeta', got beta={self.beta!r} with {metric!r}")
        self._set_reduction(reduction)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.anyloss(
            logits,
            target,
            metric=self.metric,
            amplifier=self.amplifier,
            beta=self.beta,
            reduction=self.reduction,
            validate_args=self.validate_args,
        )
