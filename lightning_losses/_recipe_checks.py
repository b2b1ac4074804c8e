"""Recipe checks that need more than one argument at a time (the trainer's values, the callbacks against the data
and the epochs, term names, output folders), so that a recipe that cannot run fails before training, in one line
naming the key (:class:`~lightning_losses.errors.ConfigurationError`)."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from lightning_losses._validation import check_int, check_number, suggest
from lightning_losses.errors import ConfigurationError

__all__ = [
    "RECIPE_KEYS",
    "callback_keys",
    "check_callbacks",
    "check_term_names",
    "check_trainer",
    "check_top_level",
    "check_writable",
]

RECIPE_KEYS = ("seed", "vars", "data", "model", "objective", "callbacks", "trainer", "logger")
SAF_TABLE_LIMIT_BYTES = 2**31  # SAF's trajectory table: samples x (epochs_ago + 1) x classes float32 (+ int32 stamps)


def check_top_level(cfg: Any, where: str) -> None:
    """Every top-level key of a recipe is one of :data:`RECIPE_KEYS` (else: the nearest one and the list)."""
    for key in cfg:
        if key not in RECIPE_KEYS:
            valid = ", ".join(f"`{k}`" for k in RECIPE_KEYS)
            raise ConfigurationError(
                f"unknown recipe key `{key}` in {where}{suggest(str(key), RECIPE_KEYS)} Valid keys: {valid}"
            )


def check_term_names(objective: dict[str, Any]) -> None:
    """Term names become ``torch.nn.ModuleDict`` keys: non-empty, without ``.``, not one of its attributes."""
    from torch import nn

    taken = nn.ModuleDict()
    for name in objective:
        name = str(name)
        if not name or "." in name:
            raise ConfigurationError(
                f"`objective` term name {name!r} must be non-empty and contain no `.` (a term name is a module name); "
                f"use e.g. {name.replace('.', '_') or 'ce'!r} and `loss: <registered name>`"
            )
        if hasattr(taken, name):
            raise ConfigurationError(
                f"`objective` term name {name!r} is an attribute of torch.nn.ModuleDict; choose another name and set "
                "`loss: <registered name>`"
            )


def check_writable(key: str, path: Any) -> None:
    """``path`` exists as a writable folder or can be created (probed with a temporary folder, then removed)."""
    target = Path(os.path.expanduser(str(path))).absolute()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigurationError(
            f"`{key}` must be a folder that can be created, got {str(path)!r} (`{probe}` is a file)"
        )
    try:
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".ll-write-check-"))
    except OSError as err:
        raise ConfigurationError(
            f"`{key}` must be a writable folder, got {str(path)!r} ({err.strerror or err} in `{probe}`)"
        ) from None


def check_trainer(trainer_kwargs: dict[str, Any]) -> None:
    """Values Lightning accepts but divides by, or turns into nonsense, mid-training; names with a suggestion."""
    _check_trainer_names(trainer_kwargs)
    for key in ("check_val_every_n_epoch", "accumulate_grad_batches"):  # Lightning divides by them mid-training
        if trainer_kwargs.get(key) is not None:
            check_int(f"trainer.{key}", trainer_kwargs[key], low=1)
    if trainer_kwargs.get("log_every_n_steps") is not None:  # 0 turns step logging off
        check_int("trainer.log_every_n_steps", trainer_kwargs["log_every_n_steps"], low=0)
    interval = trainer_kwargs.get("val_check_interval")
    bad_int = isinstance(interval, int) and not isinstance(interval, bool) and interval < 1
    if bad_int or (isinstance(interval, float) and not 0.0 < interval <= 1.0):  # NaN too
        raise ConfigurationError(
            f"`trainer.val_check_interval` must be an integer >= 1 (batches), a float in (0.0, 1.0] (a fraction of "
            f"the epoch) or a duration, got {interval!r}"
        )
    if trainer_kwargs.get("gradient_clip_val") is not None:
        check_number("trainer.gradient_clip_val", trainer_kwargs["gradient_clip_val"], low=0.0)
    check_writable("trainer.default_root_dir", trainer_kwargs.get("default_root_dir", "runs"))


def _check_trainer_names(trainer_kwargs: dict[str, Any]) -> None:
    """A misspelt ``trainer.strategy`` / ``trainer.accelerator`` name fails with the nearest registered name
    (Lightning's own message lists a few examples and no suggestion)."""
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    registries = {
        "strategy": ("auto", *StrategyRegistry.available_strategies()),
        "accelerator": ("auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())),
    }
    for key, names in registries.items():
        value = trainer_kwargs.get(key)
        if isinstance(value, str) and (value.lower() if key == "strategy" else value) not in names:  # as Lightning
            shown = ", ".join(f"`{n}`" for n in names[:6]) + (", ..." if len(names) > 6 else "")
            raise ConfigurationError(
                f"`trainer.{key}` must be one of the names Lightning registers ({shown}), got {value!r}"
                f"{suggest(value, names)}"
            )


def callback_keys(spec: Any) -> list[str]:
    """The recipe key of each callback ``build_callbacks(spec)`` returns, in its order."""
    if isinstance(spec, dict):
        return [str(name) for name in spec]
    if isinstance(spec, list):
        return [str(item.get("name", i)) if isinstance(item, dict) else str(i) for i, item in enumerate(spec)]
    return []


def check_callbacks(
    keys: list[str],
    callbacks: list[Any],
    *,
    num_samples: int | None,
    num_classes: int | None,
    trainer_kwargs: dict[str, Any],
) -> None:
    """Callback arguments against the run: SAF's ``epochs_ago`` against the epochs and the memory it needs, an
    entropy target against the largest entropy over ``num_classes`` classes (``log C``). A check whose size the
    datamodule does not tell (``None``) is skipped."""
    from lightning_losses.entropy.callback import EntropyControl
    from lightning_losses.perturbation.trajectory import SAF

    max_epochs = trainer_kwargs.get("max_epochs")
    if max_epochs is None and trainer_kwargs.get("max_steps", -1) == -1 and trainer_kwargs.get("max_time") is None:
        max_epochs = 1000  # Lightning's default then
    for key, cb in zip(keys, callbacks):
        if isinstance(cb, SAF):
            name = f"callbacks.{key}.epochs_ago"
            if isinstance(max_epochs, int) and max_epochs >= 1 and cb.epochs_ago >= max_epochs:
                raise ConfigurationError(
                    f"`{name}` must be less than `trainer.max_epochs` = {max_epochs} (the term compares with outputs "
                    f"recorded `epochs_ago` epochs back, which must exist within the run), got {cb.epochs_ago}"
                )
            if not (cb.num_samples or num_samples) or not num_classes:
                continue
            rows = (cb.num_samples or num_samples) * (cb.epochs_ago + 1)
            size = rows * (num_classes * 4 + 4)
            if size > SAF_TABLE_LIMIT_BYTES:
                raise ConfigurationError(
                    f"`{name}` = {cb.epochs_ago} needs a trajectory table of {size / 2**30:.1f} GiB (samples x "
                    f"(epochs_ago + 1) x classes); at most {SAF_TABLE_LIMIT_BYTES / 2**30:.0f} GiB, got {cb.epochs_ago}"
                )
        if isinstance(cb, EntropyControl) and cb.controller is not None and num_classes:
            limit = math.log(num_classes)
            ctl = cb.controller
            if ctl.band is not None:
                values, what = {"band[0]": ctl.band[0]}, "the band's low edge"
            else:
                values, what = {"target": max(ctl.target_at(0), ctl.target_at(2**62))}, "the target"
            for arg, value in values.items():
                if value > limit + 1e-9:
                    raise ConfigurationError(
                        f"`callbacks.{key}.{arg}` must be <= log C = {limit:.4f} nats (the entropy of the uniform "
                        f"distribution over the data's {num_classes} classes: {what} is unreachable), got {value!r}"
                    )
