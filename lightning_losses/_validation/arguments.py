"""Argument validation at construction time, shared by every component (messages name the argument, expectation
and value)."""

from __future__ import annotations

import difflib
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import torch

from lightning_losses.errors import ConfigurationError

__all__ = [
    "check_bool",
    "check_choice",
    "check_int",
    "check_number",
    "check_probability_vector",
    "describe_type",
    "nearest",
    "qualify",
    "suggest",
]


def check_state_keys(
    owner: str, state: Mapping[str, Any], expected: Iterable[str], optional: Iterable[str] = ()
) -> None:
    """Raise ``KeyError`` naming the missing and unexpected keys unless ``state`` holds exactly ``expected`` (a
    checkpoint of another version or another object must not load half-way, silently). Keys in ``optional`` (entries
    added in a later version, which the owner fills with their defaults) may be missing.

    Example:
        >>> check_state_keys("SAM", {"calls": 1}, ["calls"])
    """
    if not isinstance(state, Mapping):
        raise TypeError(f"{owner} state_dict must be a mapping, got {type(state).__name__}")
    expected = set(expected)
    missing, unknown = sorted(expected - set(state) - set(optional)), sorted(set(state) - expected)
    if missing or unknown:
        raise KeyError(f"{owner} state_dict mismatch: missing {missing}, unexpected {unknown}")


def nearest(name: str, options: Iterable[str]) -> str | None:
    """Return the option closest to ``name`` (difflib ratio >= 0.6), or ``None``."""
    matches = difflib.get_close_matches(str(name), list(options), n=1, cutoff=0.6)
    return matches[0] if matches else None


def suggest(name: str, options: Iterable[str]) -> str:
    """Return ``"; did you mean `x`?"`` for the nearest option, or ``"."`` when nothing is close."""
    match = nearest(name, options)
    return f"; did you mean `{match}`?" if match else "."


def qualify(prefix: str, err: Exception) -> ConfigurationError:
    """Prefix an error with where it happened: a leading `` `key` `` becomes `` `prefix.key` ``.

    Example:
        >>> str(qualify("data", ConfigurationError("`label_noise` must be in [0, 1), got 2")))
        '`data.label_noise` must be in [0, 1), got 2'
        >>> str(qualify("callbacks.sam", ConfigurationError("unknown thing")))
        '`callbacks.sam`: unknown thing'
    """
    msg = str(err)
    if msg.startswith(f"`{prefix}"):
        return ConfigurationError(msg)
    qualified = re.sub(r"^`([A-Za-z_][\w.\[\]]*)`", lambda m: f"`{prefix}.{m.group(1)}`", msg, count=1)
    return ConfigurationError(qualified if qualified != msg else f"`{prefix}`: {msg}")


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {low}"
    if high is not None:
        return f"{'<' if high_open else '<='} {high}"
    return "finite"


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Validate a real number in an interval and return it as ``float``.

    Example:
        >>> check_number("gamma", 2, low=0.0)
        2.0
    """
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        bounds = _interval(low, high, low_open, high_open)
        expected = "a finite number" if bounds == "finite" else f"a finite number {bounds}"
        raise ConfigurationError(f"`{name}` must be {expected}, got {value!r}")
    value = float(value)
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        raise ConfigurationError(f"`{name}` must be {_interval(low, high, low_open, high_open)}, got {value!r}")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Validate a flag: only ``True`` or ``False`` (no truthy strings, numbers or ``None``).

    Example:
        >>> check_bool("normalize", True)
        True
    """
    if not isinstance(value, bool):
        raise ConfigurationError(f"`{name}` must be a bool (True or False), got {value!r}")
    return value


def check_int(name: str, value: Any, *, low: int | None = None, high: int | None = None) -> int:
    """Validate an integer in ``[low, high]`` and return it.

    Example:
        >>> check_int("num_bins", 51, low=2)
        51
    """
    bounds = _interval(low, high, False, False)
    expected = "an integer" if bounds == "finite" else f"an integer {bounds}"
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ConfigurationError(f"`{name}` must be {expected}, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigurationError(f"`{name}` must be {expected}, got {value!r}")
    return int(value)


def describe_type(hint: Any) -> str:
    """A type hint in words for messages: ``int | None`` -> ``"int or None"``, a ``Literal`` -> ``"one of ..."``.

    Example:
        >>> describe_type(int | None)
        'int or None'
    """
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        args = typing.get_args(hint)
        literals = [v for a in args if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)]
        parts = [describe_type(a) for a in args if typing.get_origin(a) is not typing.Literal]
        if literals:
            parts.insert(0, describe_type(typing.Literal[tuple(literals)]))
        return " or ".join(dict.fromkeys(parts))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if origin is None and isinstance(hint, type):
        return hint.__name__
    return str(hint).replace("typing.", "")


def check_choice(name: str, value: Any, options: Sequence[str]) -> str:
    """Validate that ``value`` is one of ``options`` (the message lists them and suggests the nearest).

    Example:
        >>> check_choice("reduction", "sum", ["mean", "sum"])
        'sum'
    """
    if value not in options:
        valid = ", ".join(f"`{o}`" for o in options)
        raise ConfigurationError(f"`{name}` must be one of {valid}, got {value!r}{suggest(str(value), options)}")
    return value


def check_probability_vector(
    name: str, value: Any, *, allow_none: bool = True, dtype: torch.dtype = torch.float32
) -> torch.Tensor | None:
    """Validate an optional 1-D sequence of non-negative finite numbers (class weights) and return a ``dtype`` tensor.

    Losses keep their weights in float64 (``dtype=torch.float64``) and cast them to the input's dtype where used, so a
    ``.double()`` loss computes with the exact digits the user gave (a float32 buffer would have lost them).
    """
    if value is None:
        if allow_none:
            return None
        raise ConfigurationError(f"`{name}` must be a sequence of non-negative numbers, got None")
    try:
        tensor = torch.as_tensor(value, dtype=dtype).detach().clone()
    except (TypeError, ValueError, RuntimeError):
        raise ConfigurationError(f"`{name}` must be a sequence of non-negative numbers, got {value!r}") from None
    if tensor.ndim != 1 or tensor.numel() == 0 or not torch.isfinite(tensor).all() or (tensor < 0).any():
        raise ConfigurationError(
            f"`{name}` must be a non-empty 1-D sequence of finite non-negative numbers, got {value!r}"
        )
    return tensor
