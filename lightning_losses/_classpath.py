"""Recipe sections that name a class by import path, as LightningCLI does: ``{class_path: pkg.Cls, init_args: {...}}``
or the short forms ``pkg.Cls`` (no arguments) and ``{class_path: pkg.Cls, key: value}`` (arguments beside it).

A ``model`` / ``data`` section without ``class_path`` holds the arguments of the bundled demo class. The class is
imported here (a misspelt name gets the nearest one); its arguments are checked, nested class specs built and the
object made by :func:`lightning_losses._jsonargs.instantiate` (on jsonargparse).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from lightning_losses._validation import suggest
from lightning_losses.errors import ConfigurationError

__all__ = ["has_class_path", "import_class", "split_class_spec"]


def has_class_path(value: Any) -> bool:
    """Whether a recipe value names a class (``{class_path: ...}`` or a dotted string ``pkg.Cls``)."""
    if isinstance(value, Mapping):
        return "class_path" in value
    return isinstance(value, str) and "." in value and " " not in value and not value.startswith(("{", "["))


def import_class(path: Any, key: str, base: type | tuple[type, ...] | None = None) -> type:
    """Import ``pkg.module.Cls``; one-line errors naming ``key``."""
    if not isinstance(path, str) or "." not in path:
        raise ConfigurationError(f"`{key}` must be an import path such as `my_pkg.models.MyNet`, got {path!r}")
    module_name, _, attr = path.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigurationError(f"`{key}`: cannot import module `{module_name}` ({err}), got {path!r}") from None
    if not hasattr(module, attr):
        names = [n for n in dir(module) if not n.startswith("_") and isinstance(getattr(module, n), type)]
        raise ConfigurationError(f"`{key}`: module `{module_name}` has no `{attr}`{suggest(attr, names)} Got {path!r}")
    cls = getattr(module, attr)
    if base is not None and not (isinstance(cls, type) and issubclass(cls, base)):
        bases = base if isinstance(base, tuple) else (base,)
        wanted = " or ".join(f"`{b.__module__}.{b.__qualname__}`" for b in bases)
        raise ConfigurationError(f"`{key}` must name a subclass of {wanted}, got {path!r}")
    return cls


def split_class_spec(value: Any, key: str) -> tuple[str, dict[str, Any]]:
    """``(class_path, init_args)`` of a class spec (see the module docstring)."""
    if isinstance(value, str):
        return value, {}
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"`{key}` must be a mapping with `class_path` or an import path, got {value!r}")
    extra = {k: v for k, v in value.items() if k not in ("class_path", "init_args")}
    init_args = value.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise ConfigurationError(f"`{key}.init_args` must be a mapping of arguments, got {init_args!r}")
    both = sorted(set(extra) & set(init_args))
    if both:
        raise ConfigurationError(f"`{key}` sets `{both[0]}` both beside `class_path` and in `init_args`; keep one")
    return value["class_path"], {**dict(init_args), **extra}
