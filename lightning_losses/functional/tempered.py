r"""Bi-tempered logistic loss (Amid, Warmuth, Anil & Koren, *Robust Bi-Tempered Logistic Loss Based on Bregman
Divergences*, NeurIPS 2019).

Tempered logarithm and exponential (``t = 1``: ``log`` / ``exp``):

.. math:: \log_t x = \frac{x^{1-t} - 1}{1 - t},\qquad \exp_t x = \big[1 + (1 - t)\,x\big]_+^{1/(1-t)}

The tempered softmax :math:`\hat y = \exp_{t_2}(a - \lambda(a))` normalises with the ``λ`` that makes
:math:`\sum_c \hat y_c = 1`; for ``t2 > 1`` it is found by the paper's fixed-point iteration (Algorithm 1). The loss is
the Bregman divergence of the convex function of :math:`\log_{t_1}`:

.. math:: \ell = \sum_c \Big[y_c\big(\log_{t_1} y_c - \log_{t_1}\hat y_c\big)
          - \frac{y_c^{2-t_1} - \hat y_c^{2-t_1}}{2 - t_1}\Big]

``t1 < 1`` bounds the loss (robust to outliers far from the boundary), ``t2 > 1`` gives the softmax a heavy tail
(robust to label noise near it). ``t1 = t2 = 1`` is the KL divergence to ``y`` (cross entropy for a one-hot ``y``).
"""

from __future__ import annotations

import torch

from lightning_losses._validation import check_number
from lightning_losses._validation.tensors import as_index, check_multiclass, not_ignored
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.functional._labels import masked

__all__ = ["bi_tempered", "exp_t", "log_t", "tempered_softmax"]


def log_t(x: torch.Tensor, t: float) -> torch.Tensor:
    """Tempered logarithm :math:`(x^{1-t} - 1)/(1 - t)` (``log`` at ``t = 1``)."""
    if t == 1.0:
        return torch.log(x)
    return (x.pow(1.0 - t) - 1.0) / (1.0 - t)


def exp_t(x: torch.Tensor, t: float) -> torch.Tensor:
    """Tempered exponential :math:`[1 + (1 - t)x]_+^{1/(1-t)}` (``exp`` at ``t = 1``)."""
    if t == 1.0:
        return torch.exp(x)
    return (1.0 + (1.0 - t) * x).clamp_min(0.0).pow(1.0 / (1.0 - t))


def _normalizer(a: torch.Tensor, t: float, num_iters: int) -> torch.Tensor:
    """``λ [N, 1]`` with ``Σ exp_t(a - λ) = 1`` for ``t > 1``, by the fixed-point iteration (no gradient)."""
    with torch.no_grad():
        mu = a.amax(dim=-1, keepdim=True)
        a0 = a - mu
        shifted = a0
        for _ in range(num_iters):
            z = exp_t(shifted, t).sum(dim=-1, keepdim=True)
            shifted = a0 * z.pow(1.0 - t)
        z = exp_t(shifted, t).sum(dim=-1, keepdim=True)
        return -log_t(1.0 / z, t) + mu


def tempered_softmax(a: torch.Tensor, t: float, num_iters: int = 5) -> torch.Tensor:
    r"""Tempered softmax :math:`\exp_t(a - \lambda(a))` over the last axis (``softmax`` at ``t = 1``; ``t >= 1``).

    ``λ`` comes from ``num_iters`` fixed-point steps without a graph; its gradient is attached implicitly,
    :math:`\partial\lambda/\partial a_j = \hat y_j^{\,t}/\sum_c \hat y_c^{\,t}` (from differentiating
    :math:`\sum_c \exp_t(a_c - \lambda) = 1`, with :math:`\exp_t' = \exp_t^{\,t}`), which is exact at the solution.
    """
    if t == 1.0:
        return torch.softmax(a, dim=-1)
    lam = _normalizer(a, t, num_iters)
    with torch.no_grad():
        w = exp_t(a - lam, t).pow(t)
        w = w / w.sum(dim=-1, keepdim=True)
    lam = lam + ((a - a.detach()) * w).sum(dim=-1, keepdim=True)
    return exp_t(a - lam, t)


def bi_tempered(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    t1: float = 0.8,
    t2: float = 1.2,
    label_smoothing: float = 0.0,
    num_iters: int = 10,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample bi-tempered logistic loss (module docstring for the formulas).

    ``logits [N, C]`` with integer labels ``[N]`` (optionally label-smoothed, PyTorch's construction ``ε / C``) or
    soft targets ``[N, C]``. ``t1`` in ``[0, 1]`` (default 0.8), ``t2 >= 1`` (default 1.2); the authors' code has no
    default temperatures (``t1 < 1`` bounds the loss, ``t2 > 1`` gives the heavy tail). ``num_iters`` fixed-point
    steps (default 10: the normaliser's error ``|Σŷ - 1|`` is below ``1e-5`` for ``t2 <= 1.5`` at logits of scale 5;
    the authors' code uses 5, whose error reaches ``1e-3`` at ``t2 = 1.5``). Ignored samples (``ignore_index``) get
    loss 0. The authors' smoothing ``(1 - Kε/(K-1))y + ε/(K-1)`` is this one with ``label_smoothing = Kε/(K-1)``;
    their ``log_t1(y + 1e-10)`` is exact here (:math:`y\log_{t_1}y = 0` at ``y = 0``).

    Example:
        >>> bi_tempered(torch.tensor([[0.0, 0.0]]), torch.tensor([0]), t1=1.0, t2=1.0).round(decimals=4)
        tensor([0.6931])
    """
    t1 = check_number("t1", t1, low=0.0, high=1.0)
    t2 = check_number("t2", t2, low=1.0)
    soft = check_multiclass(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    a = _upcast(logits)
    num_classes = a.shape[-1]
    if soft:
        y, valid = target.to(a.dtype), None
    else:
        valid = not_ignored(target, ignore_index)
        safe = as_index(torch.where(valid, target, torch.zeros_like(target)))
        y = torch.zeros_like(a).scatter_(-1, safe.unsqueeze(-1), 1.0)
    if label_smoothing > 0:
        y = y * (1.0 - label_smoothing) + label_smoothing / num_classes
    positive = y > 0
    if t2 == 1.0:  # the softmax: log_t1 of it from the exact log-probabilities (finite at any logit gap)
        logp = torch.log_softmax(a, dim=-1)
        probs = logp.exp()
        log_t1_p = logp if t1 == 1.0 else torch.expm1((1.0 - t1) * logp) / (1.0 - t1)
    else:  # a probability that underflowed to 0 is read as the smallest normal one where y > 0 (finite gradient)
        probs = tempered_softmax(a, t2, num_iters)
        log_t1_p = log_t(torch.where(positive, probs.clamp_min(torch.finfo(probs.dtype).tiny), 1.0), t1)
    y_log_y = torch.where(positive, y * log_t(torch.where(positive, y, torch.ones_like(y)), t1), 0.0)
    cross = torch.where(positive, y * log_t1_p, 0.0)
    loss = y_log_y - cross - (y.pow(2.0 - t1) - probs.pow(2.0 - t1)) / (2.0 - t1)
    loss = loss.sum(dim=-1)
    return loss if valid is None else masked(loss, valid)
