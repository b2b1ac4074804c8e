"""Which parameters a perturbation moves: name globs, exclusions and a minimum number of dimensions."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor, nn  # noqa: F401  (nn: the doctest)

from lightning_losses.errors import ConfigurationError

__all__ = ["check_patterns", "matches", "select_parameters"]


def check_patterns(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Iterable) or not all(isinstance(v, str) and v for v in value):
        raise ConfigurationError(f"`{name}` must be a list of parameter-name patterns (fnmatch), got {value!r}")
    return tuple(value)


def select_parameters(
    named: Iterable[tuple[str, Tensor]],
    include: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    min_ndim: int = 0,
) -> list[tuple[str, Tensor]]:
    """Parameters to perturb: ``requires_grad``, name matching an ``include`` glob (all if ``None``) and no
    ``exclude`` glob, with at least ``min_ndim`` dimensions (2 keeps weight matrices / kernels, as AWP).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Linear(3, 1))
        >>> [n for n, _ in select_parameters(net.named_parameters(), include=["*weight"], exclude=["1.*"])]
        ['0.weight']
    """
    out = []
    for name, p in named:
        if not p.requires_grad or p.ndim < min_ndim:
            continue
        if include is not None and not any(fnmatch.fnmatchcase(name, pat) for pat in include):
            continue
        if exclude is not None and any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            continue
        out.append((name, p))
    return out


def matches(names: Sequence[str], patterns: Sequence[str]) -> list[bool]:
    """Whether each of ``names`` matches one of the ``patterns`` (fnmatch, case-sensitive)."""
    return [any(fnmatch.fnmatchcase(n, p) for p in patterns) for n in names]
