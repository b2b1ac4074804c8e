r"""Token-level entropy controls of the RL policy losses: STEER's token weights and CE-GPPO's gradient-preserving clip.

Both act inside :func:`~lightning_losses.functional.policy.ppo_clip` (``token_weights=``, ``clip_grad_coefs=``) and
are registered as the losses ``steer`` and ``ce_gppo`` (:mod:`lightning_losses.losses.policy_entropy`).

* **STEER** (Hao et al., *Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective*, 2025,
  arXiv:2510.10150; authors' code zz-haooo/STEER ``compute_token_weights``): each token's policy-gradient loss is
  multiplied by a detached weight that shrinks with the token's first-order entropy change :math:`|\Omega_t|`.
* **CE-GPPO** (Su et al., *CE-GPPO: Coordinating Entropy via Gradient-Preserving Clipping Policy Optimization*,
  2025, arXiv:2509.20712; authors' code Kwai-Klear/CE-GPPO ``compute_gppo_loss_general_beta``): tokens PPO clips
  keep a bounded gradient through a stop-gradient ratio :math:`r/\mathrm{sg}(r)`.

Under DDP STEER's normalising statistics (the smallest and largest :math:`|\Omega|` over the valid tokens) are taken
over the **global** batch (one all-reduce): k ranks give the weights one process gives on the concatenated batch. The
authors' verl code takes them per micro-batch on each GPU.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from lightning_losses import distributed
from lightning_losses._validation.tensors import upcast_half as _upcast

__all__ = ["STEER_MAPPINGS", "preserve_clipped_gradients", "steer_omega", "steer_weights"]

STEER_MAPPINGS = ("exp", "linear")

_K_FLOOR = 0.02  # the authors' floor on max |Ω| in k = -log(λ_min) / max(max |Ω|, 0.02)


def steer_omega(
    logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, entropy: torch.Tensor
) -> torch.Tensor:
    r"""STEER's per-token entropy-change estimate :math:`\Omega_t` (detached), as in the authors' code:

    .. math:: \Omega_t = \frac{A_t}{\pi_{old}(y_t)}\;\pi(y_t)\,\big(1 - \pi(y_t)\big)\,\big(\log\pi(y_t) + H_t\big)

    with :math:`\pi(y_t) = e^{\log\pi_t}` clamped to :math:`[10^{-8}, 1 - 10^{-8}]`, :math:`\pi_{old}` clamped to
    :math:`[10^{-8}, 1]` and :math:`H_t` the current policy's token entropy; a non-finite value becomes 0.

    Example:
        >>> lp = torch.log(torch.tensor([[0.5]]))
        >>> steer_omega(lp, lp, torch.tensor([1.0]), torch.tensor([[0.0]]))  # (1 / 0.5) * 0.25 * log 0.5
        tensor([[-0.3466]])
    """
    lp = _upcast(logps.detach())
    adv = advantages.detach().to(lp.dtype)
    adv = adv.unsqueeze(-1).expand_as(lp) if adv.ndim == 1 else adv
    p = lp.exp().clamp(1e-8, 1.0 - 1e-8)
    p_old = old_logps.detach().to(lp.dtype).exp().clamp(1e-8, 1.0)
    omega = adv / p_old * p * (1.0 - p) * (p.log() + entropy.detach().to(lp.dtype))
    return torch.where(torch.isfinite(omega), omega, torch.zeros_like(omega))


def _global_range(values: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(min, max)`` of ``values[valid]`` over the data-parallel group (one all-reduce; ``(inf, -inf)`` if empty)."""
    inf = torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    if values.numel():
        low, high = torch.where(valid, values, inf).amin(), torch.where(valid, values, -inf).amax()
    else:
        low, high = inf, -inf
    stats = torch.stack([-low, high])  # one MAX reduction for both
    if distributed.is_distributed():
        dist.all_reduce(stats, op=dist.ReduceOp.MAX, group=distributed.data_parallel_group())
    return -stats[0], stats[1]


def steer_weights(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    mapping: str = "exp",
    weight_min: float = 0.8,
    weight_max: float = 1.0,
) -> torch.Tensor:
    r"""STEER's detached token weights :math:`\lambda_t` ``[N, T]`` (0 on masked tokens) from :math:`|\Omega_t|`
    (:func:`steer_omega`), with :math:`m = \min|\Omega|`, :math:`M = \max|\Omega|` over the valid tokens of the
    global batch:

    * ``"exp"`` (the paper's :math:`\lambda = e^{-k|\Omega|}`): :math:`k = -\log\lambda_{min} / \max(M, 0.02)`,
      :math:`\lambda_t = \mathrm{clip}(e^{-k|\Omega_t|}, \lambda_{min}, 1)` (``weight_max`` unused);
    * ``"linear"``: :math:`\lambda_t = \mathrm{clip}(\lambda_{max} - (|\Omega_t| - m)
      \frac{\lambda_{max}-\lambda_{min}}{M - m}, \lambda_{min}, \lambda_{max})`, and
      :math:`(\lambda_{min}+\lambda_{max})/2` everywhere when :math:`M = m`.

    Example:
        >>> lp = torch.log(torch.tensor([[0.5, 0.9]]))
        >>> steer_weights(lp, lp, torch.tensor([1.0]), torch.ones(1, 2), torch.ones(1, 2), mapping="linear",
        ...               weight_min=0.8, weight_max=1.2)  # the larger |Ω| gets the smallest weight
        tensor([[0.8000, 1.2000]])
    """
    if mapping not in STEER_MAPPINGS:
        raise ValueError(f"`mapping` must be one of {STEER_MAPPINGS}, got {mapping!r}")
    if not 0.0 < weight_min <= weight_max:
        raise ValueError(f"STEER needs 0 < `weight_min` <= `weight_max`, got {weight_min!r} and {weight_max!r}")
    if entropy.shape != logps.shape:
        raise ValueError(f"`entropy` must have the shape of `logps` {list(logps.shape)}, got {list(entropy.shape)}")
    omega = steer_omega(logps, old_logps, advantages, entropy).abs()
    valid = mask.bool()
    low, high = _global_range(omega, valid)
    if mapping == "exp":
        k = -math.log(weight_min) / high.clamp_min(_K_FLOOR)
        weights = torch.exp(-k * omega).clamp(weight_min, 1.0)
    else:
        spread = high - low
        flat = ~(spread > 0)  # also when no valid token exists (inf - inf)
        scale = (weight_max - weight_min) / torch.where(flat, torch.ones_like(spread), spread)
        mapped = (weight_max - (omega - torch.where(flat, torch.zeros_like(low), low)) * scale).clamp(
            weight_min, weight_max
        )
        weights = torch.where(flat, torch.full_like(omega, (weight_min + weight_max) / 2), mapped)
    return weights * valid.to(weights.dtype)


def preserve_clipped_gradients(
    token: torch.Tensor,
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    *,
    low: float,
    high: float,
    coefs: tuple[float, float],
) -> torch.Tensor:
    r"""CE-GPPO's per-token surrogate: PPO's clipped tokens get a bounded gradient instead of none.

    With :math:`r_t = \pi/\pi_{old}` and :math:`\mathrm{sg}` the stop-gradient (``low = 1 - ε``,
    ``high = 1 + ε_high``, ``coefs = (β1, β2)``):

    .. math:: \ell_t = \begin{cases} -\beta_1 (1-\epsilon)\frac{r_t}{\mathrm{sg}(r_t)} A_t & r_t < 1-\epsilon,\ A_t < 0
        \\ -\beta_2 (1+\epsilon_{high})\,\frac{r_t}{\mathrm{sg}(r_t)} A_t & r_t > 1+\epsilon_{high},\ A_t > 0
        \\ \text{PPO's } \ell_t\ (\texttt{token}) & \text{otherwise} \end{cases}

    so a clipped token's value is :math:`\beta` times PPO's clipped value and its gradient
    :math:`-\beta(1\mp\epsilon)A_t\nabla\log\pi_t` (PPO: 0). :math:`r/\mathrm{sg}(r)` is formed as
    :math:`e^{\log r - \mathrm{sg}(\log r)}` (value 1), so the gradient survives PPO's cap of the log-ratio at 20.

    Example:
        >>> lr = torch.tensor([[-1.0]], requires_grad=True)  # r = 0.37 < 0.8 with A < 0: clipped by PPO
        >>> out = preserve_clipped_gradients(torch.tensor([[0.8]]), lr, torch.tensor([[-1.0]]), low=0.8, high=1.2,
        ...                                  coefs=(0.5, 1.0))
        >>> out, torch.autograd.grad(out.sum(), lr)[0]  # value 0.5 * 0.8, gradient 0.5 * 0.8 * A
        (tensor([[0.4000]], grad_fn=<WhereBackward0>), tensor([[0.4000]]))
    """
    beta_low, beta_high = coefs
    ratio = torch.exp(log_ratio.detach())
    unit = torch.exp(log_ratio - log_ratio.detach())  # r / sg(r)
    below = (ratio < low) & (advantages < 0)
    above = (ratio > high) & (advantages > 0)
    token = torch.where(below, -beta_low * low * unit * advantages, token)
    return torch.where(above, -beta_high * high * unit * advantages, token)
