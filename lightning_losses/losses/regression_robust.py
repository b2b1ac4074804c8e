"""Registered robust regression losses (thin modules over :mod:`lightning_losses.functional.regression_robust`).

Inputs ``pred [N]`` or ``[N, D]`` and ``target`` of the same shape; element-wise losses averaged per sample.
"""

from __future__ import annotations

import torch

from lightning_losses import functional as LF
from lightning_losses._validation import check_bool, check_choice, check_number
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import RegressionLoss

__all__ = ["Cauchy", "GaussianNLL", "Huber", "LogCosh", "MAERegression", "PseudoHuber", "Quantile"]


_RegressionLoss = RegressionLoss  # the former private name, kept importable


@LOSSES.register("mae_regression", aliases=("l1", "absolute_error"))
class MAERegression(RegressionLoss):
    r"""Per-sample absolute error :math:`\frac1D\sum_d |\hat y_d - y_d|` (``l1``; ``mae`` is the classification MAE).

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("l1")(pred=torch.zeros(3), target=torch.ones(3))
        tensor([1., 1., 1.])
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.mae_regression(pred, target)


@LOSSES.register("huber", aliases=("huber_loss",))
class Huber(RegressionLoss):
    r"""Huber loss: :math:`\tfrac12 r^2` for :math:`|r| \le \delta`, else :math:`\delta(|r| - \tfrac12\delta)`.

    Args:
        delta: threshold ``> 0`` between the quadratic and linear parts. Default 1.0.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("huber", delta=1.0)(pred=torch.tensor([0.5, 3.0]), target=torch.zeros(2))
        tensor([0.1250, 2.5000])
    """

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        self.delta = check_number("delta", delta, low=0.0, low_open=True)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.huber(pred, target, delta=self.delta)


@LOSSES.register("pseudo_huber", aliases=("charbonnier",))
class PseudoHuber(RegressionLoss):
    r"""Pseudo-Huber loss :math:`\delta^2(\sqrt{1 + (r/\delta)^2} - 1)` (smooth Huber).

    Args:
        delta: scale ``> 0``. Default 1.0.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("pseudo_huber")(pred=torch.tensor([3.0]), target=torch.zeros(1)).round(decimals=4)
        tensor([2.1623])
    """

    def __init__(self, delta: float = 1.0) -> None:
        super().__init__()
        self.delta = check_number("delta", delta, low=0.0, low_open=True)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.pseudo_huber(pred, target, delta=self.delta)


@LOSSES.register("log_cosh", aliases=("logcosh",))
class LogCosh(RegressionLoss):
    r"""Log-cosh loss :math:`\log\cosh(\hat y - y)`, overflow-free.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("log_cosh")(pred=torch.tensor([0.0]), target=torch.zeros(1))
        tensor([0.])
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.log_cosh(pred, target)


@LOSSES.register("quantile", aliases=("pinball",))
class Quantile(RegressionLoss):
    r"""Quantile (pinball) loss :math:`\max(q u, (q - 1)u)`, :math:`u = y - \hat y`.

    Args:
        q: quantile level in ``(0, 1)``. Default 0.5 (median).

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("quantile", q=0.9)(pred=torch.zeros(2), target=torch.tensor([1.0, -1.0]))
        tensor([0.9000, 0.1000])
    """

    def __init__(self, q: float = 0.5) -> None:
        super().__init__()
        self.q = check_number("q", q, low=0.0, high=1.0, low_open=True, high_open=True)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.quantile(pred, target, q=self.q)


@LOSSES.register("cauchy", aliases=("lorentzian",))
class Cauchy(RegressionLoss):
    r"""Cauchy / Lorentzian loss :math:`\log(1 + \tfrac12 (r/c)^2)`.

    Args:
        c: scale ``> 0``. Default 1.0.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("cauchy", c=1.0)(pred=torch.tensor([2.0]), target=torch.zeros(1)).round(decimals=4)
        tensor([1.0986])
    """

    def __init__(self, c: float = 1.0) -> None:
        super().__init__()
        self.c = check_number("c", c, low=0.0, low_open=True)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.cauchy(pred, target, c=self.c)


@LOSSES.register("gaussian_nll", aliases=("heteroscedastic_nll",))
class GaussianNLL(RegressionLoss):
    r"""Gaussian negative log-likelihood :math:`\tfrac12(\log\sigma^2 + (y - \hat y)^2/\sigma^2)`.

    Inputs: ``pred``, ``target`` and **one** of ``var`` (:math:`\sigma^2`, the default parameterisation) or
    ``log_var`` (:math:`\log\sigma^2`); which one this module reads is fixed by ``parameterization``.

    Args:
        parameterization: ``"var"`` (default; values below ``eps`` clamped as in ``F.gaussian_nll_loss``) or
            ``"log_var"`` (no clamp; the stable choice for a network head).
        full: add the constant :math:`\tfrac12\log 2\pi`. Default False (as PyTorch).
        eps: variance floor ``> 0`` for ``"var"``. Default 1e-6 (as PyTorch).

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("gaussian_nll", parameterization="log_var")
        >>> loss(pred=torch.zeros(2), target=torch.ones(2), log_var=torch.zeros(2))
        tensor([0.5000, 0.5000])
    """

    def __init__(self, parameterization: str = "var", full: bool = False, eps: float = 1e-6) -> None:
        super().__init__()
        self.parameterization = check_choice("parameterization", parameterization, ("var", "log_var"))
        self.full = check_bool("full", full)
        self.eps = check_number("eps", eps, low=0.0, low_open=True)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        var: torch.Tensor | None = None,
        log_var: torch.Tensor | None = None,
    ) -> torch.Tensor:
        expected, other = ("var", log_var) if self.parameterization == "var" else ("log_var", var)
        given = var if self.parameterization == "var" else log_var
        if given is None or other is not None:
            raise ValueError(
                f"`gaussian_nll` with parameterization={self.parameterization!r} needs input `{expected}` (only)"
            )
        kwargs = {expected: given}
        return LF.gaussian_nll(pred, target, full=self.full, eps=self.eps, **kwargs)
