"""Registered regression-as-classification and ordinal losses (over :mod:`lightning_losses.functional.ordinal`)."""

from __future__ import annotations

import torch

from lightning_losses import functional as LF
from lightning_losses._validation import check_int, check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import RegressionLoss

__all__ = ["HLGauss", "OrdinalWasserstein"]


@LOSSES.register("hl_gauss", aliases=("hlgauss", "histogram_loss"))
class HLGauss(RegressionLoss):
    r"""HL-Gauss: regression as classification (Farebrother et al., *Stop Regressing*, ICML 2024).

    Inputs ``logits [N, num_bins]`` and a real ``target [N]``; the loss is the cross entropy against the Gaussian
    histogram of the target (see :func:`lightning_losses.functional.hl_gauss_target`). :meth:`predict` turns
    logits back into real predictions. Set the range to cover your targets (targets outside are clamped to it).

    Args:
        min_value: lower end of the support. Default -10.0.
        max_value: upper end, ``> min_value``. Default 10.0.
        num_bins: number of bins ``>= 2``. Default 51.
        sigma: Gaussian width ``> 0``; default ``None`` = 0.75 bin widths (the paper's recommended ratio).

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("hl_gauss", min_value=0.0, max_value=1.0, num_bins=4)
        >>> logits = torch.zeros(2, 4, requires_grad=True)
        >>> loss(logits=logits, target=torch.tensor([0.2, 0.9])).shape
        torch.Size([2])
        >>> loss.predict(torch.zeros(1, 4))
        tensor([0.5000])
    """

    def __init__(
        self, min_value: float = -10.0, max_value: float = 10.0, num_bins: int = 51, sigma: float | None = None
    ) -> None:
        super().__init__()
        self.min_value = check_number("min_value", min_value)
        self.max_value = check_number("max_value", max_value)
        if self.max_value <= self.min_value:
            raise ConfigurationError(f"`max_value` must be > `min_value` = {self.min_value!r}, got {self.max_value!r}")
        self.num_bins = check_int("num_bins", num_bins, low=2)
        bin_width = (self.max_value - self.min_value) / self.num_bins
        self.sigma = 0.75 * bin_width if sigma is None else check_number("sigma", sigma, low=0.0, low_open=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if isinstance(logits, torch.Tensor) and logits.ndim == 2 and logits.shape[1] != self.num_bins:
            raise ValueError(f"`logits` must have num_bins = {self.num_bins} columns, got {list(logits.shape)}")
        return LF.hl_gauss(logits, target, min_value=self.min_value, max_value=self.max_value, sigma=self.sigma)

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected value of the predicted histogram: ``sum_i softmax(logits)_i * center_i`` -> ``[N]``."""
        return LF.hl_gauss_predict(logits, min_value=self.min_value, max_value=self.max_value)


@LOSSES.register("ordinal_wasserstein", aliases=("emd", "wasserstein_ordinal"))
class OrdinalWasserstein(RegressionLoss):
    r"""Wasserstein / earth mover's loss on ordered classes from CDFs: :math:`\Delta\sum_c |F_q(c) - F_y(c)|^p`.

    Inputs ``logits [N, C]`` (classes in their natural order: bins, grades, ages) and ``target [N]`` integer
    labels or ``[N, C]`` probabilities. Misplacing mass by ``d`` classes costs ``d`` (``p = 1``), unlike cross
    entropy which ignores the distance.

    Args:
        p: 1 (default; 1-Wasserstein) or 2 (squared EMD, smooth).
        bin_width: distance ``Δ > 0`` between neighbouring classes. Default 1.0.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("ordinal_wasserstein")
        >>> loss(logits=torch.tensor([[10.0, 0.0, 0.0]]), target=torch.tensor([2])).round(decimals=3)
        tensor([2.])
    """

    def __init__(self, p: int = 1, bin_width: float = 1.0, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.p = check_int("p", p, low=1, high=2)
        self.bin_width = check_number("bin_width", bin_width, low=0.0, low_open=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.ordinal_wasserstein(
            logits, target, p=self.p, bin_width=self.bin_width, validate_args=self.validate_args
        )
