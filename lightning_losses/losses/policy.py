r"""Registered policy-gradient losses for RL fine-tuning (thin modules over :mod:`lightning_losses.functional.policy`).

Inputs: ``logps [N, T]`` (current policy, with gradient), ``old_logps [N, T]`` (sampling policy), ``advantages``
(``[N]`` or ``[N, T]``), ``mask [N, T]`` (1 on response tokens), optional ``ref_logps [N, T]`` (KL to a reference) and
``entropy [N, T]`` (per-token entropy with gradient, e.g. :func:`~lightning_losses.functional.policy.clamped_entropy`
of the logits, for the entropy bonus). Output: one loss per response ``[N]``; responses without any valid token are
masked out of the objective's normaliser.

Rewards instead of advantages: with ``reward_transform`` (a name from ``ll.list_reward_transforms()``: ``wco``,
``uwo``, ``noisy_reward``, ``pf_ppo``; see :mod:`lightning_losses.losses.reward_transforms`) the loss takes
``rewards`` (``[N]``, or ``[N, K]`` for a reward-model ensemble) and ``group`` (the prompt id of each response),
transforms them and computes GRPO's group advantages itself; per-response weights (PF-PPO) are scaled to mean 1 over
the global batch and multiply the per-response loss.

Entropy controls: a fixed bonus (``entropy_coef``), AEnt's clamped entropy (pass ``clamped_entropy(logits, 0.3)``) with
its adaptive coefficient (``entropy_band``), Clip-Cov and KL-Cov (``cov_control``).

Example:
    >>> import lightning_losses as ll
    >>> lp = torch.tensor([[-1.0, -2.0], [-0.5, 0.0]])
    >>> ll.build_loss("grpo")(logps=lp, old_logps=lp, advantages=torch.tensor([1.0, -1.0]), mask=torch.ones(2, 2))
    tensor([-1.,  1.])
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_losses._validation import check_bool, check_choice, check_int, check_number
from lightning_losses.distributed import global_sum
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional import policy as PF
from lightning_losses.functional.dual_ascent import dual_ascent_step, entropy_error
from lightning_losses.losses.base import LOSSES, Loss
from lightning_losses.losses.policy_rewards import PolicyInputNames, advantages_from_rewards
from lightning_losses.losses.reward_transforms import RewardTransform, build_reward_transform

__all__ = ["GRPO", "PolicyLoss", "PPOClip"]


def _pair(name: str, value: Sequence[float], low: float = 0.0) -> tuple[float, float]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ConfigurationError(f"`{name}` must be a pair [low, high], got {value!r}")
    a, b = (check_number(name, v, low=low) for v in value)
    if a > b:
        raise ConfigurationError(f"`{name}` must be a pair [low, high] with low <= high, got {value!r}")
    return a, b


class PolicyLoss(Loss):
    r"""Shared hyperparameters of :class:`PPOClip` and :class:`GRPO`.

    Args:
        clip_eps: lower (and default upper) clip range ``ε > 0``. Default 0.2.
        clip_eps_high: upper clip range (DAPO's clip-higher), default ``clip_eps``.
        dual_clip: dual-clip constant ``c > 1`` for negative advantages, or ``None`` (off). Default ``None``.
        normalization: ``"token"``, ``"sequence"``, ``"sum"`` or ``"constant"`` (see the functional module).
        entropy_coef: entropy bonus coefficient ``≥ 0`` (initial value when ``entropy_band`` is set). Default 0.
        entropy_band: AEnt's ``[low, high]`` band for the global token-mean entropy, or ``None`` (fixed coefficient).
            Each training call moves the coefficient by ``-entropy_coef_lr · (min(0, H - low) + max(0, H - high))``
            and clips it to ``entropy_coef_bounds`` (the authors' README rule; after ``warmup_steps`` calls): once
            per training forward, so once per micro-batch under gradient accumulation (for one update per optimizer
            step from all micro-batches use ``ll.EntropyControl(band=...)`` instead).
        entropy_coef_lr: step size of that update. Default 1e-3 (authors' README).
        entropy_coef_bounds: ``[min, max]`` of the coefficient. Default ``[1e-5, 3e-3]`` (authors' README).
        warmup_steps: calls before the coefficient starts moving. Default 0.
        kl_coef: k3 KL-to-reference coefficient ``≥ 0`` (needs ``ref_logps``). Default 0.
        cov_control: ``"none"``, ``"clip_cov"`` or ``"kl_cov"`` (Cui et al., 2025). Default ``"none"``.
        cov_ratio: fraction of the global valid tokens Clip-Cov / KL-Cov act on. Default 2e-4 (verl).
        clip_cov_bounds: Clip-Cov's ``[lb, ub]`` covariance band. Default ``[1.0, 5.0]`` (verl).
        kl_cov_coef: KL-Cov's coefficient of ``|log π − log π_old|``. Default 1.0 (verl's in-function fallback).
        seed: seed of Clip-Cov's random draw; call ``t`` uses ``seed + t`` on every rank (the call counter is a
            buffer, saved in checkpoints). Default 0.
        reward_transform: a reward transform (name, ``{name: ..., **arguments}`` mapping or built module), or
            ``None`` (default: the loss takes ``advantages``). Set, the loss takes ``rewards`` and ``group`` and
            computes the advantages with :func:`~lightning_losses.functional.policy.group_advantages` from the
            transformed rewards (a transform that only weights responses, ``pf_ppo``, also accepts ``advantages``).
        normalize_std: divide the group advantages by the group's standard deviation (GRPO); ``False`` is Dr. GRPO's
            mean-centring only. Used with ``reward_transform``. Default True.
    """

    family = "policy"
    _default_normalization = "token"

    def __init__(
        self,
        clip_eps: float = 0.2,
        clip_eps_high: float | None = None,
        dual_clip: float | None = None,
        normalization: str | None = None,
        entropy_coef: float = 0.0,
        entropy_band: Sequence[float] | None = None,
        entropy_coef_lr: float = 1e-3,
        entropy_coef_bounds: Sequence[float] = (1e-5, 3e-3),
        warmup_steps: int = 0,
        kl_coef: float = 0.0,
        cov_control: str = "none",
        cov_ratio: float = 2e-4,
        clip_cov_bounds: Sequence[float] = (1.0, 5.0),
        kl_cov_coef: float = 1.0,
        seed: int = 0,
        reward_transform: str | Mapping[str, Any] | RewardTransform | None = None,
        normalize_std: bool = True,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.clip_eps = check_number("clip_eps", clip_eps, low=0.0, high=1.0, low_open=True, high_open=True)
        self.clip_eps_high = None if clip_eps_high is None else check_number("clip_eps_high", clip_eps_high, low=0.0)
        self.dual_clip = None if dual_clip is None else check_number("dual_clip", dual_clip, low=1.0, low_open=True)
        self.normalization = check_choice(
            "normalization", self._default_normalization if normalization is None else normalization, PF.NORMALIZATIONS
        )
        coef = check_number("entropy_coef", entropy_coef, low=0.0)
        self.entropy_band = None if entropy_band is None else _pair("entropy_band", entropy_band)
        self.entropy_coef_lr = check_number("entropy_coef_lr", entropy_coef_lr, low=0.0)
        self.entropy_coef_bounds = _pair("entropy_coef_bounds", entropy_coef_bounds)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, low=0)
        self.kl_coef = check_number("kl_coef", kl_coef, low=0.0)
        self.cov_control = check_choice("cov_control", cov_control, PF.COV_CONTROLS)
        self.cov_ratio = check_number("cov_ratio", cov_ratio, low=0.0, high=1.0, low_open=True)
        self.clip_cov_bounds = _pair("clip_cov_bounds", clip_cov_bounds, low=-float("inf"))
        self.kl_cov_coef = check_number("kl_cov_coef", kl_cov_coef, low=0.0)
        self.seed = check_int("seed", seed, low=0)
        self.reward_transform = None if reward_transform is None else build_reward_transform(reward_transform)
        self.normalize_std = check_bool("normalize_std", normalize_std)
        if self.normalize_std and getattr(self.reward_transform, "mode", None) == "backward":
            raise ConfigurationError(
                "`reward_transform` noisy_reward (mode `backward`) is affine in the reward, so the group "
                "standardisation cancels it: set `normalize_std: false` (Dr. GRPO) or use mode `forward`"
            )
        self.uses_entropy = coef > 0 or self.entropy_band is not None  # decided here: no host sync per call
        self.register_buffer("entropy_coef", torch.tensor(coef, dtype=torch.float64))
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    input_names = PolicyInputNames()

    def sample_mask(self, *, mask: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return mask.bool().any(-1)

    def forward(
        self,
        logps: torch.Tensor,
        old_logps: torch.Tensor,
        advantages: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        ref_logps: torch.Tensor | None = None,
        entropy: torch.Tensor | None = None,
        rewards: torch.Tensor | None = None,
        group: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if mask is None:
            raise ValueError("`mask` [N, T] (1 on response tokens) is required")
        weights = None
        if self.reward_transform is not None:
            advantages, weights = advantages_from_rewards(
                self.reward_transform, advantages, rewards, group, mask, normalize_std=self.normalize_std
            )
        elif advantages is None:
            raise ValueError(
                "`advantages` ([N] or [N, T]) is required; or set `reward_transform` and pass `rewards` and `group`"
            )
        elif rewards is not None:
            raise ValueError("`rewards` is only used with a `reward_transform` (e.g. 'wco', 'pf_ppo'); none is set")
        wants_entropy = self.uses_entropy
        if wants_entropy and entropy is None:
            raise ValueError("`entropy` [N, T] (per-token entropy with gradient) is required when entropy_coef > 0")
        generator = None
        if self.cov_control == "clip_cov":
            generator = torch.Generator().manual_seed(self.seed + int(self.calls))
        out = PF.ppo_clip(
            logps,
            old_logps,
            advantages,
            mask,
            clip_eps=self.clip_eps,
            clip_eps_high=self.clip_eps_high,
            dual_clip=self.dual_clip,
            normalization=self.normalization,
            entropy=entropy if wants_entropy else None,
            entropy_coef=self.entropy_coef.to(logps.dtype),
            ref_logps=ref_logps,
            kl_coef=self.kl_coef,
            cov_control=self.cov_control,
            cov_ratio=self.cov_ratio,
            clip_cov_bounds=self.clip_cov_bounds,
            kl_cov_coef=self.kl_cov_coef,
            generator=generator,
            **self._ppo_options(logps, old_logps, advantages, mask, entropy),
        )
        if self.training:
            if self.entropy_band is not None and int(self.calls) >= self.warmup_steps:
                self._update_entropy_coef(entropy, mask)
            self.calls += 1
        return out if weights is None else out * weights.to(out.dtype)

    def _ppo_options(
        self,
        logps: torch.Tensor,
        old_logps: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        entropy: torch.Tensor | None,
    ) -> dict:
        """More keyword arguments of :func:`~lightning_losses.functional.policy.ppo_clip` (a subclass's own
        token-level control: STEER's weights, CE-GPPO's clipped-token gradients); none here."""
        return {}

    @torch.no_grad()
    def _update_entropy_coef(self, entropy: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask.to(torch.float64)
        sums = global_sum(torch.stack([(entropy.detach().to(torch.float64) * m).sum(), m.sum()]))
        h = sums[0] / sums[1].clamp_min(1.0)
        lo, hi = self.entropy_coef_bounds  # AEnt: raise the coefficient below the band, lower it above
        error = entropy_error(h, band=self.entropy_band)
        self.entropy_coef.copy_(
            dual_ascent_step(self.entropy_coef, error, lr=self.entropy_coef_lr, beta_min=lo, beta_max=hi)
        )


_PolicyLoss = PolicyLoss  # the former private name, kept importable


@LOSSES.register("ppo_clip", aliases=("ppo",))
class PPOClip(PolicyLoss):
    r"""PPO clipped surrogate per response (Schulman et al., 2017); default global token mean (``"token"``).

    See :class:`PolicyLoss` for the arguments and :func:`lightning_losses.functional.policy.ppo_clip` for the formula.

    Example:
        >>> import lightning_losses as ll
        >>> lp, old = torch.tensor([[-1.0, -1.0]]), torch.tensor([[-2.0, -1.0]])
        >>> loss = ll.build_loss("ppo_clip", clip_eps=0.2)
        >>> loss(logps=lp, old_logps=old, advantages=torch.ones(1), mask=torch.ones(1, 2))  # (-1.2 - 1) / 2
        tensor([-1.1000])
    """


@LOSSES.register("grpo")
class GRPO(PolicyLoss):
    r"""GRPO per response (Shao et al., 2024): PPO clipping, token mean within each response (``"sequence"``) and the
    k3 KL to ``ref_logps`` when ``kl_coef > 0``; use :func:`~lightning_losses.functional.policy.group_advantages`.

    Example:
        >>> import lightning_losses as ll
        >>> lp = torch.tensor([[-1.0, -1.0, 0.0]])
        >>> ll.build_loss("grpo", kl_coef=0.04)(
        ...     logps=lp, old_logps=lp, advantages=torch.ones(1), mask=torch.tensor([[1, 1, 0]]), ref_logps=lp - 1.0
        ... ).round(decimals=4)
        tensor([-0.9853])
    """

    _default_normalization = "sequence"
