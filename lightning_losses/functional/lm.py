r"""Confidence-limiting and distribution-aware LM losses: DCO (pass@N coverage), MixCE and EMO (pure functions).

Token inputs follow :mod:`lightning_losses.functional.token` (``logits [N, T, V]`` aligned with ``target [N, T]``,
``ignore_index`` tokens left out, per-token losses aggregated per sequence by
:func:`~lightning_losses.functional.aggregation.aggregate_tokens`). :func:`dco` works on sequence log-probs ``[N]``
(from :func:`~lightning_losses.functional.sequence_logps`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_losses.functional.token import check_tokens, gather_targets, reduce_tokens

__all__ = ["dco", "emo", "mixce"]

_LN2 = math.log(2.0)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0`` (Mächler's two-branch form; ``-inf`` at ``x = 0``)."""
    return torch.where(x > -_LN2, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _log_coverage(s: torch.Tensor, n: float) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(log(1 - (1 - p)^n), log(1 - p))`` from ``s = log p <= 0``, finite for any ``s`` (no underflow).

    With :math:`h = -\log(1-p)` and :math:`c = \log n + \log h`, :math:`(1-p)^n = e^{-e^c}` and the log-coverage is
    :math:`\log(-\mathrm{expm1}(-e^c))`. For :math:`s < -20`, :math:`\log h = s + \log(1 + p/2 + \dots) \approx s + p/2`
    and for :math:`c < -20` the log-coverage is :math:`c - e^c/2` (errors below float64 resolution), so sequence
    log-probs of ``-1e4`` (where :math:`p` underflows) still give :math:`\log n + s`.
    """
    log1mp = _log1mexp(s)
    small = s < -20.0
    log_h = torch.where(small, s + 0.5 * torch.exp(s), torch.log(-torch.where(small, -torch.ones_like(s), log1mp)))
    c = math.log(n) + log_h
    tiny = c < -20.0
    e = torch.exp(torch.where(tiny, torch.full_like(c, -20.0), c))
    log_cov = torch.where(tiny, c - 0.5 * torch.exp(c), torch.log(-torch.expm1(-e)))
    return log_cov, log1mp


class _DCO(torch.autograd.Function):
    r"""Value :math:`-\log(1-(1-p)^N)` and derivative :math:`-F(N, p)` in ``s = log p``, both in log space."""

    @staticmethod
    def forward(ctx, s: torch.Tensor, n: float) -> torch.Tensor:  # type: ignore[override]
        s = s.clamp(max=0.0)
        log_cov, log1mp = _log_coverage(s, n)
        ctx.save_for_backward(s, log_cov, log1mp)
        ctx.n = n
        return -log_cov

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        s, log_cov, log1mp = ctx.saved_tensors
        n = ctx.n
        # F = N p (1 - p)^(N - 1) / (1 - (1 - p)^N); at p = 1 (s = 0) F = 0 for N > 1
        log_f = math.log(n) + s + (n - 1.0) * log1mp - log_cov  # n > 1 here: -inf * (n - 1) = -inf at s = 0
        return -grad * torch.exp(log_f).clamp(max=1.0), None


def dco(logps: torch.Tensor, *, n: float = 4.0) -> torch.Tensor:
    r"""DCO, Direct Coverage Optimization: the pass@N coverage loss on sequence log-probs (Chen, Raventós, Cheng,
    Ganguli, Druckmann, *Rethinking Fine-Tuning when Scaling Test-Time Compute: Limiting Confidence Improves
    Mathematical Reasoning*, NeurIPS 2025, arXiv:2502.07154).

    .. math:: \ell = -\log\big(1 - (1 - p)^N\big),\qquad p = \pi_\theta(y\mid x) = e^{s},\
        s = \textstyle\sum_t \log\pi_\theta(y_t\mid\cdot)

    the negative log-probability that at least one of ``N`` independent samples is the correct answer ``y``. Its
    gradient is :math:`F(N, p)\,\nabla(-\log p)` with :math:`F = N p(1-p)^{N-1}/(1-(1-p)^N) \in (0, 1]`: ``N = 1`` is
    cross entropy; :math:`F \to 0` as :math:`p \to 1`, so confident sequences stop pushing their confidence up.

    Computed in log space (:math:`\log(1-p) = \mathrm{log1mexp}(s)`, :math:`(1-p)^N = e^{-e^c}` with
    :math:`c = \log N + \log(-\log(1-p))`, asymptotic forms where :math:`p` or :math:`e^c` underflow) with a
    hand-written derivative, so value and gradient are finite for any :math:`s \le 0` (``-1e4`` included, where
    :math:`\ell \approx -\log N - s`; ``s = 0`` gives 0 with gradient 0). Positive ``s`` (not a log-probability) is
    clamped to 0.

    Checked: the coverage :math:`1-(1-p)^N` and its name against the authors' blog post (druckmann-lab.github.io,
    *Direct Coverage Optimization*, 2025) and the paper's abstract / OpenReview page; the loss as its negative log
    and the gradient factor ``F`` follow from it (re-derived here and tested against an explicit float64 formula).
    The authors' training code was not available to compare with; the paper's step-level (proof-tree) variant is not
    implemented.

    Args:
        logps: ``[N]`` summed token log-probs of the correct answers (with gradient).
        n: the pass@N budget ``N ≥ 1`` (real). Default 4.

    Example:
        >>> dco(torch.log(torch.tensor([0.5])), n=2)  # -log(1 - 0.25)
        tensor([0.2877])
        >>> dco(torch.tensor([-1e4]), n=4)  # -log 4 + 1e4, no underflow
        tensor([9998.6133])
    """
    if not isinstance(logps, torch.Tensor) or logps.ndim != 1 or not logps.is_floating_point():
        got = f"{logps.dtype} {list(logps.shape)}" if isinstance(logps, torch.Tensor) else type(logps).__name__
        raise ValueError(f"`logps` must be a floating tensor [N] of sequence log-probs, got {got}")
    if not n >= 1.0:
        raise ValueError(f"`n` must be >= 1, got {n!r}")
    s = logps.float() if logps.dtype in (torch.float16, torch.bfloat16) else logps
    if n == 1.0:
        return -s.clamp(max=0.0)
    return _DCO.apply(s, float(n))


def mixce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    eta: float = 0.5,
    ignore_index: int = -100,
    normalization: str = "token",
    reduction: str = "sample",
    validate_args: bool = True,
) -> torch.Tensor:
    r"""MixCE (Zhang, Wu, Irsoy, Lu, Bansal, Dredze, Rosenberg, *MixCE: Training Autoregressive Language Models by
    Mixing Forward and Reverse Cross-Entropies*, ACL 2023): the practical token-level form of
    :math:`\eta H(P, Q_\theta) + (1-\eta) H(Q_\theta, P)`,

    .. math:: \ell_t = \big(\eta + (1-\eta)\,\mathrm{sg}(q_\theta(y_t\mid y_{<t}))\big)\cdot
        \big(-\log q_\theta(y_t\mid y_{<t})\big)

    a per-token NLL reweighted by the model's own (detached) probability of the data token. ``η = 1`` is MLE.

    Checked against the authors' code (bloomberg/MixCE-acl2023 ``gpt2.py``, read only): ``q = exp(-nll)`` under
    ``no_grad`` and ``mixing_ratio·nll + (1 − mixing_ratio)·q·nll`` per token (``mixing_ratio`` is ``η``), then a
    mean over the non-padding tokens of the batch (``"token"`` here) or a sum.

    Example:
        >>> logits = torch.log(torch.tensor([[[0.25, 0.75]]]))
        >>> mixce(logits, torch.tensor([[1]]), eta=0.0).round(decimals=4)  # 0.75 * -log 0.75
        tensor([0.2158])
    """
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"`eta` must be in [0, 1], got {eta!r}")
    z, y = check_tokens(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    valid = y != ignore_index
    nll = torch.logsumexp(z, dim=-1) - gather_targets(z, y, valid)
    loss = nll * (eta + (1.0 - eta) * torch.exp(-nll.detach())) if eta < 1.0 else nll
    return reduce_tokens(loss, valid, normalization, reduction)


def emo(
    logits: torch.Tensor,
    target: torch.Tensor,
    cost_embedding: torch.Tensor,
    *,
    ignore_index: int = -100,
    max_weight: float | None = None,
    normalization: str = "token",
    reduction: str = "sample",
    validate_args: bool = True,
) -> torch.Tensor:
    r"""EMO, Earth Mover Distance Optimization (Ren, Wu, Zhu, Wang, *EMO: Earth Mover Distance Optimization for
    Auto-Regressive Language Modeling*, ICLR 2024), per token:

    .. math:: \mathrm{DEMD}_t = 1 - \Big\langle \hat e_{y_t},\ \sum_v q_{tv}\,\hat e_v \Big\rangle
        = \sum_v q_{tv}\big(1 - \cos(e_v, e_{y_t})\big),\qquad
        \ell_t = \tfrac12\Big(\mathrm{MLE}_t + \mathrm{sg}\big(\tfrac{\mathrm{MLE}_t}{\mathrm{DEMD}_t}\big)
        \mathrm{DEMD}_t\Big)

    with :math:`q_t = \mathrm{softmax}(z_t)`, :math:`\mathrm{MLE}_t = -\log q_{t,y_t}` and :math:`\hat e_v` the
    L2-normalised rows of a **frozen** cost embedding (``cost_embedding [V, D]``, detached here: pass the model's output
    embedding weight or a frozen copy of it). The value of :math:`\ell_t` equals :math:`\mathrm{MLE}_t`; the gradient is
    half MLE's plus the transport term scaled to MLE's size.

    Checked against the authors' code (DRSY/EMO ``emo_patch.py``; ``language_modeling/gpt2.py`` and the LLaMA
    variants, read only): the dynamic weight ``(mle_loss / (emo_loss + 1e-10)).detach()`` is **per token** (not a batch
    ratio), so there is no cross-sample state and nothing to reduce under DDP; the LLaMA variants cap it at 3.0
    (``max_weight=3.0`` here; default ``None``: ``emo_patch.py``). Differences: the reference smooths the one-hot
    target by ``1e-15`` before the product (negligible) and divides by ``DEMD + 1e-10``; here the divisor is
    ``max(DEMD, 1e-10)`` so that a round-off-negative DEMD cannot flip the weight's sign.

    Args:
        logits: ``[N, T, V]``; target: ``[N, T]`` (``ignore_index`` tokens left out).
        cost_embedding: ``[V, D]`` token embeddings defining the transport cost (no gradient flows into it).
        max_weight: optional cap on the dynamic weight. Default ``None``.
        validate_args: check the token ids (one host sync). Default True.

    Example:
        >>> logits, target = torch.zeros(1, 1, 3), torch.tensor([[0]])
        >>> emo(logits, target, torch.eye(3)).round(decimals=4)  # the value is MLE: log 3
        tensor([1.0986])
    """
    z, y = check_tokens(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    if not isinstance(cost_embedding, torch.Tensor) or cost_embedding.ndim != 2:
        got = list(cost_embedding.shape) if isinstance(cost_embedding, torch.Tensor) else type(cost_embedding).__name__
        raise ValueError(f"`cost_embedding` must be a tensor [V, D], got {got}")
    if cost_embedding.shape[0] != z.shape[-1]:
        raise ValueError(
            f"`cost_embedding` must have one row per vocabulary entry ({z.shape[-1]}), got {list(cost_embedding.shape)}"
        )
    if max_weight is not None and not max_weight > 0:
        raise ValueError(f"`max_weight` must be > 0 or None, got {max_weight!r}")
    valid = y != ignore_index
    logp = torch.log_softmax(z, dim=-1)
    mle = -gather_targets(logp, y, valid)
    e_hat = F.normalize(cost_embedding.detach().to(z.dtype), p=2.0, dim=-1)
    expected = logp.exp() @ e_hat  # [N, T, D]
    safe_y = torch.where(valid, y, torch.zeros_like(y))
    demd = 1.0 - (e_hat[safe_y] * expected).sum(-1)
    weight = (mle / demd.clamp_min(1e-10)).detach()
    if max_weight is not None:
        weight = weight.clamp(max=max_weight)
    loss = 0.5 * (mle + weight * demd)
    return reduce_tokens(loss, valid, normalization, reduction)
