r"""Predictive entropy from logits, per sample or per token (pure functions).

Everything is computed from ``log_softmax`` in float32 (half-precision logits are upcast), never as
``log(softmax(z))``:

.. math:: H(p) = -\sum_k p_k \log p_k,\qquad \log p = \mathrm{log\_softmax}(z),\ p = e^{\log p}

so saturated logits (``1e4``) give a finite ``H = 0`` with a finite gradient, and ``-inf`` logits (masked classes)
contribute nothing. The gradient is :math:`\partial H/\partial z_k = -p_k(\log p_k + H)`.
Sign convention of the regularisers (``methods/entropy.md`` §0): a **bonus** adds :math:`-\beta H` to the loss
(raises entropy: the confidence penalty of Pereyra et al. 2017), a **penalty** adds :math:`+\beta H` (entropy
minimisation).
"""

from __future__ import annotations

import torch

from lightning_losses._validation import check_number

__all__ = [
    "confidence_penalty",
    "entropy",
    "entropy_minimization",
    "per_sample_entropy",
    "sequence_entropy",
    "tsallis_entropy",
]


def _check_logits(logits: torch.Tensor) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"`logits` must be a torch.Tensor, got {type(logits).__name__}")
    if logits.ndim < 1 or not logits.is_floating_point():
        raise ValueError(f"`logits` must be a floating tensor [..., C], got {logits.dtype} {list(logits.shape)}")
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _log_probs(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(_check_logits(logits), dim=-1)
    # classes with p = 0 exactly (logit -inf) contribute 0 * log 0 = 0; zero the -inf so 0 * -inf never appears
    return logp.exp(), torch.where(torch.isneginf(logp), torch.zeros_like(logp), logp)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    r"""Shannon entropy (nats) of ``softmax(logits)`` over the last dimension.

    .. math:: H_i = -\sum_k p_{ik}\log p_{ik}

    Args:
        logits: ``[..., C]`` unnormalised scores (any float dtype; half precision is computed in float32).

    Returns:
        ``[...]`` entropies in float32 (float64 in, float64 out), in ``[0, log C]``.

    Example:
        >>> entropy(torch.zeros(2, 4)).round(decimals=4)  # uniform over 4 classes: log 4
        tensor([1.3863, 1.3863])
    """
    p, logp = _log_probs(logits)
    return -(p * logp).sum(dim=-1)


def tsallis_entropy(logits: torch.Tensor, q: float = 2.0) -> torch.Tensor:
    r"""Tsallis entropy :math:`S_q = (1 - \sum_k p_k^q)/(q - 1)`; ``q = 1`` is the Shannon entropy.

    Computed as :math:`p^q = e^{q \log p}` from ``log_softmax`` (``methods/entropy.md`` §9); ``q > 0``.

    Example:
        >>> tsallis_entropy(torch.zeros(1, 4), q=2.0)  # 1 - 4 * (1/4)^2
        tensor([0.7500])
    """
    q = check_number("q", q, low=0.0, low_open=True)
    if q == 1.0:
        return entropy(logits)
    logp = torch.log_softmax(_check_logits(logits), dim=-1)
    return (1.0 - torch.exp(q * logp).sum(dim=-1)) / (q - 1.0)


def sequence_entropy(logits: torch.Tensor, mask: torch.Tensor | None = None, *, q: float = 1.0) -> torch.Tensor:
    r"""Per-sample mean token entropy of ``logits [N, T, V]`` over the active tokens (``mask [N, T]``).

    .. math:: \bar H_i = \frac{\sum_t m_{it} H_{it}}{\max(1, \sum_t m_{it})}

    A sample without active tokens gets 0.

    Example:
        >>> logits = torch.zeros(1, 3, 2)
        >>> sequence_entropy(logits, torch.tensor([[True, True, False]])).round(decimals=4)
        tensor([0.6931])
    """
    if logits.ndim != 3:
        raise ValueError(f"`logits` must have shape [N, T, V], got {list(logits.shape)}")
    h = entropy(logits) if q == 1.0 else tsallis_entropy(logits, q)
    if mask is None:
        return h.mean(dim=-1)
    if mask.shape != h.shape:
        raise ValueError(f"`mask` must have shape [N, T] = {list(h.shape)}, got {list(mask.shape)}")
    m = mask.to(h.dtype)
    return (h * m).sum(dim=-1) / m.sum(dim=-1).clamp_min(1.0)


def per_sample_entropy(logits: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[N]`` entropies: :func:`entropy` of ``[N, C]`` logits, :func:`sequence_entropy` of ``[N, T, V]`` logits."""
    if logits.ndim == 3:
        return sequence_entropy(logits, mask)
    if logits.ndim != 2:
        raise ValueError(f"`logits` must have shape [N, C] or [N, T, V], got {list(logits.shape)}")
    return entropy(logits)


def confidence_penalty(
    logits: torch.Tensor, beta: float = 0.1, threshold: float | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Per-sample confidence penalty term (Pereyra et al., ICLR 2017 workshop): :math:`-\beta H(p_i)`.

    ``[N, T, V]`` logits use the mean entropy over the tokens where ``mask [N, T]`` is true.
    Added to a loss it gives ``loss - beta * H`` (an entropy bonus). With ``threshold = Γ`` it becomes the hinge
    :math:`\beta\max(0, \Gamma - H(p_i))`: only predictions with entropy below Γ are penalised.

    Example:
        >>> confidence_penalty(torch.zeros(1, 2), beta=1.0).round(decimals=4)
        tensor([-0.6931])
    """
    h = per_sample_entropy(logits, mask)
    if threshold is None:
        return -beta * h
    return beta * torch.clamp_min(threshold - h, 0.0)


def entropy_minimization(logits: torch.Tensor, beta: float = 0.1, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""Per-sample entropy-minimisation term :math:`+\beta H(p_i)` (a penalty on uncertain predictions).

    Example:
        >>> entropy_minimization(torch.zeros(1, 2), beta=1.0).round(decimals=4)
        tensor([0.6931])
    """
    return beta * per_sample_entropy(logits, mask)
