"""A class's arguments from a recipe, checked and built by jsonargparse (as LightningCLI does), reported in one line.

:func:`parse_init_args` hands ``kwargs`` to a jsonargparse parser made from the class's signature
(``ArgumentParser.add_class_arguments``): it resolves the accepted names (also those a ``**kwargs`` forwards to a
parent class), validates every value against its type hint, and builds nested ``{class_path, init_args}`` values
(``trainer.strategy``, ``trainer.plugins``, a model argument typed ``nn.Module``). jsonargparse's own messages span
several lines and name no alternative; they are turned here into the library's one-line
:class:`~lightning_losses.errors.ConfigurationError` naming the key (``model.init_args.lr``), the expected type, the
value, and for a misspelt name the nearest one and the full list. A nested class spec that fails is explained by
building it the same way (the message then names the innermost key).

Kept by hand, because jsonargparse alone would make the check weaker or the message worse:

* the import of a ``class_path`` (:func:`lightning_losses._classpath.import_class`): jsonargparse's error for a
  misspelt class names no near match and, inside a union, comes as a multi-line block;
* jsonargparse reads a *string* as YAML where the type asks for something else (``"yes"`` -> ``True``, ``"3"`` ->
  ``3``, ``"[1, 2]"`` -> a list). A recipe's values are typed by YAML / OmegaConf already, so a string that reaches a
  ``bool`` / number / list argument was quoted or misspelt (``--trainer.enable_progress_bar yes``): refused, as
  before; a string where the hint admits one (``int | str``) is passed on as written, not read as a number.
  jsonargparse also lets ``None`` through for any type; refused unless the hint or the default admits it;
* a class whose ``__init__`` takes ``**kwargs`` that jsonargparse cannot follow to a parent class receives the names
  jsonargparse does not know as given (the class's own call then checks them), as before; where jsonargparse follows
  them (``super().__init__(**kwargs)``), an unknown name fails with the nearest valid one.

Not here: the library's own parts by registry name (``objective`` terms, ``callbacks: {sam: ...}``, schedules) keep
their registries' checks (:func:`lightning_losses.registry.check_kwargs` and each component's range checks, which
say more than a type does); ``logger: wandb`` checks ``wandb.init``'s arguments, which no signature of the logger
lists (:mod:`lightning_losses._loggers`); a ``trainer.strategy`` / ``accelerator`` *name* is checked against
Lightning's registries (:mod:`lightning_losses._recipe_checks`), since its type is just ``str``.
"""

from __future__ import annotations

import enum
import functools
import inspect
import re
import types
import typing
from collections.abc import Mapping
from typing import Any

from lightning_losses._classpath import import_class, split_class_spec
from lightning_losses._validation import describe_type, nearest, qualify, suggest
from lightning_losses.errors import ConfigurationError

__all__ = ["accepted_names", "instantiate", "parse_init_args"]

_NEST = "init"  # the group the class's arguments are parsed under
_VALUE_MODULES = ("builtins", "datetime", "pathlib", "decimal", "fractions", "uuid")  # classes given as plain values


def parse_init_args(
    cls: type, kwargs: Mapping[str, Any], *, what: str, prefix: str, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``kwargs`` for ``cls(**kwargs)``, validated against its signature; nested class specs are built.

    Args:
        cls: the class to be built.
        kwargs: the recipe's arguments (plain containers).
        what: how an unknown or missing name is reported (``"recipe section `model`"``).
        prefix: how a value is reported (``"model.init_args"`` -> ``"`model.init_args.lr` must be float, ..."``).
        skip: arguments the caller fills in (not the recipe's): neither accepted nor required here.

    Raises:
        ConfigurationError: one line naming the key, the expectation and the value.
    """
    import warnings

    parser, known, hints, admits_none = _parser(cls, tuple(skip))
    unknown = [key for key in kwargs if key not in known]
    # `**kwargs` that jsonargparse followed to a parent class (it then lists the parent's names): unknown names fail
    followed = set(known) - set(_own_params(cls))
    if unknown and (followed or not _takes_var_keyword(cls)):
        listed = ", ".join(f"`{k}`" for k in known) or "none"
        key = str(unknown[0])
        raise ConfigurationError(
            f"{what} got an unexpected argument `{key}`{suggest(key, known)} Valid arguments: {listed}"
        )
    given = {key: _canonical(value) for key, value in kwargs.items() if key in known}
    if not known:  # a class without arguments (or only `**kwargs` jsonargparse cannot follow): nothing to parse
        return dict(kwargs)
    try:
        parsed = parser.parse_object({_NEST: given})
    except Exception as err:  # noqa: BLE001 - jsonargparse's ArgumentError (argparse's), or a TypeError from a hint
        raise _one_line(err, given, hints, what=what, prefix=prefix) from None
    for key, value in given.items():
        _refuse_coercion(f"{prefix}.{key}", value, parsed[_NEST][key], hints.get(key), admits_none[key])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            built = parser.instantiate(parsed)[_NEST]
    except ConfigurationError as err:  # a nested class of the library's: its message names its own argument
        raise qualify(prefix, err) from None
    except Exception as err:  # noqa: BLE001 - a nested class's own checks (ValueError, TypeError, ...)
        raise ConfigurationError(f"{what}: {' '.join(str(err).split())}") from None
    # a string where the hint admits one stays as written (jsonargparse reads `"3"` for `int | str` as 3)
    keep = [key for key, value in given.items() if isinstance(value, str) and str in _union_args(hints.get(key))]
    return {**{key: built[key] for key in given}, **{key: kwargs[key] for key in [*keep, *unknown]}}


def instantiate(value: Any, key: str, base: type | tuple[type, ...] | None = None, **linked: Any) -> Any:
    """Build the object a class spec names; ``linked`` arguments are added where the class accepts them."""
    path, kwargs = split_class_spec(value, key)
    cls = import_class(path, f"{key}.class_path" if isinstance(value, Mapping) else key, base)
    kwargs = parse_init_args(
        cls, kwargs, what=f"`{key}` ({cls.__name__})", prefix=f"{key}.init_args", skip=tuple(linked)
    )
    try:
        return cls(**kwargs, **linked)
    except ConfigurationError as err:
        raise qualify(key, err) from None
    except (TypeError, ValueError) as err:
        raise ConfigurationError(f"`{key}` ({cls.__name__}): {' '.join(str(err).split())}") from None


def accepted_names(cls: type) -> list[str]:
    """The argument names jsonargparse finds for ``cls``: its own and those its ``**kwargs`` pass to a parent class."""
    return list(_parser(cls, ())[1])


@functools.lru_cache(maxsize=64)
def _parser(cls: type, skip: tuple[str, ...]) -> tuple[Any, list[str], dict[str, Any], dict[str, bool]]:
    """jsonargparse's parser for ``cls`` (made once per class: a Trainer's takes a few tenths of a second), the
    argument names, their type hints (the signature's as written, for their order in messages, else jsonargparse's)
    and whether each may be ``None`` by its default."""
    import warnings

    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. "unable to resolve parameters of a **kwargs": treated by the caller
        added = parser.add_class_arguments(cls, _NEST, instantiate=False, fail_untyped=False, skip=set(skip))
    known = [key.split(".", 1)[1] for key in added]
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001 - unresolvable annotations
        hints = {}
    admits_none = {}
    for action in parser._actions:
        name = action.dest.split(".", 1)[1] if action.dest.startswith(f"{_NEST}.") else ""
        if name in known:
            if getattr(action, "_typehint", None) is not None:
                hints.setdefault(name, action._typehint)
            admits_none[name] = not action.required and action.default is None
    return parser, known, hints, admits_none


def _own_params(cls: type) -> list[str]:
    try:
        return list(inspect.signature(cls.__init__).parameters)
    except (TypeError, ValueError):
        return []


def _takes_var_keyword(cls: type) -> bool:
    try:
        params = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _canonical(value: Any) -> Any:
    """``{class_path: X, key: value}`` (arguments beside ``class_path``) -> ``{class_path: X, init_args: {...}}``."""
    if isinstance(value, list):
        return [_canonical(item) for item in value]
    if isinstance(value, Mapping) and "class_path" in value:
        extra = {k: v for k, v in value.items() if k not in ("class_path", "init_args", "dict_kwargs")}
        if extra:
            return {
                **{k: v for k, v in value.items() if k not in extra},
                "init_args": {**(value.get("init_args") or {}), **extra},
            }
    return value


def _union_args(hint: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(hint)
    if origin is typing.Union or origin is types.UnionType:
        return tuple(arg for part in typing.get_args(hint) for arg in _union_args(part))
    return (hint,)


def _wrong_type(key: str, hint: Any, value: Any) -> ConfigurationError:
    """ "`key` must be <the hint in words>, got <value>", with the nearest choice for a misspelt ``Literal`` string."""
    expected = "a bool (True or False)" if hint is bool else describe_type(hint)
    choices = [c for arg in _union_args(hint) if typing.get_origin(arg) is typing.Literal for c in typing.get_args(arg)]
    match = nearest(value, [c for c in choices if isinstance(c, str)]) if isinstance(value, str) else None
    return ConfigurationError(
        f"`{key}` must be {expected}, got {value!r}" + (f"; did you mean `{match}`?" if match else "")
    )


def _refuse_coercion(key: str, given: Any, parsed: Any, hint: Any, none_by_default: bool) -> None:
    """See the module docstring: a string read as YAML into another type, or ``None`` the hint does not admit."""
    args = _union_args(hint)
    if hint is None or Any in args:
        return
    coerced = (
        isinstance(given, str)
        and str not in args
        and (parsed is None or isinstance(parsed, (bool, int, float, list, dict, tuple)))
    )
    admits_none = none_by_default or type(None) in args
    if coerced or (given is None and not admits_none):
        raise _wrong_type(key, hint, given)


def _class_types(hint: Any) -> tuple[type, ...]:
    """The classes a hint admits that a ``{class_path, init_args}`` value could name (not ``int``, ``str``, ...)."""
    found = []
    for arg in _union_args(hint):
        origin = typing.get_origin(arg)
        if origin in (list, tuple, typing.Union) or origin is types.UnionType:
            found += _class_types(typing.get_args(arg)[0]) if typing.get_args(arg) else []
        elif isinstance(arg, type) and arg.__module__ not in _VALUE_MODULES and not issubclass(arg, enum.Enum):
            found.append(arg)
    return tuple(found)


def _explain_class_spec(key: str, value: Any, hint: Any) -> None:
    """Raise the one-line error of a ``{class_path, init_args}`` value (or a list of them) that jsonargparse refused:
    the class (imported with a near-match suggestion and checked against the hint) or its arguments (parsed the same
    way as the outer class, so the message names the innermost key). Returns if no such reason is found."""
    bases = _class_types(hint)
    if not bases:
        return
    if isinstance(value, list):
        for i, item in enumerate(value):
            _explain_class_spec(f"{key}[{i}]", item, hint)
        return
    if isinstance(value, Mapping) and "class_path" not in value:
        name = "a name or " if str in _union_args(hint) else ""
        raise ConfigurationError(f"`{key}` must be {name}a mapping with `class_path` (and `init_args`), got {value!r}")
    if isinstance(value, Mapping):
        path, kwargs = split_class_spec(value, key)
        cls = import_class(path, f"{key}.class_path", base=bases)
        parse_init_args(cls, kwargs, what=f"`{key}` ({cls.__name__})", prefix=f"{key}.init_args")


def _one_line(err: Exception, given: dict[str, Any], hints: dict[str, Any], *, what: str, prefix: str) -> Exception:
    """jsonargparse's (multi-line) error -> a one-line :class:`ConfigurationError` naming the key."""
    text = str(err)
    match = re.search(r'(?:Parser key|Key) "([^"]+)"', text)
    required = re.search(r"^the following arguments are required: (.+)", text)
    if required and not match:
        names = [name.strip().split(".", 1)[-1] for name in required.group(1).split(",")]
        return ConfigurationError(f"{what} is missing required argument(s): {', '.join(f'`{n}`' for n in names)}")
    dotted = match.group(1).removeprefix(f"{_NEST}.") if match else ""
    name = dotted.split(".", 1)[0]
    if name in given:
        key = f"{prefix}.{name}"
        try:
            _explain_class_spec(key, given[name], hints.get(name))
        except ConfigurationError as explained:
            return explained
        if dotted == name and hints.get(name) is not None:
            return _wrong_type(key, hints[name], given[name])
        reason = " ".join(line.strip() for line in text.splitlines()[1:] if line.strip())
        return ConfigurationError(f"`{prefix}.{dotted}`: {reason or text}, got {given[name]!r}")
    return ConfigurationError(f"{what}: {' '.join(text.split())}")
