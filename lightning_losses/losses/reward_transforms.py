r"""Registered reward transforms: what a policy loss does to raw rewards before they become advantages.

A reward transform is a small module selected by name (``ll.list_reward_transforms()``, ``lightning-losses list
reward_transforms``) and set on the policy losses (``ppo_clip``, ``grpo``) with ``reward_transform=``; the loss then
takes ``rewards`` (and ``group``, the prompt id of each response) instead of ``advantages``::

    objective:
      grpo:
        reward_transform: {name: uwo, coef: 0.5}   # or just `wco`

Each transform maps ``rewards`` to a :class:`RewardSignal`: one reward per response (group-standardised into GRPO
advantages by the loss unless the transform says otherwise) and optional per-response weights (scaled by the loss to
mean 1 over the global batch). The formulas are the pure functions of
:mod:`lightning_losses.functional.reward_transforms`.

Example:
    >>> import lightning_losses as ll
    >>> ll.build_reward_transform("wco")(rewards=torch.tensor([[1.0, 0.5], [0.2, 0.8]])).rewards
    tensor([0.5000, 0.2000])
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from lightning_losses._validation import check_bool, check_choice, check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional import reward_transforms as RF
from lightning_losses.registry import Registry

__all__ = [
    "NoisyReward",
    "PFPPO",
    "REWARD_TRANSFORMS",
    "RewardSignal",
    "RewardTransform",
    "UWO",
    "WCO",
    "build_reward_transform",
    "list_reward_transforms",
]

REWARD_TRANSFORMS: Registry[type[RewardTransform]] = Registry("reward transform")


class RewardSignal(NamedTuple):
    """What a :class:`RewardTransform` returns.

    Attributes:
        rewards: ``[N]`` transformed reward per response (detached).
        weights: ``[N]`` unnormalised per-response weights, or ``None`` (every response weighs the same).
        group_normalize: whether the loss turns ``rewards`` into group-relative advantages (GRPO's standardisation);
            ``False``: ``rewards`` are the advantages already.
    """

    rewards: torch.Tensor
    weights: torch.Tensor | None = None
    group_normalize: bool = True


class RewardTransform(nn.Module):
    """Base of the registered reward transforms (stateless; hyperparameters validated in ``__init__``).

    Attributes:
        changes_rewards: ``False`` for transforms that only weight responses (PF-PPO): those also combine with
            ``advantages`` computed elsewhere (e.g. by a critic's GAE for PPO).
    """

    changes_rewards: ClassVar[bool] = True

    def __init__(self, validate_args: bool = True) -> None:
        super().__init__()
        self.validate_args = check_bool("validate_args", validate_args)

    def forward(self, rewards: torch.Tensor, group: torch.Tensor | None = None) -> RewardSignal:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k != "training")


@REWARD_TRANSFORMS.register("wco")
class WCO(RewardTransform):
    r"""Worst-case optimisation over a reward-model ensemble: :math:`\min_k R_k` (Coste et al., ICLR 2024).

    ``rewards`` is ``[N, K]`` (one column per reward model, on one scale). No hyperparameter.
    """

    def forward(self, rewards: torch.Tensor, group: torch.Tensor | None = None) -> RewardSignal:
        return RewardSignal(RF.wco(rewards))


@REWARD_TRANSFORMS.register("uwo")
class UWO(RewardTransform):
    r"""Uncertainty-weighted optimisation over a reward-model ensemble: :math:`\bar R - \lambda\,\mathrm{Var}_k R_k`
    (population variance; Coste et al., ICLR 2024). ``rewards`` is ``[N, K]``.

    Args:
        coef: ``λ ≥ 0``, the variance penalty. Default 0.5 (this project's choice; the paper tunes it per setup).
    """

    def __init__(self, coef: float = 0.5, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.coef = check_number("coef", coef, low=0.0)

    def forward(self, rewards: torch.Tensor, group: torch.Tensor | None = None) -> RewardSignal:
        return RewardSignal(RF.uwo(rewards, self.coef))


@REWARD_TRANSFORMS.register("noisy_reward")
class NoisyReward(RewardTransform):
    r"""Corrections for a noisy binary verifier (Cai et al., 2025): ``rewards`` is ``[N]`` in ``{0, 1}``.

    ``mode="backward"``: the unbiased surrogate :math:`(\tilde R - \rho_0)/(1 - \rho_0 - \rho_1)`, then GRPO's group
    advantages (the standard-deviation division would undo it up to ``ε``, so the policy losses accept it only with
    ``normalize_std=False``, Dr. GRPO, where it rescales the advantages by :math:`1/(1-\rho_0-\rho_1)`).
    ``mode="forward"``: the score-function weights :math:`w_1 = \rho_1`, :math:`w_0 = \rho_1 - 1` used as the
    advantages directly (not group-standardised), needing only :math:`\rho_1`.

    Args:
        fn_rate: :math:`\rho_1 = P(\tilde R = 0 \mid R^* = 1) \in [0, 0.5)`, the false-negative rate (required).
        fp_rate: :math:`\rho_0 = P(\tilde R = 1 \mid R^* = 0) \in [0, 0.5)`, the false-positive rate; used by
            ``"backward"`` only. Default 0.
        mode: ``"backward"`` or ``"forward"``. Default ``"forward"`` (the paper's more stable variant).
        validate_args: check that the rewards are 0 or 1 (one host sync per call). Default True.
    """

    def __init__(self, fn_rate: float, fp_rate: float = 0.0, mode: str = "forward", validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.fn_rate = check_number("fn_rate", fn_rate, low=0.0, high=0.5, high_open=True)
        self.fp_rate = check_number("fp_rate", fp_rate, low=0.0, high=0.5, high_open=True)
        self.mode = check_choice("mode", mode, RF.NOISY_REWARD_MODES)

    def forward(self, rewards: torch.Tensor, group: torch.Tensor | None = None) -> RewardSignal:
        if (
            self.validate_args
            and isinstance(rewards, torch.Tensor)
            and not bool(((rewards == 0) | (rewards == 1)).all())
        ):
            raise ValueError("`rewards` must be 0 or 1 for `noisy_reward` (a verifier's fail / pass), got other values")
        if self.mode == "backward":
            return RewardSignal(RF.noisy_reward_backward(rewards, self.fp_rate, self.fn_rate))
        return RewardSignal(RF.noisy_reward_forward(rewards, self.fn_rate), group_normalize=False)


@REWARD_TRANSFORMS.register("pf_ppo")
class PFPPO(RewardTransform):
    r"""Policy filtration (PF-PPO; Zhang, Shen et al., ICML 2025): weight each response by its reward's rank within
    its prompt's group, so the policy learns from the responses whose rewards are reliable.

    Rewards are unchanged (``[N]``); the weights are
    :func:`~lightning_losses.functional.reward_transforms.pf_ppo_weights` (the paper's filtered-policy draw integrated
    out), scaled by the loss to mean 1 over the global batch. Combines with ``advantages`` from elsewhere (a critic).
    Without them the loss computes GRPO's group advantages over all of a prompt's responses (the paper's PPO-M
    baseline with filtration on top); the weights then decide whose terms count.

    Args:
        strategy: ``"best_random"`` (BR, default: the paper's best on HumanEval and its math runs), ``"best_worst"``
            (BW), ``"best_of_n"`` (BoN) or ``"pow"`` (PPO-pow-k, weight :math:`|r|^k`, rewards in ``[-1, 1]``).
        power: ``k > 0`` of ``"pow"``. Default 1.0.
    """

    changes_rewards = False

    def __init__(self, strategy: str = "best_random", power: float = 1.0, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.strategy = check_choice("strategy", strategy, RF.PF_PPO_STRATEGIES)
        self.power = check_number("power", power, low=0.0, low_open=True)

    def forward(self, rewards: torch.Tensor, group: torch.Tensor | None = None) -> RewardSignal:
        weights = RF.pf_ppo_weights(rewards, group, strategy=self.strategy, power=self.power)
        return RewardSignal(RF.per_response_rewards(rewards, "pf_ppo"), weights)


def list_reward_transforms(filter: Any = None) -> list[str]:
    """Sorted canonical names of the registered reward transforms.

    Example:
        >>> list_reward_transforms()
        ['noisy_reward', 'pf_ppo', 'uwo', 'wco']
    """
    return REWARD_TRANSFORMS.list(filter)


def build_reward_transform(spec: Any, /, **kwargs: Any) -> RewardTransform:
    """Build a reward transform from a name, a ``{"name": ..., **kwargs}`` mapping, or pass an instance through.

    Raises:
        ConfigurationError: unknown name (with the nearest one), unknown or missing argument, invalid value, or an
            object that is not a reward transform.
    """
    built = REWARD_TRANSFORMS.build(spec, **kwargs)
    if not isinstance(built, RewardTransform):
        raise ConfigurationError(
            f"`reward_transform` must be a name, a {{name: ..., ...}} mapping or a RewardTransform, got {spec!r}"
        )
    return built
