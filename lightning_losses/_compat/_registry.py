"""The registry of the compatibility accessors: :data:`ACCESSORS` and the ``reads`` decorator that fills it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["ACCESSORS", "installed_version", "reads"]

#: accessor name -> the private attribute(s) it reads; the compatibility test is parametrised over it.
ACCESSORS: dict[str, str] = {}


def reads(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register the decorated accessor in :data:`ACCESSORS` with ``what`` it reads."""

    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        ACCESSORS[fn.__name__] = what
        return fn

    return register


def installed_version(package: str) -> str:
    """The installed version of ``package`` (for error messages)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover - both are dependencies
        return "not installed"
