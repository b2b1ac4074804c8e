r"""The rewards path of the policy losses (:class:`~lightning_losses.losses.policy.PolicyLoss`): with a
``reward_transform`` the loss takes ``rewards`` and ``group`` instead of ``advantages``;
:func:`advantages_from_rewards` turns them into GRPO's group advantages and per-response weights, and
:class:`PolicyInputNames` declares the inputs accordingly.
"""

from __future__ import annotations

import torch

from lightning_losses.functional import policy as PF
from lightning_losses.functional.reward_transforms import normalize_weights
from lightning_losses.losses.base import Loss
from lightning_losses.losses.reward_transforms import RewardTransform

__all__ = ["PolicyInputNames", "advantages_from_rewards"]


class PolicyInputNames:
    """``input_names()`` of the policy losses, on the class or an instance.

    ``advantages`` and ``mask`` default to ``None`` in ``forward`` only so that ``rewards`` can replace
    ``advantages``: both are required inputs, except ``advantages`` on an instance with a ``reward_transform``
    (then ``rewards`` and ``group`` bring what the advantages are computed from).
    """

    def __get__(self, obj: Loss | None, owner: type[Loss]):
        def input_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
            required, optional = Loss.input_names.__func__(owner)
            move = ("mask",) if getattr(obj, "reward_transform", None) is not None else ("advantages", "mask")
            return (*required, *(n for n in optional if n in move)), tuple(n for n in optional if n not in move)

        return input_names


def advantages_from_rewards(
    transform: RewardTransform,
    advantages: torch.Tensor | None,
    rewards: torch.Tensor | None,
    group: torch.Tensor | None,
    mask: torch.Tensor,
    *,
    normalize_std: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Advantages and normalised per-response weights (or ``None``) from ``rewards`` via the reward transform.

    Args:
        transform: the loss's built reward transform.
        advantages: the caller's advantages, or ``None`` (accepted only by a transform that only weights responses).
        rewards: ``[N]`` (or ``[N, K]`` for a reward-model ensemble).
        group: ``[N]``, the prompt id of each response (needed for the group advantages).
        mask: ``[N, T]``, 1 on response tokens (responses without any valid token get no weight).
        normalize_std: divide the group advantages by the group's standard deviation (GRPO); ``False`` is
            Dr. GRPO's mean-centring only.
    """
    name = type(transform).__name__
    if rewards is None:
        raise ValueError(f"`rewards` is required with `reward_transform` ({name}); got none")
    if advantages is not None and transform.changes_rewards:
        raise ValueError(
            f"got both `advantages` and `rewards`: `reward_transform` ({name}) turns the rewards into the "
            "advantages; pass one of them"
        )
    signal = transform(rewards=rewards, group=group)
    if advantages is None:
        if not signal.group_normalize:
            advantages = signal.rewards
        elif group is None:
            raise ValueError(
                f"`group` [N] (the prompt id of each response) is required to turn `rewards` into GRPO's group "
                f"advantages (`reward_transform` {name})"
            )
        else:
            advantages = PF.group_advantages(signal.rewards, group, normalize_std=normalize_std)
    weights = None if signal.weights is None else normalize_weights(signal.weights, mask.bool().any(-1))
    return advantages, weights
