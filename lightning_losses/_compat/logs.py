"""Accessors of Lightning's logging: the logger connector and its rows, the result collection, the logging step."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from lightning_losses._compat._registry import reads

__all__ = [
    "callback_metrics_store",
    "forget_logged_metrics",
    "in_training_batch",
    "intercept_logger_rows",
    "log_on_step",
    "log_step",
    "logger_connector",
    "should_update_logs",
]


@reads("Trainer._logger_connector")
def logger_connector(trainer: Any) -> Any | None:
    """The Trainer's logger connector (``.log_metrics(metrics)`` sends to every logger now,
    ``.should_update_logs``). Fallback: ``None`` (callers then log through ``LightningModule.log``)."""
    return getattr(trainer, "_logger_connector", None)


@reads("Trainer._logger_connector._callback_metrics")
def callback_metrics_store(trainer: Any) -> dict[str, Any]:
    """The dict that ``trainer.callback_metrics`` returns, without the property's refresh from the result collection
    (it walks every value logged through ``LightningModule.log``: a fraction of a millisecond per read, each time).
    Values put here are what the property returns next (it only adds the logged ones). Fallback:
    ``trainer.callback_metrics``."""
    store = getattr(logger_connector(trainer), "_callback_metrics", None)
    return store if isinstance(store, dict) else trainer.callback_metrics


@reads(
    "Trainer._logger_connector.should_update_logs; in training its rule on Trainer.state.stage._value_, "
    "Trainer.fit_loop.epoch_loop._batches_that_stepped, Trainer.should_stop, Trainer.log_every_n_steps"
)
def should_update_logs(trainer: Any) -> bool:
    """Whether the Trainer writes its step logs after this training batch. Fallback without the connector: Lightning's
    rule, ``global_step % log_every_n_steps == 0``.

    Every diagnostic of a training batch asks (the objective's, each callback's, in several hooks), and Lightning's
    property walks the active loop each time (some 20 µs on a CPU step, most of it comparing string enums); in
    training its rule is evaluated on the counters directly: the fit loop's steps taken so far plus one divisible by
    ``log_every_n_steps`` (never when it is 0), or ``should_stop``. The compat test compares the two."""
    try:  # direct reads (each diagnostic asks on every step: a `getattr` with a default costs more)
        stage_value = trainer.state.stage._value_  # the raw value: comparing Lightning's str enums runs Python code
        stepped = trainer.fit_loop.epoch_loop._batches_that_stepped
        connector = trainer._logger_connector
    except AttributeError:
        stage_value = stepped = None
        connector = logger_connector(trainer)
    if connector is None:
        return trainer.global_step % max(int(trainer.log_every_n_steps), 1) == 0
    if stage_value == "train" and type(stepped) is int:
        every = trainer.log_every_n_steps
        return bool(every) and ((stepped + 1) % every == 0 or bool(trainer.should_stop))
    due = getattr(connector, "should_update_logs", None)  # a property: evaluated once
    if due is None:
        return trainer.global_step % max(int(trainer.log_every_n_steps), 1) == 0
    return bool(due)


@reads("Trainer.fit_loop.epoch_loop._batches_that_stepped")
def log_step(trainer: Any) -> int:
    """The step the Trainer's own step logs (``train/*``) are written at now (``trainer/global_step`` in W&B): the
    optimizer steps finished before this batch's logs. Fallback: ``trainer.global_step``."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))


_LOGGED = "_ll_logged_on_step"


@reads(
    "Trainer._results, LightningModule._current_fx_name, Trainer._logger_connector.should_reset_tensors, "
    "_ResultCollection.update_metrics / .dataloader_idx (lightning.pytorch.trainer.connectors.logger_connector.result)"
)
def log_on_step(module: Any, trainer: Any, metrics: dict[str, torch.Tensor], batch_size: int) -> None:
    """``module.log(name, value, on_step=True, on_epoch=False, sync_dist=False, batch_size=batch_size)`` for each of
    ``metrics`` (detached scalar tensors), with a name's later calls in the same hook sent straight to the result
    object its first call registered.

    ``LightningModule.log`` checks its arguments, builds and compares the name's metadata and moves the result object
    to the value's device on every call: about a millisecond on a CPU step (one logged loss is several percent of a
    small model's step), though after the first call of a name in a hook nothing of it can change. A later call of the
    same name in the same hook, of the same result collection, with a value on the same device and the collection not
    due for its reset, goes to ``_ResultCollection.update_metrics`` (what ``log`` ends with): the same result object
    gets the same update, so ``callback_metrics``, the logger rows and the checks of a user's own ``log`` of the name
    are Lightning's own. A module whose class overrides ``log`` gets every call through it. Fallback without those
    attributes: ``module.log`` on every call.
    """
    state = module.__dict__
    seen = state.get(_LOGGED)
    if seen is None:
        seen = state[_LOGGED] = {}
    results = getattr(trainer, "_results", None)
    fx = getattr(module, "_current_fx_name", None)
    connector = getattr(trainer, "_logger_connector", None)
    known = (
        results is not None
        and fx is not None
        and _own_log(type(module))
        and getattr(results, "dataloader_idx", 0) is None
        and hasattr(results, "update_metrics")
        and hasattr(connector, "should_reset_tensors")
        and hasattr(connector, "_current_fx")
    )
    fast = known and not connector.should_reset_tensors(fx)  # a new epoch's first call: `log` resets the collection
    for name, value in metrics.items():
        key = f"{fx}.{name}"
        entry = seen.get(name)
        # the key holds the hook's name: the same result object under it means the same hook
        if fast and entry is not None and entry[0] is results and entry[2] == value.device:
            if results.get(key) is entry[1]:
                results.update_metrics(key, value, batch_size)
                connector._current_fx = fx  # as `log` leaves it
                continue
        module.log(name, value, on_step=True, on_epoch=False, sync_dist=False, batch_size=batch_size)
        metric = results.get(key) if known else None
        if metric is not None:
            seen[name] = (results, metric, value.device)


def _own_log(cls: type) -> bool:
    """Whether ``cls.log`` is ``LightningModule.log`` itself (not a user's override), kept per class."""
    own = _OWN_LOG.get(cls)
    if own is None:
        from lightning.pytorch import LightningModule

        own = _OWN_LOG[cls] = getattr(cls, "log", None) is LightningModule.log
    return own


_OWN_LOG: dict[type, bool] = {}


# ---------------------------------------------------------------------------------------------- Lightning's rows
@reads("Trainer._logger_connector.log_metrics (every row the Trainer writes; wrapped on the instance)")
def intercept_logger_rows(
    trainer: Any,
    before: Callable[[dict[str, Any], int], dict[str, Any]],
    after: Callable[[dict[str, Any]], None] | None = None,
) -> bool:
    """Pass every row the Trainer writes to its loggers through ``before(metrics, step) -> metrics`` first (``step``:
    the step the row is written at) and, once written, to ``after(row)``; installed once per Trainer; ``True`` when it
    is in place. Fallback without the logger connector or its ``log_metrics``: ``False`` (the caller then writes its
    rows itself)."""
    connector = logger_connector(trainer)
    original = getattr(connector, "log_metrics", None)
    if original is None:
        return False
    state = connector.__dict__
    if state.get("_ll_rows_before") is None:

        def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
            at = step
            if at is None:  # Lightning's own rule: a `step` metric, else the steps that stepped so far
                at = int(metrics["step"]) if "step" in metrics else log_step(trainer)
            row = state["_ll_rows_before"](metrics, at)
            original(row, step)
            done = state["_ll_rows_after"]
            if done is not None:
                done(row)

        connector.log_metrics = log_metrics
    state["_ll_rows_before"], state["_ll_rows_after"] = before, after
    return True


@reads("Trainer._logger_connector._logged_metrics (what `trainer.logged_metrics` returns)")
def forget_logged_metrics(trainer: Any, keys: Iterable[str]) -> None:
    """Take ``keys`` out of ``trainer.logged_metrics`` (values sent to the loggers that are not metrics: W&B media in a
    row of the Trainer's). Fallback: nothing."""
    logged = getattr(logger_connector(trainer), "_logged_metrics", None)
    if isinstance(logged, dict):
        for key in keys:
            logged.pop(key, None)


@reads("Trainer.fit_loop.epoch_loop.batch_progress.current (.ready, .completed)")
def in_training_batch(trainer: Any) -> bool:
    """Whether a training batch has started and not completed (its hooks, ``on_train_batch_end`` included, run; the
    Trainer writes its step row after). Fallback: ``False``."""
    try:  # direct reads (asked by every diagnostic's row; a `getattr` with a default costs more)
        current = trainer.fit_loop.epoch_loop.batch_progress.current
        ready, completed = current.ready, current.completed
    except AttributeError:
        return False
    return bool(getattr(trainer, "training", False)) and ready > completed
