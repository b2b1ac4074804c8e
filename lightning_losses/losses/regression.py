"""Registered regression losses."""

from __future__ import annotations

import torch

from lightning_losses import functional as LF
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import RegressionLoss

__all__ = ["MSE"]


@LOSSES.register("mse", aliases=("l2", "squared_error"))
class MSE(RegressionLoss):
    r"""Per-sample squared error :math:`\ell_i = \frac1D\sum_d (x_{id} - y_{id})^2`.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("mse")(pred=torch.zeros(3), target=torch.ones(3))
        tensor([1., 1., 1.])
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.mse(pred, target)
