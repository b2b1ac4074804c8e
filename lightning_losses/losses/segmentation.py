"""Registered overlap losses for segmentation and multi-label outputs: soft Jaccard, focal Tversky, Lovász hinge and
Lovász-Softmax (thin modules over :mod:`lightning_losses.functional.segmentation` and ``.lovasz``), and the AugMix
consistency loss over views.

All are per-sample (per-image) ``[N]``. Losses on integer pixel labels leave pixels labelled ``ignore_index`` out
inside each sample; a sample none of whose pixels counts is masked out of the objective's mean.
"""

from __future__ import annotations

import torch

from lightning_losses._validation import check_choice, check_int, check_number
from lightning_losses._validation.tensors import not_ignored
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.consistency import jsd
from lightning_losses.functional.lovasz import LOVASZ_CLASSES, lovasz_hinge, lovasz_softmax
from lightning_losses.functional.segmentation import focal_tversky, jaccard
from lightning_losses.losses.base import LOSSES, Loss

__all__ = ["JSD", "FocalTversky", "Jaccard", "LovaszHinge", "LovaszSoftmax"]


class _PixelLabelLoss(Loss):
    """``sample_mask``: with integer ``target [N, ...]``, the samples with at least one pixel not ``ignore_index``."""

    ignore_index: int

    def sample_mask(self, *, target: torch.Tensor, **_: torch.Tensor) -> torch.Tensor | None:
        if target.is_floating_point():
            return None
        valid = not_ignored(target, self.ignore_index)
        return valid if valid.ndim == 1 else valid.flatten(1).any(dim=1)


@LOSSES.register("jaccard", aliases=("soft_iou", "iou", "jaccard_loss"))
class Jaccard(_PixelLabelLoss):
    r"""Per-sample soft Jaccard (IoU) loss :math:`1 - (TP + s)/(TP + FP + FN + s)` (Rahman & Wang, ISVC 2016).

    Sigmoid mode for floating targets shaped like ``logits`` (one IoU over all of a sample's elements); softmax mode
    for integer labels ``[N, ...]`` with ``logits [N, C, ...]`` (mean over classes). See
    :mod:`lightning_losses.functional.segmentation`.

    Args:
        smooth: ``s >= 0``. Default 1.0.
        ignore_index: pixel label left out (softmax mode). Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("jaccard")
        >>> loss(logits=torch.zeros(2, 3, 4, 4), target=torch.zeros(2, 4, 4, dtype=torch.long)).shape
        torch.Size([2])
    """

    family = "binary"

    def __init__(self, smooth: float = 1.0, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.smooth = check_number("smooth", smooth, low=0.0)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return jaccard(
            logits, target, smooth=self.smooth, ignore_index=self.ignore_index, validate_args=self.validate_args
        )


@LOSSES.register("focal_tversky", aliases=("focal_tversky_loss",))
class FocalTversky(_PixelLabelLoss):
    r"""Per-sample focal Tversky loss :math:`(1 - TI)^\gamma`, :math:`TI = (TP + s)/(TP + \alpha FP + \beta FN + s)`
    (Abraham & Khan, ISBI 2019). Modes as ``jaccard``; see :func:`lightning_losses.functional.focal_tversky`.

    Args:
        alpha: weight of false positives ``>= 0``. Default 0.3.
        beta: weight of false negatives ``>= 0``. Default 0.7 (the paper's).
        gamma: exponent in ``(0, 3]``. Default 0.75 (the paper's ``1/γ`` with ``γ = 4/3``); 1 is Tversky.
        smooth: ``s >= 0``. Default 1.0.
        ignore_index: pixel label left out (softmax mode). Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("focal_tversky")(logits=torch.zeros(2, 5), target=torch.ones(2, 5)).shape
        torch.Size([2])
    """

    family = "binary"

    def __init__(
        self,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 0.75,
        smooth: float = 1.0,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.beta = check_number("beta", beta, low=0.0)
        self.gamma = check_number("gamma", gamma, low=0.0, high=3.0, low_open=True)
        self.smooth = check_number("smooth", smooth, low=0.0)
        if self.alpha + self.beta == 0 and self.smooth == 0:
            raise ConfigurationError("`alpha`, `beta` and `smooth` cannot all be 0 (the Tversky index is then 1)")
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return focal_tversky(
            logits,
            target,
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            smooth=self.smooth,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("lovasz_hinge", aliases=("lovasz_binary",))
class LovaszHinge(Loss):
    r"""Per-image binary Lovász hinge loss (Berman et al., CVPR 2018): the Lovász extension of the Jaccard loss at the
    hinge errors :math:`\max(0, 1 - z s)`. See :func:`lightning_losses.functional.lovasz.lovasz_hinge`.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("lovasz_hinge")(logits=torch.zeros(2, 8, 8), target=torch.ones(2, 8, 8))
        tensor([1., 1.])
    """

    family = "binary"

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lovasz_hinge(logits, target, validate_args=self.validate_args)


@LOSSES.register("lovasz_softmax", aliases=("lovasz",))
class LovaszSoftmax(_PixelLabelLoss):
    r"""Per-image Lovász-Softmax loss (Berman et al., CVPR 2018): the mean over classes of the Lovász extension of
    the class's Jaccard loss at the errors :math:`|[y = c] - p_c|`. See
    :func:`lightning_losses.functional.lovasz.lovasz_softmax`.

    Args:
        classes: ``"present"`` (default: the classes in the sample's labels) or ``"all"``.
        ignore_index: pixel label left out. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("lovasz_softmax", classes="all")
        >>> loss(logits=torch.zeros(2, 3, 4, 4), target=torch.zeros(2, 4, 4, dtype=torch.long)).shape
        torch.Size([2])
    """

    family = "multiclass"

    def __init__(self, classes: str = "present", ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.classes = check_choice("classes", classes, LOVASZ_CLASSES)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lovasz_softmax(
            logits, target, classes=self.classes, ignore_index=self.ignore_index, validate_args=self.validate_args
        )


@LOSSES.register("jsd", aliases=("augmix", "jsd_consistency", "jensen_shannon"))
class JSD(Loss):
    r"""AugMix loss :math:`\mathrm{CE}(z_0, y) + \lambda\,\mathrm{JS}(p_1, \dots, p_K)` over ``K`` views
    ``logits [N, K, C]`` (Hendrycks et al., ICLR 2020); without ``target`` the consistency term alone. See
    :mod:`lightning_losses.functional.consistency`.

    Family ``"distillation"``: like the distillation losses it compares predictions with predictions (the views with
    their mixture); its inputs are not the multi-class ``logits [N, C]``.

    Args:
        lam: weight ``λ >= 0`` of the Jensen-Shannon term. Default 12.0 (paper).
        ignore_index: label whose cross entropy is left out (the consistency term stays). Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("jsd")(logits=torch.zeros(2, 3, 4), target=torch.tensor([0, 1])).round(decimals=4)
        tensor([1.3863, 1.3863])
    """

    family = "distillation"

    def __init__(self, lam: float = 12.0, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.lam = check_number("lam", lam, low=0.0)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return jsd(logits, target, lam=self.lam, ignore_index=self.ignore_index, validate_args=self.validate_args)
