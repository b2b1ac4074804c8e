r"""Per-sample margin and count losses with a PyTorch counterpart: multi-class margin (hinge) and Poisson NLL.

Both return ``[N]`` and match ``torch.nn.functional`` with ``reduction="none"`` (for ``poisson_nll`` averaged over
the non-batch dimensions). Half-precision inputs are computed in float32.
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

__all__ = ["multi_margin", "poisson_nll"]


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
