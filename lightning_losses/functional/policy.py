r"""Policy-gradient losses for RL fine-tuning of language models, with the RL literature's entropy controls.

Inputs are per token, ``[N, T]`` (``N`` sampled responses, ``T`` padded length): ``logps`` (log-prob of each sampled
token under the current policy, with gradient), ``old_logps`` (under the policy that sampled it; detached),
``advantages`` (``[N]`` per response, broadcast over tokens, or ``[N, T]``), ``mask`` (1 on response tokens). Each
loss returns one value per response, ``[N]``; tokens are normalised by
:func:`~lightning_losses.functional.aggregation.aggregate_tokens` (``"token"``, ``"sequence"``, ``"sum"``,
``"constant"``; shared with the token losses, linear cross-entropy and entropy control).

Token statistics of the covariance controls (Clip-Cov / KL-Cov, Cui et al. 2025) are **global** under DDP: the
centring means come from one all-reduce and the selection runs on the all-gathered token scores in rank order with
a generator seeded identically on every rank, so k ranks select exactly what one process selects on the
concatenated batch (tested). The reference (PRIME-RL / verl) centres and selects per micro-batch instead.
"""

from __future__ import annotations

import torch

from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.distributed import all_gather_with_grad, global_sum, rank
from lightning_losses.functional.aggregation import NORMALIZATIONS, aggregate_tokens  # moved; re-exported here
from lightning_losses.functional.policy_entropy import preserve_clipped_gradients

__all__ = [
    "NORMALIZATIONS",
    "aggregate_tokens",
    "clamped_entropy",
    "clip_cov_selection",
    "grpo",
    "group_advantages",
    "kl_cov_selection",
    "ppo_clip",
    "token_covariance",
]

COV_CONTROLS = ("none", "clip_cov", "kl_cov")


def _check_tokens(
    logps: torch.Tensor, mask: torch.Tensor, **others: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    for name, t in {"logps": logps, "mask": mask, **others}.items():
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if logps.ndim != 2 or not logps.is_floating_point():
        raise ValueError(f"`logps` must be a floating tensor [N, T] (per-token log-probs), got {list(logps.shape)}")
    if mask.shape != logps.shape:
        raise ValueError(f"`mask` must have the shape of `logps` {list(logps.shape)}, got {list(mask.shape)}")
    for name, t in others.items():
        if t is None:
            continue
        allowed = (logps.shape, logps.shape[:1]) if name == "advantages" else (logps.shape,)
        if t.shape not in allowed:
            want = " or ".join(str(list(s)) for s in allowed)
            raise ValueError(f"`{name}` must have shape {want}, got {list(t.shape)}")
    return _upcast(logps), mask.to(_upcast(logps).dtype)


def group_advantages(
    rewards: torch.Tensor, group: torch.Tensor, *, normalize_std: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    r"""GRPO's group-relative advantages :math:`A_i = (r_i - \bar r_{g(i)}) / (\mathrm{std}_{g(i)} + \epsilon)`.

    ``group`` holds the prompt id of each response (all responses of a prompt on one rank). The standard deviation is
    the unbiased one and a group of one gets mean 0 and std 1 (verl's ``compute_grpo_outcome_advantage``);
    ``normalize_std=False`` is Dr. GRPO (mean-centring only).

    Example:
        >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), torch.tensor([0, 0, 1, 1]))
        tensor([ 0.7071, -0.7071,  0.0000,  0.0000])
    """
    if rewards.ndim != 1 or group.shape != rewards.shape or group.is_floating_point():
        raise ValueError(f"`rewards` must be [N] and `group` integer [N], got {list(rewards.shape)}, {group.dtype}")
    rewards = _upcast(rewards.detach())
    ids, inverse = torch.unique(group, return_inverse=True)
    count = torch.zeros(ids.numel(), dtype=rewards.dtype, device=rewards.device).index_add_(
        0, inverse, torch.ones_like(rewards)
    )
    mean = torch.zeros_like(count).index_add_(0, inverse, rewards) / count
    var = torch.zeros_like(count).index_add_(0, inverse, (rewards - mean[inverse]).square()) / (count - 1).clamp_min(1)
    single = count[inverse] < 2
    centred = torch.where(single, rewards, rewards - mean[inverse])
    if not normalize_std:
        return centred
    std = torch.where(single, torch.ones_like(rewards), var.sqrt()[inverse])
    return centred / (std + eps)


def clamped_entropy(logits: torch.Tensor, clamp: float = 0.0) -> torch.Tensor:
    r"""Token entropy of the policy renormalised after dropping the lowest ``clamp`` fraction of logits (AEnt).

    :math:`H = \mathrm{logsumexp}(\tilde z) - \sum_v \mathrm{softmax}(\tilde z)_v \tilde z_v` over the kept
    vocabulary, with the ``int(V·clamp)`` smallest logits removed (Shen, *On Entropy Control in LLM-RL Algorithms*,
    2025; matches ``clamped_softmax_entropy`` in the authors' AReaL recipe). ``clamp = 0`` is the ordinary entropy.

    Args:
        logits: ``[..., V]``; the result is ``[...]`` with gradient (the dropped set is chosen without gradient).

    Example:
        >>> clamped_entropy(torch.zeros(1, 4), clamp=0.5)  # two of four equal logits kept: log 2
        tensor([0.6931])
    """
    if not 0.0 <= clamp < 1.0:
        raise ValueError(f"`clamp` must be in [0, 1), got {clamp!r}")
    z = _upcast(logits)
    k = int(z.shape[-1] * clamp)
    if k > 0:
        with torch.no_grad():
            drop = torch.zeros_like(z, dtype=torch.bool)
            drop.scatter_(-1, torch.topk(z.detach(), k, dim=-1, largest=False).indices, True)
        z = z.masked_fill(drop, float("-inf"))
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    return -(p * torch.where(p > 0, logp, torch.zeros_like(logp))).sum(-1)


def token_covariance(logps: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    r"""Detached per-token :math:`\mathrm{Cov}_t = (A_t - \bar A)(\log\pi_t - \overline{\log\pi})`, means over the valid
    tokens of the **global** batch (one all-reduce of three sums); 0 on masked tokens.

    Example:
        >>> token_covariance(torch.tensor([[-1.0, -3.0]]), torch.tensor([[1.0, -1.0]]), torch.ones(1, 2))
        tensor([[1., 1.]])
    """
    lp, adv, m = logps.detach(), advantages.detach().to(logps.dtype), mask.to(logps.dtype)
    sums = global_sum(torch.stack([(adv * m).sum(), (lp * m).sum(), m.sum()]))
    n = sums[2].clamp_min(1.0)
    return (adv - sums[0] / n) * (lp - sums[1] / n) * m


def _gather_valid(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All-gather a flat ``[K_rank]`` float tensor in rank order; returns ``(global values, is-mine flags)``."""
    tagged = torch.stack([values.to(torch.float64), torch.full_like(values, rank(), dtype=torch.float64)], dim=1)
    gathered = all_gather_with_grad(tagged.contiguous())
    return gathered[:, 0], gathered[:, 1] == rank()


def _scatter_selection(mask: torch.Tensor, selected_valid: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(mask.shape, dtype=torch.bool, device=mask.device)
    out[mask.bool()] = selected_valid
    return out


def clip_cov_selection(
    cov: torch.Tensor,
    mask: torch.Tensor,
    eligible: torch.Tensor,
    *,
    ratio: float = 2e-4,
    bounds: tuple[float, float] = (1.0, 5.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    r"""Clip-Cov's tokens to detach: ``max(1, int(ratio · T_g))`` picked uniformly at random among the valid, eligible
    tokens with ``lb < Cov < ub`` of the global batch (``T_g`` its valid tokens); returns a bool ``[N, T]``.

    The draw is a permutation from ``generator`` (CPU; seed it identically on every rank) over the globally ordered
    candidates, so every rank agrees on the selection. One host sync (the candidate count), as in the reference.
    """
    valid = mask.bool()
    lb, ub = bounds
    cand = (eligible.bool() & (cov > lb) & (cov < ub))[valid]
    flags, mine = _gather_valid(cand.to(cov.dtype))
    n_select = max(int(ratio * flags.numel()), 1)
    positions = torch.nonzero(flags > 0.5).squeeze(-1)
    chosen = torch.zeros_like(flags, dtype=torch.bool)
    if positions.numel():
        perm = torch.randperm(positions.numel(), generator=generator)[:n_select].to(positions.device)
        chosen[positions[perm]] = True
    return _scatter_selection(mask, chosen[mine])


def kl_cov_selection(cov: torch.Tensor, mask: torch.Tensor, *, ratio: float = 2e-4) -> torch.Tensor:
    """KL-Cov's tokens: the top ``max(1, int(ratio · T_g))`` valid tokens by covariance over the global batch (ties
    broken by global position); returns a bool ``[N, T]``."""
    values, mine = _gather_valid(cov[mask.bool()])
    chosen = torch.zeros_like(values, dtype=torch.bool)
    if values.numel():
        k = min(max(int(ratio * values.numel()), 1), values.numel())
        order = torch.sort(values, descending=True, stable=True).indices[:k]
        chosen[order] = True
    return _scatter_selection(mask, chosen[mine])


def ppo_clip(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    normalization: str = "token",
    entropy: torch.Tensor | None = None,
    entropy_coef: float | torch.Tensor = 0.0,
    ref_logps: torch.Tensor | None = None,
    kl_coef: float = 0.0,
    cov_control: str = "none",
    cov_ratio: float = 2e-4,
    clip_cov_bounds: tuple[float, float] = (1.0, 5.0),
    kl_cov_coef: float = 1.0,
    generator: torch.Generator | None = None,
    clip_grad_coefs: tuple[float, float] | None = None,
    token_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    r"""PPO's clipped surrogate per token, aggregated per response (Schulman et al., 2017), with entropy controls.

    With :math:`\rho_t = \exp(\log\pi_t - \log\pi^{old}_t)` (log-ratio clamped at 20 before ``exp``):

    .. math:: \ell_t = \max\big(-A_t\rho_t,\ -A_t\,\mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon_{high})\big)
        - c_H H_t + \beta_{KL}\big(e^{\log\pi^{ref}_t-\log\pi_t} - (\log\pi^{ref}_t-\log\pi_t) - 1\big)

    plus dual clipping :math:`\min(\ell_t, -c A_t)` for :math:`A_t < 0` when ``dual_clip = c`` (Ye et al. 2020), the
    entropy bonus when ``entropy`` (``[N, T]``, e.g. :func:`clamped_entropy`) and ``entropy_coef`` are given, and the
    k3 KL to a reference policy when ``kl_coef > 0`` (GRPO). ``cov_control``: ``"clip_cov"`` zeroes the loss (value
    and gradient) of the tokens picked by :func:`clip_cov_selection` among those PPO did not clip; ``"kl_cov"`` drops
    the ratio clipping and adds ``kl_cov_coef · |log π − log π_old|`` on the top-covariance tokens of
    :func:`kl_cov_selection` (verl's ``compute_policy_loss_clip_cov`` / ``_kl_cov``, whose KL coefficient falls back
    to 1.0: pinned here as ``kl_cov_coef = 1.0``). ``clip_grad_coefs = (β1, β2)`` gives the clipped tokens CE-GPPO's
    bounded gradient (:func:`~lightning_losses.functional.policy_entropy.preserve_clipped_gradients`);
    ``token_weights`` (``[N, T]``, detached, e.g. STEER's
    :func:`~lightning_losses.functional.policy_entropy.steer_weights`) multiply the policy-gradient term of each token
    (after clipping and the covariance controls, before the entropy bonus and the KL term).

    Example:
        >>> lp = torch.tensor([[-1.0, -2.0]])
        >>> ppo_clip(lp, lp, torch.tensor([1.0]), torch.ones(1, 2))  # ratio 1: -A per token
        tensor([-1.])
    """
    lp, m = _check_tokens(logps, mask, old_logps=old_logps, advantages=advantages, ref_logps=ref_logps, entropy=entropy)
    if cov_control not in COV_CONTROLS:
        raise ValueError(f"`cov_control` must be one of {COV_CONTROLS}, got {cov_control!r}")
    adv = advantages.detach().to(lp.dtype)
    adv = adv.unsqueeze(-1).expand_as(lp) if adv.ndim == 1 else adv
    log_ratio = lp - old_logps.detach().to(lp.dtype)
    ratio = torch.exp(log_ratio.clamp(max=20.0))
    unclipped = -adv * ratio
    high = clip_eps if clip_eps_high is None else clip_eps_high
    clipped = -adv * ratio.clamp(1.0 - clip_eps, 1.0 + high)
    if cov_control == "kl_cov":
        cov = token_covariance(lp, adv, m)
        top = kl_cov_selection(cov, m, ratio=cov_ratio)
        token = torch.where(top, unclipped + kl_cov_coef * log_ratio.abs(), unclipped)
    else:
        token = torch.maximum(unclipped, clipped)
        if clip_grad_coefs is not None:
            token = preserve_clipped_gradients(
                token, log_ratio, adv, low=1.0 - clip_eps, high=1.0 + high, coefs=clip_grad_coefs
            )
        if dual_clip is not None:
            token = torch.where(adv < 0, torch.minimum(token, -adv * dual_clip), token)
        if cov_control == "clip_cov":
            cov = token_covariance(lp, adv, m)
            eligible = ~(clipped > unclipped)
            drop = clip_cov_selection(cov, m, eligible, ratio=cov_ratio, bounds=clip_cov_bounds, generator=generator)
            token = torch.where(drop, torch.zeros_like(token), token)
    if token_weights is not None:
        token = token * token_weights.detach().to(token.dtype)
    if entropy is not None:
        token = token - entropy_coef * _upcast(entropy)
    if kl_coef:
        if ref_logps is None:
            raise ValueError("`ref_logps` [N, T] is required when `kl_coef` > 0")
        diff = (ref_logps.detach().to(lp.dtype) - lp).clamp(-20.0, 20.0)
        token = token + kl_coef * (torch.exp(diff) - diff - 1.0)
    return aggregate_tokens(token, m, normalization)


def grpo(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    normalization: str = "sequence",
    **kwargs,
) -> torch.Tensor:
    r"""GRPO's per-response loss (Shao et al., *DeepSeekMath*, 2024): :func:`ppo_clip` with the token mean taken within
    each response (``normalization="sequence"``) and the k3 KL to the reference (``ref_logps``, ``kl_coef``; the paper
    uses 0.04, TRL now defaults to 0). Advantages are group-relative (:func:`group_advantages`). Every other keyword
    is :func:`ppo_clip`'s.

    Example:
        >>> lp = torch.tensor([[-1.0, -2.0, 0.0]])
        >>> grpo(lp, lp, torch.tensor([0.5]), torch.tensor([[1, 1, 0]]), ref_logps=lp, kl_coef=0.04)
        tensor([-0.5000])
    """
    return ppo_clip(logps, old_logps, advantages, mask, normalization=normalization, **kwargs)
