r"""What the engine does with the gradients around the ascent: the *direction* the ascent normalises and the
*descent* gradient it leaves for the optimizer. Each is a small record in a registry, as the ascent rules
(:data:`~lightning_losses.perturbation.functional.ASCENT_RULES`) are; the presets pick one of each.

Directions (from the unscaled gradient :math:`g` at :math:`w`, before the ascent rule and its norm):

* ``"gradient"``: :math:`g` itself (SAM and every other preset);
* ``"friendly"`` (FriendlySAM, Li et al. 2024): :math:`d = g - \sigma m_{t-1}`, then
  :math:`m_t = \lambda m_{t-1} + (1 - \lambda) g` (EMA of the raw gradient; :math:`m_0 = g`, first step :math:`d = g`);
* ``"stochastic"`` (ESAM's stochastic weight perturbation, Du et al. 2022): each parameter tensor is kept with
  probability :math:`\beta` (one draw per tensor and step from ``seed`` and the step: the same on every rank and after
  a resume), the others get :math:`g_l = 0`, and the radius becomes :math:`\rho/\beta`.

Descents (from :math:`g` and the gradient :math:`g_p` at :math:`w + \epsilon`; ``weight`` is the preset's coefficient):

* ``"perturbed"``: :math:`g_p`;
* ``"surrogate_gap"`` (GSAM, Zhuang et al. 2022): :math:`g_p - \alpha g_\perp` with
  :math:`g_\perp = g - \frac{\langle g, g_p\rangle}{\|g_p\|^2 + \varepsilon} g_p`;
* ``"weighted"`` (WSAM, Yue et al. 2023, the coupled form): :math:`g + a (g_p - g)` with :math:`a = \gamma/(1-\gamma)`.

Inner products and norms are global: over every perturbed tensor, and over the shards of a sharded one
(``shard_sum``). Under DDP the engine averages :math:`g` over ranks first, so every rank forms the same descent
gradient from the averaged :math:`g` and :math:`g_p`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lightning_losses._validation import check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation.norms import ShardSumFn, global_norm

__all__ = ["DESCENT_RULES", "DIRECTION_RULES", "DescentRule", "DirectionRule", "check_used", "inner_product"]


def inner_product(a: list[Tensor], b: list[Tensor], shard_sum: ShardSumFn | None = None) -> Tensor:
    """:math:`\\sum_l \\langle a_l, b_l\\rangle` in float64 (``shard_sum``: of local shards)."""
    dots = torch.stack([(x.double() * y.double()).sum() for x, y in zip(a, b)])
    return (dots if shard_sum is None else shard_sum(dots)).sum()


# ---------------------------------------------------------------------------------------------------- directions
def _gradient(engine: Any, grads: list[Tensor], step: int) -> float:
    return 1.0


def _friendly(engine: Any, grads: list[Tensor], step: int) -> float:
    momentum = engine.direction_state.get("momentum")
    if momentum is None or len(momentum) != len(grads):
        engine.direction_state["momentum"] = [g.clone() for g in grads]  # m_0 = g; the first direction is g
        return 1.0
    momentum = [m.to(g.device, g.dtype) for m, g in zip(momentum, grads)]
    direction = torch._foreach_add(grads, momentum, alpha=-engine.sigma)  # g - sigma m_{t-1}
    # m_t = lambda m_{t-1} + (1 - lambda) g, out of place: a state_dict taken earlier keeps its tensors
    engine.direction_state["momentum"] = list(torch._foreach_lerp(momentum, grads, 1.0 - engine.lmbda))
    torch._foreach_copy_(grads, direction)
    return 1.0


def _stochastic(engine: Any, grads: list[Tensor], step: int) -> float:
    beta = engine.keep_probability
    if beta >= 1.0:
        return 1.0
    draw = random.Random(engine.seed * 1_000_003 + step + 7919)  # a pure function of (seed, step): same on all ranks
    dropped = [g for g in grads if draw.random() >= beta]
    if dropped:
        torch._foreach_zero_(dropped)
    return 1.0 / beta


@dataclass(frozen=True)
class DirectionRule:
    """How the ascent direction is formed from the gradient at :math:`w`.

    Attributes:
        transform: ``fn(engine, grads, step) -> radius factor``; rewrites ``grads`` (unscaled local gradients, discarded
            afterwards) in place into the direction and may keep state in ``engine.direction_state``.
        stateful: keeps state across steps (saved in the engine's ``state_dict``).
    """

    transform: Callable[[Any, list[Tensor], int], float]
    stateful: bool = False


#: the direction rules by name
DIRECTION_RULES: dict[str, DirectionRule] = {
    "gradient": DirectionRule(_gradient),
    "friendly": DirectionRule(_friendly, stateful=True),
    "stochastic": DirectionRule(_stochastic),
}


# ---------------------------------------------------------------------------------------------------- descents
def surrogate_gap(
    grads: list[Tensor], perturbed: list[Tensor], alpha: float, eps: float = 1e-12, shard_sum: ShardSumFn | None = None
) -> list[Tensor]:
    r"""GSAM's descent gradient :math:`g_p - \alpha\,(g - \frac{\langle g, g_p\rangle}{\|g_p\|^2 + \varepsilon}g_p)`."""
    coef = inner_product(grads, perturbed, shard_sum) / (global_norm(perturbed, shard_sum).double() ** 2 + eps)
    dtype = perturbed[0].dtype
    orthogonal = torch._foreach_add(grads, torch._foreach_mul(perturbed, coef.to(dtype)), alpha=-1.0)
    return list(torch._foreach_add(perturbed, orthogonal, alpha=-alpha))


def weighted(grads: list[Tensor], perturbed: list[Tensor], gamma: float) -> list[Tensor]:
    r"""WSAM's (coupled) descent gradient :math:`g + \frac{\gamma}{1-\gamma}(g_p - g)`."""
    a = gamma / (1.0 - gamma)
    return list(torch._foreach_add(grads, torch._foreach_sub(perturbed, grads), alpha=a))


@dataclass(frozen=True)
class DescentRule:
    """How the descent gradient is formed from :math:`g` (at :math:`w`) and :math:`g_p` (at :math:`w + \\epsilon`).

    Attributes:
        combine: ``fn(g, g_p, weight, eps, shard_sum) -> descent gradient`` (``None``: :math:`g_p` as it is).
        check: ``fn(weight)`` raising a ``ConfigurationError`` on an invalid coefficient.
    """

    combine: Callable[..., list[Tensor]] | None
    check: Callable[[float], None]


def _no_check(weight: float) -> None:
    return None


def _check_alpha(weight: float) -> None:
    check_number("descent_weight", weight, low=0.0)


def _check_gamma(weight: float) -> None:
    check_number("descent_weight", weight, low=0.0, high=1.0, high_open=True)


#: the descent rules by name
DESCENT_RULES: dict[str, DescentRule] = {
    "perturbed": DescentRule(None, _no_check),
    "surrogate_gap": DescentRule(
        lambda g, gp, weight, eps, shard_sum: surrogate_gap(g, gp, weight, eps, shard_sum), _check_alpha
    ),
    "weighted": DescentRule(lambda g, gp, weight, eps, shard_sum: weighted(g, gp, weight), _check_gamma),
}


_DIRECTION_OPTIONS = {"friendly": {"sigma": 1.0, "lmbda": 0.9}, "stochastic": {"keep_probability": 1.0}}


def check_used(engine: Any) -> None:
    """Refuse options the chosen rules would ignore, and directions that a multi-step ascent cannot repeat."""
    for direction, options in _DIRECTION_OPTIONS.items():
        for key, default in options.items():
            if engine.direction != direction and getattr(engine, key) != default:
                raise ConfigurationError(
                    f"`{key}` applies to `direction={direction!r}` only, got {key}={getattr(engine, key)!r} with "
                    f"direction={engine.direction!r}"
                )
    if engine.decouple and engine.descent != "weighted":
        raise ConfigurationError(
            f"`decouple` applies to `descent='weighted'` (WSAM) only, got descent={engine.descent!r}"
        )
    if engine.descent == "perturbed" and engine.descent_weight != 0.0:
        raise ConfigurationError(
            f"`descent_weight` applies to `descent` 'surrogate_gap' or 'weighted' only, got "
            f"descent_weight={engine.descent_weight!r} with descent='perturbed'"
        )
    if engine.direction != "gradient" and engine.inner_steps != 1:
        raise ConfigurationError(
            f"`direction={engine.direction!r}` takes one ascent step, got inner_steps={engine.inner_steps}: its "
            f"direction is formed from the gradient at w only"
        )
