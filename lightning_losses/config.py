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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_losses._loggers import build_logger
from lightning_losses._recipe_checks import (
    callback_keys,
    check_callbacks,
    check_term_names,
    check_trainer,
    check_writable,
)
from lightning_losses._validation import check_annotated, qualify, suggest
from lightning_losses.errors import ConfigurationError
from lightning_losses.registry import check_kwargs

__all__ = ["RECIPE_KEYS", "Run", "build_logger", "build_run", "default_recipe", "load_recipe"]

RECIPE_KEYS = ("seed", "vars", "data", "model", "objective", "callbacks", "trainer", "logger")
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


def _check_top_level(cfg: DictConfig, where: str) -> None:
    for key in cfg:
        if key not in RECIPE_KEYS:
            valid = ", ".join(f"`{k}`" for k in RECIPE_KEYS)
            raise ConfigurationError(
                f"unknown recipe key `{key}` in {where}{suggest(str(key), RECIPE_KEYS)} Valid keys: {valid}"
            )


def load_recipe(source: Any = None, overrides: Iterable[str] = ()) -> DictConfig:
    """Load a recipe onto the embedded default, apply dot-list overrides and resolve interpolations.

    Args:
        source: a YAML path, a mapping, a ``DictConfig`` or ``None`` (the default recipe).
        overrides: ``key.sub=value`` strings; an override of a whole ``objective`` / ``callbacks`` replaces it.

    Example:
        >>> cfg = load_recipe({"objective": {"focal": {"gamma": 1.0}}}, ["trainer.max_epochs=2"])
        >>> list(cfg.objective), cfg.trainer.max_epochs
        (['focal'], 2)
    """
    base = default_recipe()
    user = _as_config(source)
    _check_top_level(user, "the recipe")
    for key in REPLACED_KEYS:
        if key in user:
            base[key] = user[key]
    try:
        merged = OmegaConf.merge(base, {k: v for k, v in user.items() if k not in REPLACED_KEYS})
    except (OmegaConfBaseException, TypeError, ValueError) as err:  # `data: [1, 2]` where the default has a mapping
        raise ConfigurationError(f"the recipe does not fit the default recipe's layout: {_one_line(err)}") from None
    for item in overrides:
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
            if key in REPLACED_KEYS:
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
    try:
        resolved = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigurationError(f"cannot resolve the recipe's interpolations: {_one_line(err)}") from None
    return OmegaConf.create(resolved)


def _section(cfg: DictConfig, key: str) -> dict[str, Any]:
    value = cfg.get(key)
    if value is None:
        return {}
    container = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    if not isinstance(container, dict):
        raise ConfigurationError(f"recipe key `{key}` must be a mapping, got {container!r}")
    return container


@dataclass
class Run:
    """Everything a recipe builds: call ``run.trainer.fit(run.model, datamodule=run.datamodule)``."""

    config: DictConfig
    datamodule: Any
    model: Any
    trainer: Any
    callbacks: list[Any]


def _probe_objective(model: Any, datamodule: Any) -> None:
    """Evaluate a copy of each objective term on two training samples, as the demo model will feed it.

    A loss the demo cannot feed (``mse`` wants ``pred``; ``bce`` wants ``target`` shaped like ``logits``) then fails
    here, in one line, instead of in the first training step. Copies: a stateful loss is left untouched.
    """
    import torch

    from lightning_losses.objective import Objective

    datamodule.setup("fit")
    batch = {k: v[:2] for k, v in datamodule.datasets["train"].tensors.items()}
    tensors = model.objective_tensors(torch.zeros(2, model.num_classes), batch)
    given = ", ".join(f"`{k}` {list(v.shape)}" for k, v in tensors.items())
    for term in model.objective.terms:
        try:
            with torch.no_grad():
                Objective([copy.deepcopy(term)])(tensors)
        except (ValueError, TypeError, RuntimeError, IndexError) as err:
            raise ConfigurationError(
                f"`objective.{term.name}` cannot run on the demo model's outputs ({given}): {err}"
            ) from None


def build_run(cfg: DictConfig, *, extra_callbacks: Iterable[Any] = ()) -> Run:
    """Validate a loaded recipe and build data, model, callbacks, logger and trainer (nothing trains yet)."""
    import lightning as L

    from lightning_losses.callbacks import build_callbacks
    from lightning_losses.demo import DigitsClassifier, DigitsDataModule
    from lightning_losses.objective import Objective

    _check_top_level(cfg, "the recipe")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigurationError(f"`seed` must be an integer in [0, 2^32 - 1] (numpy's range), got {seed!r}")
    data_kwargs, model_kwargs, trainer_kwargs = _section(cfg, "data"), _section(cfg, "model"), _section(cfg, "trainer")
    try:
        check_term_names(_section(cfg, "objective"))
        Objective(_section(cfg, "objective"))  # validate before seeding / building anything heavy
    except ConfigurationError as err:
        raise qualify("objective", err) from None
    L.seed_everything(seed, workers=True, verbose=False)
    for section, cls, kwargs in (("data", DigitsDataModule, data_kwargs), ("model", DigitsClassifier, model_kwargs)):
        for linked in ("num_features", "num_classes", "objective"):
            if section == "model" and linked in kwargs:
                raise ConfigurationError(f"`model.{linked}` is set from the recipe's `data` / `objective`; remove it")
        check_kwargs(cls.__init__, kwargs, what=f"recipe section `{section}`")
    try:
        datamodule = DigitsDataModule(**data_kwargs)
        datamodule.setup("fit")  # milliseconds; checks the split sizes against the batch size
    except ConfigurationError as err:
        raise qualify("data", err) from None
    try:
        model = DigitsClassifier(
            num_features=datamodule.num_features,
            num_classes=datamodule.num_classes,
            objective=_section(cfg, "objective"),
            **model_kwargs,
        )
    except ConfigurationError as err:
        raise qualify("model", err) from None
    _probe_objective(model, datamodule)
    try:
        callbacks = build_callbacks(_section(cfg, "callbacks"))
    except (ConfigurationError, TypeError, ValueError) as err:
        raise qualify("callbacks", err) from None
    check_kwargs(L.Trainer.__init__, trainer_kwargs, what="recipe section `trainer`", skip=("callbacks", "logger"))
    check_annotated(L.Trainer.__init__, trainer_kwargs, prefix="trainer")
    check_trainer(trainer_kwargs)
    check_callbacks(
        callback_keys(_section(cfg, "callbacks")),
        callbacks,
        num_samples=len(datamodule.datasets["train"]),
        num_classes=datamodule.num_classes,
        trainer_kwargs=trainer_kwargs,
    )
    callbacks += list(extra_callbacks)
    save_dir = str(trainer_kwargs.get("default_root_dir", "runs"))
    logger_spec = cfg.get("logger", "csv")
    for key in ("save_dir", "dir"):
        if isinstance(logger_spec, Mapping) and logger_spec.get(key) is not None:
            check_writable(f"logger.{key}", logger_spec[key])
    logger = build_logger(logger_spec, save_dir)
    if logger is False and any(type(cb).__name__ == "LearningRateMonitor" for cb in callbacks):
        raise ConfigurationError("`callbacks.lr_monitor` logs to a logger, but the recipe has `logger: none`")
    try:
        trainer = L.Trainer(**trainer_kwargs, callbacks=callbacks, logger=logger)
    except Exception as err:  # Lightning raises MisconfigurationException / ValueError for bad values
        raise qualify("trainer", err) from None
    return Run(cfg, datamodule, model, trainer, callbacks)
