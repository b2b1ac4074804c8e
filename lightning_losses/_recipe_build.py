"""A loaded recipe -> data, model, callbacks, loggers and trainer (:func:`build_run`), every check before training.

``model`` / ``data`` are the bundled demo's arguments, or any ``LightningModule`` / ``LightningDataModule`` by import
path (:mod:`lightning_losses._classpath`). Every class's arguments (data, model, trainer, callbacks and loggers by
``class_path``, and classes nested in them) are checked against its signature and type hints, and nested class specs
built, by jsonargparse (:mod:`lightning_losses._jsonargs`). A model's ``num_features`` / ``num_classes`` come from
the datamodule when the model takes them (also through ``**kwargs`` passed to a parent class) and the datamodule has
them; ``objective`` goes to the model's ``objective`` argument, or to
:meth:`~lightning_losses.LossesMixin.configure_objective` for a model that uses the mixin without taking it.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_losses._classpath import has_class_path, import_class, split_class_spec
from lightning_losses._jsonargs import accepted_names, instantiate, parse_init_args
from lightning_losses._loggers import build_loggers
from lightning_losses._recipe_checks import (
    callback_keys,
    check_callbacks,
    check_term_names,
    check_top_level,
    check_trainer,
)
from lightning_losses._validation import qualify
from lightning_losses.errors import ConfigurationError

__all__ = ["DEFAULT_OBJECTIVE", "Run", "build_run"]

DEFAULT_OBJECTIVE = {"cross_entropy": {}}
LINKED = ("num_features", "num_classes")  # datamodule attribute -> model argument


@dataclass
class Run:
    """Everything a recipe builds: call ``run.trainer.fit(run.model, datamodule=run.datamodule)``."""

    config: DictConfig
    datamodule: Any
    model: Any
    trainer: Any
    callbacks: list[Any]


def _section(cfg: DictConfig, key: str) -> dict[str, Any]:
    value = cfg.get(key)
    if value is None:
        return {}
    container = OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value
    if not isinstance(container, dict):
        raise ConfigurationError(f"recipe key `{key}` must be a mapping, got {container!r}")
    return container


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if isinstance(value, DictConfig) else value


def _probe_objective(model: Any, datamodule: Any) -> None:
    """Evaluate a copy of each objective term on two training samples, as the demo model will feed it.

    A loss the demo cannot feed (``mse`` wants ``pred``; ``bce`` wants ``target`` shaped like ``logits``) then fails
    here, in one line, instead of in the first training step. Copies: a stateful loss is left untouched.
    """
    import torch

    from lightning_losses.objective import Objective

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


def _build_data(spec: Any) -> Any:
    import lightning as L

    from lightning_losses.demo import DigitsDataModule

    if spec is None:
        return None
    if has_class_path(spec):
        return instantiate(spec, "data", base=L.LightningDataModule)
    kwargs = _plain(spec)
    if not isinstance(kwargs, dict):
        raise ConfigurationError(f"recipe key `data` must be a mapping, got {kwargs!r}")
    kwargs = parse_init_args(DigitsDataModule, kwargs, what="recipe section `data`", prefix="data")
    try:
        datamodule = DigitsDataModule(**kwargs)
        datamodule.setup("fit")  # milliseconds; checks the split sizes against the batch size
    except ConfigurationError as err:
        raise qualify("data", err) from None
    return datamodule


def _build_model(spec: Any, datamodule: Any, objective: dict[str, Any]) -> Any:
    import lightning as L

    from lightning_losses.demo import DigitsClassifier
    from lightning_losses.mixin import LossesMixin

    if has_class_path(spec):
        path, kwargs = split_class_spec(_plain(spec), "model")
        cls = import_class(path, "model.class_path" if isinstance(spec, Mapping) else "model", base=L.LightningModule)
    else:
        cls, kwargs = DigitsClassifier, _plain(spec) or {}
        if not isinstance(kwargs, dict):
            raise ConfigurationError(f"recipe key `model` must be a mapping, got {kwargs!r}")
    # its own arguments and those its `**kwargs` pass on to a parent class (as jsonargparse follows them)
    params = {*inspect.signature(cls.__init__).parameters, *accepted_names(cls)}
    linked: dict[str, Any] = {}
    for name in LINKED:
        if name in params and getattr(datamodule, name, None) is not None:
            if name in kwargs:
                raise ConfigurationError(f"`model.{name}` is set from the recipe's `data` / `objective`; remove it")
            linked[name] = getattr(datamodule, name)
    mixin = issubclass(cls, LossesMixin)
    if "objective" in params:
        if "objective" in kwargs:
            raise ConfigurationError("`model.objective` is set from the recipe's `data` / `objective`; remove it")
        linked["objective"] = objective
    elif not mixin and objective != DEFAULT_OBJECTIVE:
        raise ConfigurationError(
            f"`objective` configures a model that uses `lightning_losses.LossesMixin`; `{cls.__qualname__}` does not "
            "(put `ll.LossesMixin` first in its bases and call `self.compute_loss`, or remove `objective`)"
        )
    prefix = "model.init_args" if has_class_path(spec) else "model"
    kwargs = parse_init_args(cls, kwargs, what="recipe section `model`", prefix=prefix, skip=tuple(linked))
    try:
        model = cls(**kwargs, **linked)
    except ConfigurationError as err:
        raise qualify("model", err) from None
    if mixin and "objective" not in params:
        # the recipe's objective, unless it is the default and the model configured its own in `__init__`
        if objective != DEFAULT_OBJECTIVE or getattr(model, "objective", None) is None:
            try:
                model.configure_objective(objective)
            except ConfigurationError as err:
                raise qualify("objective", err) from None
    return model


def _trainer_callbacks(spec: Any) -> list[Any]:
    """``trainer.callbacks``: a list of ``{class_path, init_args}`` (any Lightning callback), as in LightningCLI."""
    from lightning.pytorch.callbacks import Callback

    if spec is None:
        return []
    items = spec if isinstance(spec, list) else [spec]
    return [instantiate(item, f"trainer.callbacks[{i}]", base=Callback) for i, item in enumerate(items)]


def build_run(cfg: DictConfig, *, extra_callbacks: Iterable[Any] = ()) -> Run:
    """Validate a loaded recipe and build data, model, callbacks, logger and trainer (nothing trains yet)."""
    import lightning as L

    from lightning_losses.callbacks import build_callbacks
    from lightning_losses.demo import DigitsClassifier
    from lightning_losses.objective import Objective

    check_top_level(cfg, "the recipe")
    seed = cfg.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise ConfigurationError(f"`seed` must be an integer in [0, 2^32 - 1] (numpy's range), got {seed!r}")
    trainer_kwargs = _section(cfg, "trainer")
    objective = _section(cfg, "objective")
    try:
        check_term_names(objective)
        Objective(objective)  # validate before seeding / building anything heavy
    except ConfigurationError as err:
        raise qualify("objective", err) from None
    L.seed_everything(seed, workers=True, verbose=False)
    datamodule = _build_data(cfg.get("data"))
    model = _build_model(cfg.get("model"), datamodule, objective)
    if isinstance(model, DigitsClassifier) and hasattr(datamodule, "datasets"):
        _probe_objective(model, datamodule)
    try:
        callbacks = build_callbacks(_section(cfg, "callbacks"))
    except (ConfigurationError, TypeError, ValueError) as err:
        raise qualify("callbacks", err) from None
    extra = _trainer_callbacks(trainer_kwargs.pop("callbacks", None))
    # every value checked against Trainer's type hints; `strategy` / `accelerator` / `profiler` / `plugins` given as
    # `{class_path, init_args}` are built here (as LightningCLI does); a plain string stays a name for Lightning
    trainer_kwargs = parse_init_args(
        L.Trainer, trainer_kwargs, what="recipe section `trainer`", prefix="trainer", skip=("callbacks", "logger")
    )
    check_trainer(trainer_kwargs)
    train_set = getattr(datamodule, "datasets", {}).get("train") if hasattr(datamodule, "datasets") else None
    check_callbacks(
        callback_keys(_section(cfg, "callbacks")),
        callbacks,
        num_samples=len(train_set) if train_set is not None else None,
        num_classes=getattr(datamodule, "num_classes", None) or getattr(model, "num_classes", None),
        trainer_kwargs=trainer_kwargs,
    )
    callbacks += extra + list(extra_callbacks)
    save_dir = str(trainer_kwargs.get("default_root_dir", "runs"))
    logger = build_loggers(cfg.get("logger", "csv"), save_dir)
    if logger is False and any(type(cb).__name__ == "LearningRateMonitor" for cb in callbacks):
        raise ConfigurationError("`callbacks.lr_monitor` logs to a logger, but the recipe has `logger: none`")
    try:
        trainer = L.Trainer(**trainer_kwargs, callbacks=callbacks, logger=logger)
    except Exception as err:  # Lightning raises MisconfigurationException / ValueError for bad values
        raise qualify("trainer", err) from None
    return Run(cfg, datamodule, model, trainer, callbacks)
