r"""One schedule API for every coefficient: loss weights, entropy betas, perturbation radii.

A schedule maps the optimizer step (``trainer.global_step``) to a float. Each has a pure functional form
(:func:`linear`, :func:`cosine`, :func:`step_decay`, :func:`warmup`) and a small registered class that stores
validated arguments. A bare number is a constant schedule; a mapping ``{"name": "cosine", ...}`` builds any other.

Example:
    >>> from lightning_losses.schedules import build_schedule
    >>> s = build_schedule({"name": "linear", "start": 0.0, "end": 1.0, "steps": 10})
    >>> s(0), s(5), s(20)
    (0.0, 0.5, 1.0)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from lightning_losses._validation import check_int, check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.registry import Registry

__all__ = [
    "SCHEDULES",
    "Constant",
    "Cosine",
    "Linear",
    "Schedule",
    "StepDecay",
    "Warmup",
    "build_schedule",
    "cosine",
    "linear",
    "step_decay",
    "warmup",
]

SCHEDULES: Registry[type[Schedule]] = Registry("schedule")


def _progress(step: int, begin: int, steps: int) -> float:
    if steps == 0:
        return 1.0 if step >= begin else 0.0
    return min(max((step - begin) / steps, 0.0), 1.0)


def linear(step: int, start: float, end: float, steps: int, begin: int = 0) -> float:
    r"""Linear interpolation :math:`v = s + (e - s)\,\mathrm{clip}((t - b)/T, 0, 1)`."""
    return start + (end - start) * _progress(step, begin, steps)


def cosine(step: int, start: float, end: float, steps: int, begin: int = 0) -> float:
    r"""Cosine annealing :math:`v = e + (s - e)\,(1 + \cos(\pi\,\mathrm{clip}((t - b)/T, 0, 1)))/2`."""
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * _progress(step, begin, steps)))


def step_decay(step: int, value: float, milestones: Sequence[int], gamma: float) -> float:
    r"""Piecewise constant :math:`v = \mathrm{value}\cdot\gamma^{\#\{m \le t\}}`."""
    return value * gamma ** sum(1 for m in milestones if step >= m)


def warmup(step: int, value: float, steps: int, start: float = 0.0) -> float:
    r"""Linear warm-up from ``start`` to ``value`` over ``steps``, then constant."""
    return linear(step, start, value, steps)


class Schedule:
    """Base class: ``schedule(step) -> float``. Stateless: the step comes from the trainer.

    Attributes:
        constant: ``True`` when the value never depends on ``step`` (the mixin then does not read the step).
    """

    constant: bool = False

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({args})"


@SCHEDULES.register("constant")
class Constant(Schedule):
    """A fixed value. Args: value: the coefficient."""

    constant = True

    def __init__(self, value: float = 1.0) -> None:
        self.value = check_number("value", value)

    def __call__(self, step: int) -> float:
        return self.value


class _Ramp(Schedule):
    _fn = staticmethod(linear)

    def __init__(self, start: float, end: float, steps: int, begin: int = 0) -> None:
        self.start = check_number("start", start)
        self.end = check_number("end", end)
        self.steps = check_int("steps", steps, low=0)
        self.begin = check_int("begin", begin, low=0)

    def __call__(self, step: int) -> float:
        return self._fn(step, self.start, self.end, self.steps, self.begin)


@SCHEDULES.register("linear")
class Linear(_Ramp):
    """Linear ramp from ``start`` to ``end`` over ``steps`` optimizer steps, beginning at step ``begin``."""


@SCHEDULES.register("cosine")
class Cosine(_Ramp):
    """Cosine ramp from ``start`` to ``end`` over ``steps`` optimizer steps, beginning at step ``begin``."""

    _fn = staticmethod(cosine)


@SCHEDULES.register("step", aliases=("step_decay",))
class StepDecay(Schedule):
    """``value`` multiplied by ``gamma`` at each milestone step."""

    def __init__(self, value: float, milestones: Sequence[int], gamma: float = 0.1) -> None:
        self.value = check_number("value", value)
        if isinstance(milestones, (str, bytes)) or not isinstance(milestones, Sequence):
            raise ConfigurationError(f"`milestones` must be a list of step numbers, got {milestones!r}")
        self.milestones = [check_int("milestones[]", m, low=0) for m in milestones]
        if self.milestones != sorted(self.milestones):
            raise ConfigurationError(f"`milestones` must be increasing, got {self.milestones}")
        self.gamma = check_number("gamma", gamma, low=0.0)

    def __call__(self, step: int) -> float:
        return step_decay(step, self.value, self.milestones, self.gamma)


@SCHEDULES.register("warmup")
class Warmup(Schedule):
    """Linear warm-up from ``start`` to ``value`` over ``steps``, then ``value``."""

    def __init__(self, value: float, steps: int, start: float = 0.0) -> None:
        self.value = check_number("value", value)
        self.steps = check_int("steps", steps, low=0)
        self.start = check_number("start", start)

    def __call__(self, step: int) -> float:
        return warmup(step, self.value, self.steps, self.start)


def build_schedule(spec: Any, name: str = "coefficient") -> Schedule:
    """Build a schedule from a number, a ``{"name": ..., **kwargs}`` mapping, or a :class:`Schedule`.

    Args:
        spec: the number, mapping or schedule.
        name: the argument it was given as, named in errors (``coefficient``, ``beta``, ``radius``, ...).

    Raises:
        ConfigurationError: for anything else, naming the argument and what arrived.
    """
    if isinstance(spec, Schedule):
        return spec
    if isinstance(spec, bool):
        raise ConfigurationError(f"`{name}` must be a number or a schedule mapping, got {spec!r}")
    if isinstance(spec, (int, float)):
        try:
            return Constant(spec)
        except ConfigurationError as err:  # `value` is the schedule's own name for it
            raise ConfigurationError(str(err).replace("`value`", f"`{name}`", 1)) from None
    if isinstance(spec, Mapping):
        try:
            return SCHEDULES.build(spec)
        except ConfigurationError as err:
            raise ConfigurationError(f"`{name}`: {err}") from None
    raise ConfigurationError(
        f"`{name}` must be a number or a schedule mapping such as "
        f"{{name: linear, start: 0.0, end: 1.0, steps: 100}}, got {spec!r}"
    )
