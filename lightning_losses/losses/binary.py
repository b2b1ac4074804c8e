"""Registered binary / multi-label losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_losses import functional as LF
from lightning_losses._validation import check_number, check_probability_vector
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import BinaryLoss

__all__ = ["BCE"]


@LOSSES.register("bce", aliases=("binary_cross_entropy",))
class BCE(BinaryLoss):
    r"""Binary cross entropy with logits, per sample (mean over labels for ``[N, K]``).

    Label smoothing (see :func:`lightning_losses.functional.bce`): a 0 / 1 ``target`` becomes
    :math:`y(1 - \varepsilon) + \varepsilon/2` (Keras); integer labels ``target [N]`` with ``logits [N, C]`` become
    one-hot targets :math:`\varepsilon/C` off, :math:`1 - \varepsilon + \varepsilon/C` on (timm's
    ``BinaryCrossEntropy(smoothing=ε)``).

    Args:
        pos_weight: optional weight of positives, a scalar or per-label ``[K]``.
        label_smoothing: ``ε`` in ``[0, 1]``. Default 0.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("bce")(logits=torch.zeros(4, 3), target=torch.ones(4, 3)).shape
        torch.Size([4])
        >>> ll.build_loss("bce", label_smoothing=0.1)(logits=torch.zeros(2, 3), target=torch.tensor([0, 2]))
        tensor([0.6931, 0.6931])
    """

    def __init__(
        self,
        pos_weight: float | Sequence[float] | None = None,
        label_smoothing: float = 0.0,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        if isinstance(pos_weight, (int, float)) and not isinstance(pos_weight, bool):
            pos_weight = [check_number("pos_weight", pos_weight, low=0.0)]
        self.register_buffer(
            "pos_weight", check_probability_vector("pos_weight", pos_weight, dtype=torch.float64), persistent=False
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.bce(
            logits,
            target,
            pos_weight=self.pos_weight,
            label_smoothing=self.label_smoothing,
            validate_args=self.validate_args,
        )
