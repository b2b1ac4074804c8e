"""One registry type for every component family (losses, schedules, reweighters, perturbations, callbacks).

Names are lowercase ``snake_case``; lookups ignore case and treat ``-`` as ``_``. A miss lists the valid names and
suggests the nearest one. :meth:`Registry.build` checks keyword arguments against the constructor's signature
before calling it, so a misspelled argument fails with the valid ones listed, never with a bare ``TypeError``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from lightning_losses._validation import suggest
from lightning_losses.errors import ConfigurationError

__all__ = ["Registry", "check_kwargs"]

T = TypeVar("T")


def _normalise(name: str) -> str:
    return str(name).strip().lower().replace("-", "_")


def check_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], *, what: str, skip: tuple[str, ...] = ()) -> None:
    """Raise :class:`ConfigurationError` if ``kwargs`` do not fit ``fn``'s signature.

    Unknown names are reported with the nearest valid one and the full list; missing required arguments are named.

    Example:
        >>> def f(a, b=1): ...
        >>> check_kwargs(f, {"a": 1, "b": 2}, what="`f`")
    """
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        and n not in ("self",) + skip
    ]
    for key in kwargs:
        if key not in valid:
            listed = ", ".join(f"`{v}`" for v in valid) or "none"
            raise ConfigurationError(
                f"{what} got an unexpected argument `{key}`{suggest(key, valid)} Valid arguments: {listed}"
            )
    missing = [n for n in valid if params[n].default is inspect.Parameter.empty and n not in kwargs]
    if missing:
        raise ConfigurationError(f"{what} is missing required argument(s): {', '.join(f'`{m}`' for m in missing)}")


@dataclass(frozen=True)
class _Entry(Generic[T]):
    name: str
    obj: T
    tags: frozenset[str] = field(default_factory=frozenset)


class Registry(Generic[T]):
    """A name -> constructor map with aliases, filtering and validated construction.

    Args:
        kind: what the registry holds, used in messages (``"loss"``, ``"schedule"``, ...).
        name_attr: if set, :meth:`register` stamps the canonical name on a registered class as this class attribute
            (the reweighters' ``strategy``), so that a class never writes its name twice.

    Example:
        >>> reg = Registry("widget")
        >>> @reg.register("spinner", aliases=("top",))
        ... class Spinner:
        ...     def __init__(self, speed: float = 1.0):
        ...         self.speed = speed
        >>> reg.build("top", speed=2.0).speed
        2.0
        >>> reg.list()
        ['spinner']
    """

    def __init__(self, kind: str, *, name_attr: str | None = None) -> None:
        self.kind = kind
        self.name_attr = name_attr
        self._entries: dict[str, _Entry[T]] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self, name: str | None = None, *, aliases: tuple[str, ...] = (), tags: tuple[str, ...] = ()
    ) -> Callable[[T], T]:
        """Decorator registering a class or factory under ``name`` (default: the object's ``__name__``, lowercased)."""

        def decorator(obj: T) -> T:
            canonical = _normalise(name or getattr(obj, "__name__", ""))
            if not canonical:
                raise ConfigurationError(f"a {self.kind} needs a non-empty name")
            if canonical in self._entries or canonical in self._aliases:
                raise ConfigurationError(f"{self.kind} `{canonical}` is already registered")
            if self.name_attr and inspect.isclass(obj):
                written = vars(obj).get(self.name_attr)
                if written not in (None, "", canonical):
                    raise ConfigurationError(
                        f"{self.kind} `{canonical}`: the class sets `{self.name_attr}` = {written!r}; leave it out, "
                        "the registry sets it to the registered name"
                    )
                setattr(obj, self.name_attr, canonical)
            self._entries[canonical] = _Entry(canonical, obj, frozenset(tags))
            for alias in aliases:
                self.alias(alias, canonical)
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Remove a registered entry and its aliases (for tests and interactive experiments)."""
        canonical = self.canonical(name)
        del self._entries[canonical]
        self._aliases = {a: t for a, t in self._aliases.items() if t != canonical}

    def alias(self, alias: str, name: str) -> None:
        """Make ``alias`` resolve to the registered ``name``."""
        alias, target = _normalise(alias), self.canonical(name)
        if alias in self._entries or (alias in self._aliases and self._aliases[alias] != target):
            raise ConfigurationError(f"{self.kind} alias `{alias}` is already taken")
        self._aliases[alias] = target

    def canonical(self, name: str) -> str:
        """Resolve ``name`` (or an alias) to its canonical name, or raise with the nearest valid name."""
        if not isinstance(name, str):
            raise ConfigurationError(f"a {self.kind} name must be a string, got {name!r}")
        key = _normalise(name)
        if key in self._entries:
            return key
        if key in self._aliases:
            return self._aliases[key]
        known = sorted(self._entries) + sorted(self._aliases)
        listed = ", ".join(f"`{n}`" for n in sorted(self._entries))
        raise ConfigurationError(f"unknown {self.kind} `{name}`{suggest(key, known)} Valid names: {listed}")

    def get(self, name: str) -> T:
        """Return the registered class or factory for ``name``."""
        return self._entries[self.canonical(name)].obj

    def tags(self, name: str) -> frozenset[str]:
        """Return the tags of a registered entry."""
        return self._entries[self.canonical(name)].tags

    def list(self, filter: str | Callable[[str], bool] | None = None, *, tag: str | None = None) -> list[str]:
        """Sorted canonical names, optionally filtered by a substring / predicate and a tag."""
        names = sorted(self._entries)
        if tag is not None:
            names = [n for n in names if tag in self._entries[n].tags]
        if filter is None:
            return names
        if callable(filter):
            return [n for n in names if filter(n)]
        return [n for n in names if _normalise(filter) in n]

    def build(self, spec: Any, /, **kwargs: Any) -> Any:
        """Build a component from a name, a ``{"name": ..., **kwargs}`` mapping, or pass an instance through.

        Raises:
            ConfigurationError: unknown name, unknown or missing argument, or an invalid value.
        """
        if isinstance(spec, Mapping):
            spec = dict(spec)
            if "name" not in spec:
                raise ConfigurationError(f"a {self.kind} spec mapping needs a `name` key, got keys {sorted(spec)}")
            name = spec.pop("name")
            kwargs = {**spec, **kwargs}
        elif isinstance(spec, str):
            name = spec
        else:
            if kwargs:
                raise ConfigurationError(f"cannot pass arguments to an already built {self.kind} {spec!r}")
            return spec
        canonical = self.canonical(name)
        obj = self._entries[canonical].obj
        target = obj.__init__ if inspect.isclass(obj) else obj
        check_kwargs(target, kwargs, what=f"{self.kind} `{canonical}`")
        return obj(**kwargs)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (_normalise(name) in self._entries or _normalise(name) in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self.list())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"
