"""The recipe's ``logger``: ``csv`` / ``wandb`` / ``none`` or a mapping with a ``name`` key -> a Lightning logger.

W&B runs offline unless the user says otherwise in one of the two documented ways: ``offline: false`` in the mapping
or ``WANDB_MODE=online`` in the environment. A ``mode`` (``wandb.init``'s) or ``settings.mode`` must agree with that
decision, and the offline decision is passed to ``wandb.init`` explicitly (``mode="offline"``), so no other key, W&B
setting or environment variable can send the run online.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from lightning_losses._validation import check_bool, check_choice, qualify, suggest
from lightning_losses.errors import ConfigurationError

__all__ = ["LOGGERS", "build_logger", "build_loggers"]

LOGGERS = ("csv", "wandb", "none")
WANDB_ONLINE_MODES = ("online", "shared", "run")  # W&B modes that send the run to the server
WANDB_OFFLINE_MODES = ("offline", "dryrun")  # (`disabled`: use `logger: none`)


def _names(items: Any) -> str:
    return ", ".join(f"`{x}`" for x in items)


def build_logger(spec: Any, save_dir: str) -> Any:
    """Build a Lightning logger from ``csv`` / ``wandb`` / ``none`` or a mapping with a ``name`` key.

    W&B runs offline unless the mapping says ``offline: false`` or the environment sets ``WANDB_MODE=online``; a
    ``mode`` or ``settings: {mode: ...}`` that contradicts this fails (use ``logger: none`` to turn logging off).

    Example:
        >>> build_logger("none", "runs")
        False
    """
    if spec is None or spec is False:
        return False
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    kwargs: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        kwargs = dict(spec)
        if "name" not in kwargs:
            raise ConfigurationError(
                f"a `logger` mapping needs a `name` (one of {_names(LOGGERS)}), got keys {_names(kwargs) or 'none'}"
            )
        name = kwargs.pop("name")
    else:
        name = spec
    if name not in LOGGERS:
        raise ConfigurationError(
            f"`logger` must be one of {_names(LOGGERS)} (or a mapping with `name`), got {name!r}"
            f"{suggest(str(name), LOGGERS)}"
        )
    if name == "none":
        if kwargs:
            raise ConfigurationError(f"`logger` none takes no arguments, got {_names(kwargs)}")
        return False
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        kwargs.setdefault("save_dir", save_dir)
        kwargs.setdefault("name", "lightning_losses")
        from lightning_losses._jsonargs import parse_init_args

        return CSVLogger(**parse_init_args(CSVLogger, kwargs, what="`logger` (csv)", prefix="logger"))
    return _wandb_logger(kwargs, save_dir)


def _wandb_logger(kwargs: dict[str, Any], save_dir: str) -> Any:
    try:
        import wandb
    except ImportError:
        raise ConfigurationError(
            "`logger: wandb` needs the `wandb` package: pip install 'lightning-losses[wandb]'"
        ) from None
    from lightning.pytorch.loggers import WandbLogger

    taken = ("self", "kwargs", "name")  # `name` selects the logger here
    valid = [n for n in inspect.signature(WandbLogger.__init__).parameters if n not in taken]
    valid += [n for n in inspect.signature(wandb.init).parameters if n not in valid and n not in taken]
    for key in kwargs:  # WandbLogger forwards unknown keys to wandb.init, which would fail at the first log
        if key not in valid:
            raise ConfigurationError(
                f"`logger` (wandb) got an unexpected argument `{key}`{suggest(key, valid)} "
                f"Valid arguments: {_names(valid)}"
            )
    if "offline" in kwargs:
        offline = check_bool("logger.offline", kwargs["offline"])
        decided_by = f"`logger.offline: {str(offline).lower()}`"
    else:
        offline = os.environ.get("WANDB_MODE", "offline") != "online"
        decided_by = "the default" if offline else "WANDB_MODE=online"
    settings_mode = _settings_mode(kwargs.get("settings"), wandb)
    for key, mode in (("logger.mode", kwargs.get("mode")), ("logger.settings.mode", settings_mode)):
        if mode is None:
            continue
        check_choice(key, mode, WANDB_ONLINE_MODES + WANDB_OFFLINE_MODES)
        if offline and mode in WANDB_ONLINE_MODES:
            raise ConfigurationError(
                f"`{key}` {mode!r} would send the run to W&B, but the logger runs offline ({decided_by}); to go "
                "online set `logger.offline: false` or WANDB_MODE=online"
            )
        if not offline and mode in WANDB_OFFLINE_MODES:
            raise ConfigurationError(
                f"`{key}` {mode!r} contradicts {decided_by}; to run offline set `logger.offline: true` instead"
            )
    kwargs["offline"] = offline
    if offline:
        kwargs["mode"] = "offline"  # explicit: wandb.init's own argument outranks settings and the environment
    # online (the user said so): a `mode` given, one of the online ones, goes to wandb.init as it is
    kwargs.setdefault("project", "lightning_losses")
    # absolute: W&B's service process outlives a run and resolves relative paths against its own working directory
    kwargs["save_dir"] = os.path.abspath(kwargs.get("save_dir", save_dir))
    try:
        return WandbLogger(**kwargs)
    except Exception as err:  # noqa: BLE001 - e.g. Lightning's MisconfigurationException for offline + log_model
        raise ConfigurationError(" ".join(str(qualify("logger", err)).split())) from None


def _settings_mode(settings: Any, wandb: Any) -> str | None:
    """The ``mode`` a ``settings`` value sets explicitly (``None`` if it sets none), after checking every key."""
    if settings is None:
        return None
    if isinstance(settings, wandb.Settings):
        return settings.mode if "mode" in settings.model_fields_set else None
    if not isinstance(settings, Mapping):
        raise ConfigurationError(f"`logger.settings` must be a mapping of W&B settings, got {settings!r}")
    try:
        wandb.Settings(**settings)
    except (TypeError, ValueError) as err:  # pydantic's ValidationError is a ValueError
        errors = err.errors() if hasattr(err, "errors") else []
        if errors:
            key = ".".join(str(part) for part in errors[0].get("loc", ()))
            raise ConfigurationError(
                f"`logger.settings.{key}`: {errors[0].get('msg', 'invalid')}, got {errors[0].get('input')!r}"
            ) from None
        raise ConfigurationError(f"`logger.settings`: {' '.join(str(err).split())}") from None
    return settings.get("mode")


def build_loggers(spec: Any, save_dir: str) -> Any:
    """The recipe's ``logger``: :func:`build_logger`'s forms, ``{class_path: ..., init_args: ...}`` (any Lightning
    logger; ``save_dir`` defaults to the trainer's root folder) or a list of these. ``False`` for no logger."""
    from lightning_losses._classpath import import_class, split_class_spec
    from lightning_losses._recipe_checks import check_writable

    if isinstance(spec, DictConfig) or type(spec).__name__ == "ListConfig":
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, list):
        built = [build_loggers(item, save_dir) for item in spec]
        return [logger for logger in built if logger is not False] or False
    if isinstance(spec, Mapping) and "class_path" in spec:
        from lightning.pytorch.loggers import Logger

        path, kwargs = split_class_spec(spec, "logger")
        cls = import_class(path, "logger.class_path", base=Logger)
        if "save_dir" in inspect.signature(cls.__init__).parameters:
            kwargs.setdefault("save_dir", save_dir)
        from lightning_losses._jsonargs import parse_init_args

        kwargs = parse_init_args(cls, kwargs, what=f"`logger` ({cls.__name__})", prefix="logger.init_args")
        try:
            return cls(**kwargs)
        except Exception as err:  # noqa: BLE001 - the logger's own argument checks
            raise ConfigurationError(" ".join(str(qualify("logger", err)).split())) from None
    for key in ("save_dir", "dir"):
        if isinstance(spec, Mapping) and spec.get(key) is not None:
            check_writable(f"logger.{key}", spec[key])
    return build_logger(spec, save_dir)
