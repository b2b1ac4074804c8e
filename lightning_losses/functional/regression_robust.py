r"""Per-sample robust regression losses (pure functions). ``pred [N]`` or ``[N, ...]`` -> ``[N]``.

Every loss is applied element-wise to the residual :math:`r = \hat y - y` (``pred - target``) and averaged over the
non-batch dimensions, as :func:`lightning_losses.functional.mse` does. Half-precision inputs are computed in float32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import require_tensor, shape_str
from lightning_losses.functional.regression import per_sample_mean, residual

__all__ = ["cauchy", "gaussian_nll", "huber", "log_cosh", "mae_regression", "pseudo_huber", "quantile"]

_LOG_2 = math.log(2.0)
_LOG_2PI = math.log(2.0 * math.pi)


def mae_regression(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Per-sample absolute error :math:`\ell_i = \frac1D\sum_d |\hat y_{id} - y_{id}|` (L1).

    Least absolute deviations (Laplace); see Jadon et al., *A Comprehensive Survey of Regression Based Loss
    Functions for Time Series Forecasting* (2022).

    Example:
        >>> mae_regression(torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, 0.0]]))
        tensor([1.5000])
    """
    return per_sample_mean(residual(pred, target).abs())


def huber(pred: torch.Tensor, target: torch.Tensor, *, delta: float = 1.0) -> torch.Tensor:
    r"""Per-sample Huber loss (Huber, 1964): quadratic near 0, linear beyond ``delta``.

    .. math:: h_\delta(r) = \tfrac12 r^2 \text{ if } |r| \le \delta \text{ else } \delta\,(|r| - \tfrac12\delta)

    Equals ``torch.nn.functional.huber_loss(..., reduction="none")`` averaged per sample.

    Example:
        >>> huber(torch.tensor([0.5, 3.0]), torch.zeros(2), delta=1.0)
        tensor([0.1250, 2.5000])
    """
    r = residual(pred, target)
    return per_sample_mean(F.huber_loss(r, torch.zeros_like(r), reduction="none", delta=delta))


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, *, delta: float = 1.0) -> torch.Tensor:
    r"""Per-sample pseudo-Huber (Charbonnier) loss, a smooth Huber.

    .. math:: \ell(r) = \delta^2\left(\sqrt{1 + (r/\delta)^2} - 1\right) = \frac{r^2}{\sqrt{1 + (r/\delta)^2} + 1}

    Charbonnier et al., *Two Deterministic Half-Quadratic Regularization Algorithms for Computed Imaging* (ICIP
    1994); scheduled for diffusion training in *Improving Diffusion Models's Data-Corruption Resistance using
    Scheduled Pseudo-Huber Loss* (2024). The right-hand form is used: no cancellation for small ``r``.
    Element-wise (the scheduled pseudo-Huber of diffusion training applies it to the per-sample norm ``‖r‖``; pass
    ``pred``/``target`` of shape ``[N]`` holding that norm and zero to get that variant).

    Example:
        >>> pseudo_huber(torch.tensor([0.0, 3.0]), torch.zeros(2), delta=1.0).round(decimals=4)
        tensor([0.0000, 2.1623])
    """
    r = residual(pred, target)
    u = r / delta
    return per_sample_mean(r.square() / (torch.hypot(torch.ones_like(u), u) + 1.0))


def log_cosh(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Per-sample log-cosh loss :math:`\log\cosh r`, computed stably as :math:`r + \mathrm{softplus}(-2r) - \log 2`.

    Behaves as :math:`r^2/2` near 0 and :math:`|r| - \log 2` for large ``|r|`` (no ``cosh`` overflow). Listed in
    Jadon et al., *A Comprehensive Survey of Regression Based Loss Functions for Time Series Forecasting* (2022).

    Example:
        >>> log_cosh(torch.tensor([0.0, 100.0]), torch.zeros(2))
        tensor([ 0.0000, 99.3069])
    """
    r = residual(pred, target)
    return per_sample_mean(r + F.softplus(-2.0 * r) - _LOG_2)


def quantile(pred: torch.Tensor, target: torch.Tensor, *, q: float = 0.5) -> torch.Tensor:
    r"""Per-sample quantile (pinball) loss for quantile level ``q`` in (0, 1) (Koenker & Bassett, 1978).

    .. math:: \rho_q(u) = \max(q\,u,\ (q - 1)\,u),\qquad u = y - \hat y

    Minimised by the ``q``-quantile of the target distribution; ``q = 0.5`` is half the absolute error.

    Example:
        >>> quantile(torch.tensor([0.0, 0.0]), torch.tensor([1.0, -1.0]), q=0.9)
        tensor([0.9000, 0.1000])
    """
    u = -residual(pred, target)
    return per_sample_mean(torch.maximum(q * u, (q - 1.0) * u))


def cauchy(pred: torch.Tensor, target: torch.Tensor, *, c: float = 1.0) -> torch.Tensor:
    r"""Per-sample Cauchy (Lorentzian) loss with scale ``c``.

    .. math:: \ell(r) = \log\left(1 + \tfrac12 (r/c)^2\right)

    The scaling of Barron's general robust loss at :math:`\alpha = 0` (*A General and Adaptive Robust Loss Function*,
    CVPR 2019), as used by Dao et al. (ICLR 2025) for latent consistency models: ``≈ r²/(2c²)`` near 0, logarithmic
    growth for outliers. Element-wise, averaged per sample.

    Example:
        >>> cauchy(torch.tensor([0.0, 2.0]), torch.zeros(2), c=1.0).round(decimals=4)
        tensor([0.0000, 1.0986])
    """
    r = residual(pred, target)
    return per_sample_mean(torch.log1p(0.5 * (r / c).square()))


def gaussian_nll(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    var: torch.Tensor | None = None,
    log_var: torch.Tensor | None = None,
    full: bool = False,
    eps: float = 1e-6,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample heteroscedastic Gaussian negative log-likelihood of ``target`` under :math:`N(\hat y, \sigma^2)`.

    .. math:: \ell = \tfrac12\left(\log\sigma^2 + \frac{(y - \hat y)^2}{\sigma^2}\right) \;[+\ \tfrac12\log 2\pi]

    Give **exactly one** of ``var`` (:math:`\sigma^2 > 0`; values below ``eps`` are clamped to ``eps`` in the value
    while the gradient passes through unchanged, as ``torch.nn.functional.gaussian_nll_loss`` does) or ``log_var``
    (:math:`\log\sigma^2`, any real; no clamp, the usual parameterisation for a network head). Its shape is that of
    ``pred``, or broadcastable to it with the batch dimension kept (e.g. ``[N, 1]`` for one variance per sample),
    or ``[N]`` with ``pred [N, D]``. ``full`` adds the constant :math:`\tfrac12\log 2\pi`. Averaged over non-batch
    dimensions. Nix & Weigend, *Estimating the Mean and Variance of the Target Probability Distribution*
    (ICNN 1994).

    Example:
        >>> gaussian_nll(torch.zeros(2), torch.tensor([1.0, 2.0]), var=torch.ones(2))
        tensor([0.5000, 2.0000])
    """
    r = residual(pred, target)
    if (var is None) == (log_var is None):
        raise ValueError("`gaussian_nll` needs exactly one of `var` (variance) or `log_var` (log-variance)")
    name, v = ("var", var) if var is not None else ("log_var", log_var)
    require_tensor(name, v)
    if not v.is_floating_point():
        raise ValueError(f"`{name}` must be a floating tensor, got {v.dtype}")
    if v.ndim == r.ndim - 1 and v.ndim >= 1 and tuple(v.shape) == tuple(r.shape[:-1]):
        v = v.unsqueeze(-1)
    if v.ndim != r.ndim or v.shape[0] != r.shape[0] or torch.broadcast_shapes(v.shape, r.shape) != r.shape:
        raise ValueError(
            f"`{name}` must have the shape of `pred` {shape_str(r)} or broadcast to it keeping the batch dimension, "
            f"got {shape_str(v)}"
        )
    v = v.to(r.dtype)
    if var is not None:
        if validate_args and bool((v < 0).any()):
            raise ValueError("`var` must be non-negative")
        v = v + (v.clamp_min(eps) - v).detach()
        loss = 0.5 * (torch.log(v) + r.square() / v)
    else:
        loss = 0.5 * (v + r.square() * torch.exp(-v))
    if full:
        loss = loss + 0.5 * _LOG_2PI
    return per_sample_mean(loss)
