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

    Args:
        pos_weight: optional weight of positives, a scalar or per-label ``[K]``.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("bce")(logits=torch.zeros(4, 3), target=torch.ones(4, 3)).shape
        torch.Size([4])
    """

    def __init__(self, pos_weight: float | Sequence[float] | None = None, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        if isinstance(pos_weight, (int, float)) and not isinstance(pos_weight, bool):
            pos_weight = [check_number("pos_weight", pos_weight, low=0.0)]
        self.register_buffer(
            "pos_weight", check_probability_vector("pos_weight", pos_weight, dtype=torch.float64), persistent=False
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.bce(logits, target, pos_weight=self.pos_weight, validate_args=self.validate_args)
