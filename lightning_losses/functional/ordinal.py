r"""Regression as classification and ordinal losses (pure functions): ``logits [N, B]`` -> ``[N]``.

* :func:`hl_gauss`: cross entropy against a Gaussian histogram of a real target (Farebrother et al., ICML 2024).
* :func:`ordinal_wasserstein`: distance between the CDF of ``softmax(logits)`` and the target's CDF over ordered bins.
"""

from __future__ import annotations

import math

import torch

from lightning_losses._validation.tensors import check_multiclass, require_tensor, shape_str
from lightning_losses._validation.tensors import upcast_half as _upcast

__all__ = ["hl_gauss", "hl_gauss_predict", "hl_gauss_target", "ordinal_wasserstein"]


def _support(min_value: float, max_value: float, num_bins: int, like: torch.Tensor) -> torch.Tensor:
    return torch.linspace(min_value, max_value, num_bins + 1, dtype=like.dtype, device=like.device)


def hl_gauss_target(
    target: torch.Tensor, *, min_value: float, max_value: float, num_bins: int, sigma: float
) -> torch.Tensor:
    r"""HL-Gauss class probabilities ``[N, num_bins]`` for real targets ``[N]``.

    Bin edges :math:`z_0 < \dots < z_B` split ``[min_value, max_value]`` evenly; with :math:`\Phi` the normal CDF,

    .. math:: p_i = \frac{\Phi\big((z_{i+1} - y)/\sigma\big) - \Phi\big((z_i - y)/\sigma\big)}
                         {\Phi\big((z_B - y)/\sigma\big) - \Phi\big((z_0 - y)/\sigma\big)}

    (the Gaussian mass of each bin, renormalised to the support). Targets are clamped into
    ``[min_value, max_value]`` first, so a target outside the support maps to its nearest end instead of ``0/0``.

    Example:
        >>> hl_gauss_target(torch.tensor([0.5]), min_value=0.0, max_value=1.0, num_bins=2, sigma=0.25)
        tensor([[0.5000, 0.5000]])
    """
    y = _upcast(target).clamp(min_value, max_value)
    edges = _support(min_value, max_value, num_bins, y)
    cdf = torch.special.erf((edges - y.unsqueeze(-1)) / (math.sqrt(2.0) * sigma))  # 2 Phi - 1: differences match
    mass = cdf[..., 1:] - cdf[..., :-1]
    return mass / (cdf[..., -1:] - cdf[..., :1])


def hl_gauss_predict(logits: torch.Tensor, *, min_value: float, max_value: float) -> torch.Tensor:
    r"""Turn HL-Gauss logits ``[N, B]`` back into a real prediction ``[N]``: :math:`\hat y = \sum_i
    \mathrm{softmax}(z)_i\, c_i`, with :math:`c_i` the bin centres.

    Example:
        >>> hl_gauss_predict(torch.tensor([[0.0, 0.0]]), min_value=0.0, max_value=1.0)
        tensor([0.5000])
    """
    probs = torch.softmax(_upcast(logits), dim=-1)
    edges = _support(min_value, max_value, logits.shape[-1], probs)
    centers = 0.5 * (edges[1:] + edges[:-1])
    return probs @ centers


def hl_gauss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    min_value: float,
    max_value: float,
    sigma: float,
) -> torch.Tensor:
    r"""Per-sample HL-Gauss loss (*Stop Regressing: Training Value Functions via Classification for Scalable Deep
    RL*, Farebrother et al., ICML 2024): cross entropy of ``logits [N, B]`` against :func:`hl_gauss_target` of the
    real ``target [N]``.

    .. math:: \ell_i = -\sum_{b} p_b(y_i)\,\log\mathrm{softmax}(z_i)_b

    ``B = logits.shape[1]`` is the number of bins; recover a prediction with :func:`hl_gauss_predict`.

    Example:
        >>> hl_gauss(torch.zeros(1, 2), torch.tensor([0.5]), min_value=0.0, max_value=1.0, sigma=0.25).round(decimals=4)
        tensor([0.6931])
    """
    require_tensor("logits", logits)
    require_tensor("target", target)
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(
            f"`logits` must be a floating tensor of shape [N, num_bins], got {logits.dtype} {shape_str(logits)}"
        )
    if not target.is_floating_point() or target.shape != logits.shape[:1]:
        raise ValueError(
            f"`target` must be a floating tensor of shape [N] = [{logits.shape[0]}] (real values), "
            f"got {target.dtype} {shape_str(target)}"
        )
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    probs = hl_gauss_target(
        target.to(logp.dtype), min_value=min_value, max_value=max_value, num_bins=logits.shape[-1], sigma=sigma
    )
    return -(probs * logp).sum(dim=-1)


def ordinal_wasserstein(
    logits: torch.Tensor, target: torch.Tensor, *, p: int = 1, bin_width: float = 1.0, validate_args: bool = True
) -> torch.Tensor:
    r"""Per-sample Wasserstein (earth mover's) loss between ordered-class distributions, from their CDFs.

    With :math:`F_q(c) = \sum_{j \le c}\mathrm{softmax}(z)_j` and :math:`F_y` the target's CDF
    (:math:`F_y(c) = [c \ge y]` for an integer label, cumulative sums for a probability vector):

    .. math:: \ell_i = \Delta\sum_{c=0}^{C-2} |F_q(c) - F_y(c)|^p

    ``p = 1`` is the 1-Wasserstein distance on bins ``Δ`` apart (``bin_width``); ``p = 2`` is the squared-EMD loss
    of Hou, Yu & Samaras (*Squared Earth Mover's Distance-based Loss for Training Deep Neural Networks*, 2016),
    smooth everywhere. Used for binned targets by *Fine-Tuning a Time Series Foundation Model with Wasserstein Loss*
    (2024). Inputs: ``logits [N, C]`` over classes in their natural order, ``target [N]`` integer labels or
    ``[N, C]`` probabilities.

    Example:
        >>> ordinal_wasserstein(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([0])).round(decimals=4)
        tensor([1.])
    """
    soft = check_multiclass(logits, target, validate_args=validate_args)
    probs = torch.softmax(_upcast(logits), dim=-1)
    cdf = probs.cumsum(dim=-1)[:, :-1]
    if soft:
        target_cdf = target.to(probs.dtype).cumsum(dim=-1)[:, :-1]
    else:
        classes = torch.arange(logits.shape[-1] - 1, device=logits.device)
        target_cdf = (classes.unsqueeze(0) >= target.unsqueeze(-1)).to(probs.dtype)
    diff = cdf - target_cdf
    dist = diff.abs() if p == 1 else diff.square()
    return bin_width * dist.sum(dim=-1)
