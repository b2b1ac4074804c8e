"""Registered losses that replace the softmax link: LDR-KL, StableMax cross entropy, spherical Z-loss."""

from __future__ import annotations

import torch

from lightning_losses import functional as LF
from lightning_losses._validation import check_bool, check_int, check_number
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import LabelLoss

__all__ = ["LDRKL", "SphericalZLoss", "StableMaxCrossEntropy"]


@LOSSES.register("ldr_kl", aliases=("ldr", "ldr_kl_loss"))
class LDRKL(LabelLoss):
    r"""Label-distributionally-robust loss with KL regulariser (Zhu, Ying, Yang, ICML 2023):
    :math:`\ell_i = \lambda\log\frac1C\sum_k\exp\big((c\,\mathbb 1[k\ne y_i] + f_{ik} - f_{iy_i})/\lambda\big)`.

    See :func:`lightning_losses.functional.ldr_kl` (closed form of the worst case over label distributions, and the
    ``normalize`` score transform of the reference code).

    Args:
        lam: KL strength ``lambda > 0``. Default 1.0 (reference code).
        margin: ``c >= 0``. Default 2.0 (reference code ``LDRLoss_V1``).
        normalize: scores ``softplus(z) / mean softplus(z)`` (reference code, default) instead of raw logits.
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("ldr_kl", lam=1.0, margin=2.0)(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        lam: float = 1.0,
        margin: float = 2.0,
        normalize: bool = True,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.lam = check_number("lam", lam, low=0.0, low_open=True)
        self.margin = check_number("margin", margin, low=0.0)
        self.normalize = check_bool("normalize", normalize)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.ldr_kl(
            logits,
            target,
            lam=self.lam,
            margin=self.margin,
            normalize=self.normalize,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("stablemax_cross_entropy", aliases=("stablemax", "stablemax_ce"))
class StableMaxCrossEntropy(LabelLoss):
    r"""Cross entropy through StableMax, :math:`s(x) = x + 1` (``x >= 0``), :math:`1/(1-x)` (``x < 0``) (Prieto et
    al., ICLR 2025).

    See :func:`lightning_losses.functional.stablemax_cross_entropy`.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("stablemax_cross_entropy")(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(self, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.stablemax_cross_entropy(
            logits, target, ignore_index=self.ignore_index, validate_args=self.validate_args
        )


@LOSSES.register("spherical_z_loss")
class SphericalZLoss(LabelLoss):
    r"""Spherical Z-loss :math:`\ell_i = \frac1a\mathrm{softplus}(a(b - \zeta_i))`, :math:`\zeta_i` the z-score of
    the target logit (de Brébisson & Vincent, 2016). Not the PaLM ``z_loss``.

    See :func:`lightning_losses.functional.spherical_z_loss`.

    Args:
        a: sharpness ``> 0`` (required: the paper tunes it per task).
        b: target z-score (required).
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("spherical_z_loss", a=1.0, b=2.0)(logits=torch.randn(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(self, a: float, b: float, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.a = check_number("a", a, low=0.0, low_open=True)
        self.b = check_number("b", b)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.spherical_z_loss(
            logits, target, a=self.a, b=self.b, ignore_index=self.ignore_index, validate_args=self.validate_args
        )
