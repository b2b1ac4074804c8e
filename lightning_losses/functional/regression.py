r"""Per-sample regression losses (pure functions). ``pred [N]`` or ``[N, ...]`` -> ``[N]``."""

from __future__ import annotations

import torch

from lightning_losses._validation.tensors import check_regression

__all__ = ["mse", "per_sample_mean", "residual"]


def residual(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Validated ``pred - target``, in float32 for half-precision inputs (squares of 3e4 overflow float16)."""
    check_regression(pred, target)
    if pred.dtype in (torch.float16, torch.bfloat16):
        pred = pred.float()
    return pred - target.to(pred.dtype)


def per_sample_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean over the non-batch dimensions: ``[N, ...] -> [N]`` (``[N]`` unchanged)."""
    return values.flatten(1).mean(dim=1) if values.ndim > 1 else values


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Per-sample squared error, averaged over non-batch dimensions: :math:`\ell_i = \frac1D\sum_d (x_{id}-y_{id})^2`.

    Half-precision inputs are computed (and returned) in float32, as every regression loss here. Least squares
    (Legendre 1805, Gauss 1809); see *A Comprehensive Survey of Regression Based Loss Functions for Time Series
    Forecasting* (Jadon et al., 2022) for this family.

    Example:
        >>> mse(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 0.0]]))
        tensor([2.5000])
    """
    return per_sample_mean(residual(pred, target).square())
