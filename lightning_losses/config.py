"""Recipes: OmegaConf YAML -> validated objects.

Schema (every section optional in a user recipe; missing ones come from the embedded default,
``lightning_losses/recipes/default.yaml``)::

    seed: 0                      # lightning.seed_everything
    vars: {...}                  # free-form values for ${vars.x} interpolation; not used otherwise
    data: {...}                  # DigitsDataModule arguments
    model: {...}                 # DigitsClassifier arguments (num_features / num_classes come from the data)
    objective: {term: {...}}     # see lightning_losses.objective; replaces the default's wholesale
    callbacks: {name: {...}}     # see lightning_losses.callbacks; replaces the default's wholesale
    trainer: {...}               # lightning.Trainer arguments
    logger: csv                  # csv | wandb | none | {name: wandb, project: ..., offline: true, ...}

``${...}`` interpolation is resolved; overrides are dot-lists (``trainer.max_epochs=3``), the form the CLI turns
``--trainer.max_epochs 3`` into. Every error is a :class:`ConfigurationError` that names the key, the expectation and
the value, raised before anything trains.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_losses._classpath import has_class_path
from lightning_losses._loggers import build_logger
from lightning_losses._recipe_build import Run, build_run
from lightning_losses._recipe_checks import RECIPE_KEYS, check_top_level
from lightning_losses._validation import suggest
from lightning_losses.errors import ConfigurationError

__all__ = ["RECIPE_KEYS", "Run", "build_logger", "build_run", "default_recipe", "load_recipe"]

REPLACED_KEYS = ("objective", "callbacks")


def default_recipe() -> DictConfig:
    """The embedded default recipe."""
    text = resources.files("lightning_losses").joinpath("recipes/default.yaml").read_text()
    return OmegaConf.create(text)


def _as_config(source: Any) -> DictConfig:
    if source is None:
        return OmegaConf.create({})
    if isinstance(source, DictConfig):
        return source
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise ConfigurationError(f"recipe file `{source}` does not exist")
        try:
            cfg = OmegaConf.load(path)
        except OSError as err:  # OmegaConf's "Invalid loaded object type" for a scalar document
            raise ConfigurationError(f"recipe file `{source}` must hold a mapping ({_one_line(err)})") from None
        except (OmegaConfBaseException, ValueError, yaml.YAMLError) as err:
            raise ConfigurationError(f"recipe file `{source}` is not valid YAML: {_one_line(err)}") from None
        if not isinstance(cfg, DictConfig):
            raise ConfigurationError(f"recipe file `{source}` must hold a mapping, got a list")
        return cfg
    if isinstance(source, Mapping):
        return OmegaConf.create(dict(source))
    raise ConfigurationError(f"a recipe must be a path, a mapping or a DictConfig, got {type(source).__name__}")


def _one_line(err: Exception) -> str:
    """An OmegaConf / YAML error on one line: its first line, and the key it names (``full_key``) if any."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    key = next((line.split(":", 1)[1].strip() for line in lines[1:] if line.startswith("full_key:")), "")
    return lines[0] + (f" (at `{key}`)" if key else "")


CLASS_KEYS = ("model", "data")  # sections that may name a class (`class_path`); see lightning_losses._classpath


def _onto(base: DictConfig, user: DictConfig) -> DictConfig:
    """Merge one recipe onto another: `objective` / `callbacks` replace, a `model` / `data` naming another class
    replaces, arguments of the same class merge (into `init_args` when the section has a `class_path`)."""
    base = copy.deepcopy(base)
    rest = {}
    for key, value in user.items():
        if key in REPLACED_KEYS:
            base[key] = value
        elif key in CLASS_KEYS and (has_class_path(value) or has_class_path(base.get(key))):
            old = base.get(key)
            if has_class_path(value) and (not has_class_path(old) or _class_of(value) != _class_of(old)):
                base[key] = _canonical(value)
            else:
                base[key] = _canonical(old)
                rest[key] = _canonical(value) if has_class_path(value) else _as_init_args(value)
        else:
            rest[key] = value
    return OmegaConf.merge(base, rest)


def _plain(value: Any) -> Any:
    """A recipe value as plain containers, interpolations left unresolved (they resolve against the whole recipe)."""
    return OmegaConf.to_container(value, resolve=False) if isinstance(value, DictConfig) else value


def _canonical(value: Any) -> dict[str, Any]:
    """A class spec as ``{class_path, init_args}`` (the short forms of lightning_losses._classpath expanded)."""
    value = _plain(value)
    if isinstance(value, str):
        return {"class_path": value, "init_args": {}}
    extra = {k: v for k, v in value.items() if k not in ("class_path", "init_args")}
    return {"class_path": value["class_path"], "init_args": {**(value.get("init_args") or {}), **extra}}


def _as_init_args(value: Any) -> dict[str, Any]:
    """Arguments given without ``class_path`` for a section that has one: its ``init_args``."""
    value = _plain(value)
    if isinstance(value, dict) and set(value) <= {"init_args"}:
        return value
    return {"init_args": value}


def _class_of(value: Any) -> Any:
    return value.get("class_path") if isinstance(value, Mapping) else value


def load_recipe(source: Any = None, overrides: Iterable[str] = ()) -> DictConfig:
    """Load a recipe onto the embedded default, apply dot-list overrides and resolve interpolations.

    Args:
        source: a YAML path, a mapping, a ``DictConfig``, ``None`` (the default recipe) or a list of these (merged in
            order, as repeated ``--config`` options are).
        overrides: ``key.sub=value`` strings; an override of a whole ``objective`` / ``callbacks`` replaces it.

    Example:
        >>> cfg = load_recipe({"objective": {"focal": {"gamma": 1.0}}}, ["trainer.max_epochs=2"])
        >>> list(cfg.objective), cfg.trainer.max_epochs
        (['focal'], 2)
    """
    merged = default_recipe()
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    for item in sources:
        user = _as_config(item)
        check_top_level(user, "the recipe")
        try:
            merged = _onto(merged, user)
        except (OmegaConfBaseException, TypeError, ValueError) as err:  # `data: [1, 2]` where the default has a mapping
            raise ConfigurationError(f"the recipe does not fit the default recipe's layout: {_one_line(err)}") from None
    for item in overrides:
        _apply_override(merged, item)
    try:
        resolved = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigurationError(f"cannot resolve the recipe's interpolations: {_one_line(err)}") from None
    return OmegaConf.create(resolved)


def _apply_override(merged: DictConfig, item: str) -> None:
    if "=" not in item:
        raise ConfigurationError(f"an override must look like `key=value`, got {item!r}")
    key, _, raw = item.partition("=")
    top = key.split(".")[0]
    if top not in RECIPE_KEYS:
        raise ConfigurationError(
            f"unknown recipe key `{key}`{suggest(top, RECIPE_KEYS)} "
            f"Valid keys: {', '.join(f'`{k}`' for k in RECIPE_KEYS)}"
        )
    try:
        # unresolved: an interpolation in an override (`${vars.epochs}`) resolves against the whole recipe below
        value = OmegaConf.to_container(OmegaConf.from_dotlist([f"v={raw}"]), resolve=False)["v"]
        parts = key.split(".")
        names_class = has_class_path(value) or has_class_path(merged.get(top))
        if top in CLASS_KEYS and ((len(parts) == 1 and names_class) or parts[1:2] == ["class_path"]):
            spec = value if len(parts) == 1 else {"class_path": value}
            merged[top] = _onto(merged, OmegaConf.create({top: spec}))[top]
        elif top in CLASS_KEYS and has_class_path(merged.get(top)) and parts[1] != "init_args":
            merged[top] = _canonical(merged[top])
            OmegaConf.update(merged, ".".join([top, "init_args", *parts[1:]]), value, merge=True, force_add=True)
        elif key in REPLACED_KEYS:
            merged[key] = value
        else:
            OmegaConf.update(merged, key, value, merge=True, force_add=True)
    except OmegaConfBaseException as err:
        raise ConfigurationError(f"cannot apply override `{item}`: {_one_line(err)}") from None
    except yaml.YAMLError as err:  # `--objective '{cross_entropy: {}'`: an unclosed flow mapping
        problem = " ".join(str(getattr(err, "problem", None) or err).split())
        context = getattr(err, "context", None)
        raise ConfigurationError(
            f"the value of `{key}` is not valid YAML ({f'{context}: ' if context else ''}{problem}), got {raw!r}"
        ) from None
