r"""Per-sample margin and count losses: multi-class margin (hinge), LDAM and Poisson NLL.

Each returns ``[N]``; ``multi_margin`` and ``poisson_nll`` match ``torch.nn.functional`` with ``reduction="none"`` (for
``poisson_nll`` averaged over the non-batch dimensions). Half-precision inputs are computed in float32.
"""

from __future__ import annotations

import math

import torch

from lightning_losses._validation.tensors import (
    as_index,
    check_multiclass,
    check_per_class,
    check_regression,
    not_ignored,
)
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.functional._labels import masked
from lightning_losses.functional.regression import per_sample_mean

__all__ = ["ldam", "ldam_margins", "multi_margin", "poisson_nll"]


def multi_margin(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    p: int = 1,
    margin: float = 1.0,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Multi-class hinge loss (Weston & Watkins, *Support Vector Machines for Multi-Class Pattern Recognition*, 1999;
    the form of ``torch.nn.MultiMarginLoss``):

    .. math:: \ell_i = \frac{1}{C}\sum_{j \ne y_i} w_{y_i}\,\max(0,\ m - z_{i,y_i} + z_{ij})^p

    ``p`` is 1 (hinge) or 2 (squared hinge), ``m = margin`` (default 1), ``w`` optional per-class weights ``[C]``
    (the label's weight, as torch). Ignored samples (``ignore_index``) get loss 0.

    Example:
        >>> multi_margin(torch.tensor([[0.1, 0.2, 0.4, 0.8]]), torch.tensor([3]))
        tensor([0.3250])
    """
    if p not in (1, 2):
        raise ValueError(f"`p` must be 1 or 2, got {p!r}")
    if check_multiclass(logits, target, ignore_index=ignore_index, validate_args=validate_args):
        raise ValueError("`multi_margin` takes integer labels `target [N]`; soft targets are not supported")
    z = _upcast(logits)
    valid = not_ignored(target, ignore_index)
    safe = as_index(torch.where(valid, target, torch.zeros_like(target)))
    z_y = z.gather(-1, safe.unsqueeze(-1))
    hinge = (margin - z_y + z).clamp_min(0.0)
    if p == 2:
        hinge = hinge.square()
    hinge = hinge.scatter(-1, safe.unsqueeze(-1), 0.0)  # j != y
    loss = hinge.sum(dim=-1) / z.shape[-1]
    if weight is not None:
        check_per_class("weight", weight, z.shape[-1])
        loss = loss * weight.to(device=z.device, dtype=z.dtype)[safe]
    return masked(loss, valid)


def ldam_margins(samples_per_class: torch.Tensor, max_margin: float) -> torch.Tensor:
    r"""LDAM's per-class margins :math:`m_c = m_{max}\, n_c^{-1/4} / \max_j n_j^{-1/4}` (float64; the rarest class
    gets ``max_margin``; counts below 1 count as 1).

    Example:
        >>> ldam_margins(torch.tensor([16.0, 1.0]), 0.5)
        tensor([0.2500, 0.5000], dtype=torch.float64)
    """
    raw = samples_per_class.to(torch.float64).clamp_min(1.0).pow(-0.25)
    return raw * (max_margin / raw.max())


def ldam(
    logits: torch.Tensor,
    target: torch.Tensor,
    margins: torch.Tensor,
    *,
    scale: float = 30.0,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample label-distribution-aware margin loss (Cao, Wei, Gaidon, Arechiga & Ma, *Learning Imbalanced
    Datasets with Label-Distribution-Aware Margin Loss*, NeurIPS 2019):

    .. math:: \ell_i = -\log\frac{e^{s(z_{iy} - m_y)}}{e^{s(z_{iy} - m_y)} + \sum_{j\ne y} e^{s z_{ij}}}

    with per-class margins ``margins [C]`` (:func:`ldam_margins`: :math:`m_c \propto n_c^{-1/4}`) and scale ``s``
    applied to every logit, as the authors' code (which feeds cosine logits of a normalised last layer; ``s = 30``).
    Samples labelled ``ignore_index`` get 0. The deferred re-weighting (DRW) of the paper is the ``class_balanced``
    reweighter with ``start_epoch``.

    Example:
        >>> ldam(torch.zeros(2, 2), torch.tensor([0, 1]), torch.tensor([0.0, 0.1]), scale=10.0).round(decimals=4)
        tensor([0.6931, 1.3133])
    """
    if check_multiclass(logits, target, ignore_index=ignore_index, validate_args=validate_args):
        raise ValueError("`ldam` takes integer labels `target [N]`; soft targets are not supported")
    check_per_class("margins", margins, logits.shape[-1])
    z = _upcast(logits)
    valid = not_ignored(target, ignore_index)
    safe = as_index(torch.where(valid, target, torch.zeros_like(target))).unsqueeze(-1)
    shift = margins.to(device=z.device, dtype=z.dtype)[safe]
    shifted = z.scatter(-1, safe, z.gather(-1, safe) - shift) * scale
    loss = torch.logsumexp(shifted, dim=-1) - shifted.gather(-1, safe).squeeze(-1)
    return masked(loss, valid)


def poisson_nll(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    log_input: bool = True,
    full: bool = False,
    eps: float = 1e-8,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Poisson negative log-likelihood of counts ``target`` given the rate ``pred`` (``torch.nn.PoissonNLLLoss``):

    .. math:: \ell = e^{x} - y\,x \ \ (\texttt{log\_input}), \qquad \ell = x - y\log(x + \varepsilon)\ \ (\text{else})

    up to the constant :math:`\log y!`; ``full=True`` adds its Stirling approximation
    :math:`y\log y - y + \tfrac12\log(2\pi y)` for :math:`y > 1`. ``pred [N]`` or ``[N, ...]``; the mean over the
    non-batch dimensions gives ``[N]``. ``validate_args`` checks that the counts are non-negative (one host sync).

    Example:
        >>> poisson_nll(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 2.0])).round(decimals=4)
        tensor([1.0000, 0.7183])
    """
    check_regression(pred, target)
    x = _upcast(pred)
    y = target.to(x.dtype)
    if validate_args and y.numel() and not bool((y >= 0).all()):
        raise ValueError("`target` of `poisson_nll` must hold non-negative counts")
    loss = torch.exp(x) - y * x if log_input else x - y * torch.log(x + eps)
    if full:
        safe = torch.where(y > 1, y, torch.ones_like(y))
        stirling = safe * torch.log(safe) - safe + 0.5 * torch.log(2 * math.pi * safe)
        loss = loss + torch.where(y > 1, stirling, torch.zeros_like(y))
    return per_sample_mean(loss)
