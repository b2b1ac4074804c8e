"""Every private attribute of Lightning, torchmetrics and torch that the package reads or writes, in one place.

Each accessor names what it reads, and says what happens when a release no longer has it: a documented fallback (the
behaviour a public API gives) or a :class:`RuntimeError` naming the attribute and the installed version. The package
supports ``lightning>=2.2,<3`` and ``torchmetrics>=1.3``; ``tests/test_compat.py`` checks every accessor listed in
:data:`ACCESSORS` against the installed versions (a CI matrix over versions runs it once per version).

Nothing here imports Lightning at import time: the manual perturbation helper (plain PyTorch) uses the metric and
BatchNorm accessors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "ACCESSORS",
    "attached_trainer",
    "closure_parts",
    "closure_result",
    "in_training_batch",
    "intercept_logger_rows",
    "log_on_step",
    "log_step",
    "logger_connector",
    "metric_snapshot",
    "norm_layer_types",
    "restart_train_iterator",
    "restore_metric",
    "set_closure_result",
    "should_update_logs",
    "state_key",
    "takes_batch_idx",
]

#: accessor name -> the private attribute(s) it reads; the compatibility test is parametrised over it.
ACCESSORS: dict[str, str] = {}

_METRIC_BOOKKEEPING = ("_update_count", "_computed", "_forward_cache")


def _reads(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        ACCESSORS[fn.__name__] = what
        return fn

    return register


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:  # pragma: no cover - both are dependencies
        return "not installed"


# ---------------------------------------------------------------------------------------------- Lightning
@_reads("Closure._step_fn, Closure._backward_fn, Closure._zero_grad_fn (lightning.pytorch.loops.optimization)")
def closure_parts(closure: Any) -> tuple[Callable[[], Any], Callable[[Any], Any]] | None:
    """``(step_fn, backward_fn)`` of Lightning's automatic-optimization closure: ``step_fn()`` runs
    ``training_step`` and returns a ``ClosureResult`` (``.closure_loss``, ``.loss``), ``backward_fn(loss)`` the
    backward with the precision plugin's scaling. Fallback: ``None`` for a closure of another shape (or one without a
    backward), which the caller then simply calls."""
    step_fn, backward_fn = getattr(closure, "_step_fn", None), getattr(closure, "_backward_fn", None)
    if step_fn is None or backward_fn is None or not hasattr(closure, "_zero_grad_fn"):
        return None
    return step_fn, backward_fn


@_reads("Closure._result (the ClosureResult of the closure's last call)")
def closure_result(closure: Any) -> Any:
    """The result of the closure's last call (what Lightning reports as the step's outputs). Fallback: ``None``."""
    return getattr(closure, "_result", None)


def set_closure_result(closure: Any, result: Any) -> None:
    """Make ``result`` the closure's last result (the outputs Lightning reports); a no-op for a closure without one.
    Part of :func:`closure_result`'s entry in :data:`ACCESSORS`."""
    if hasattr(closure, "_result"):
        closure._result = result


@_reads("Trainer._logger_connector")
def logger_connector(trainer: Any) -> Any | None:
    """The Trainer's logger connector (``.log_metrics(metrics)`` sends to every logger now,
    ``.should_update_logs``). Fallback: ``None`` (callers then log through ``LightningModule.log``)."""
    return getattr(trainer, "_logger_connector", None)


@_reads("Trainer._logger_connector.should_update_logs")
def should_update_logs(trainer: Any) -> bool:
    """Whether the Trainer writes its step logs after this training batch. Fallback without the connector: Lightning's
    rule, ``global_step % log_every_n_steps == 0``."""
    connector = logger_connector(trainer)
    if connector is not None and hasattr(connector, "should_update_logs"):
        return bool(connector.should_update_logs)
    return trainer.global_step % max(int(trainer.log_every_n_steps), 1) == 0


@_reads("Trainer.fit_loop.epoch_loop._batches_that_stepped")
def log_step(trainer: Any) -> int:
    """The step the Trainer's own step logs (``train/*``) are written at now (``trainer/global_step`` in W&B): the
    optimizer steps finished before this batch's logs. Fallback: ``trainer.global_step``."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    return int(getattr(loop, "_batches_that_stepped", trainer.global_step))


_LOGGED = "_ll_logged_on_step"


@_reads(
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
    are Lightning's own. Fallback without those attributes: ``module.log`` on every call.
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
        and getattr(results, "dataloader_idx", 0) is None
        and hasattr(results, "update_metrics")
        and hasattr(connector, "should_reset_tensors")
        and hasattr(connector, "_current_fx")
    )
    fast = known and not connector.should_reset_tensors(fx)  # a new epoch's first call: `log` resets the collection
    for name, value in metrics.items():
        key = f"{fx}.{name}"
        entry = seen.get(name)
        if fast and entry is not None and entry[0] is results and entry[1] == fx and entry[3] == value.device:
            metric = results.get(key)
            if metric is entry[2]:
                results.update_metrics(key, value, batch_size)
                connector._current_fx = fx  # as `log` leaves it
                continue
        module.log(name, value, on_step=True, on_epoch=False, sync_dist=False, batch_size=batch_size)
        metric = results.get(key) if known else None
        if metric is not None:
            seen[name] = (results, fx, metric, value.device)


@_reads("LightningModule._trainer")
def attached_trainer(module: Any) -> Any | None:
    """The Trainer ``module`` is attached to, or ``None`` (``module.trainer`` raises when there is none). Fallback
    without the attribute: ``module.trainer``, ``None`` when that raises."""
    if hasattr(module, "_trainer"):
        return module._trainer
    try:
        return module.trainer
    except (RuntimeError, AttributeError):  # no Trainer attached; a plain nn.Module has no `trainer` at all
        return None


@_reads("Callback._generate_state_key")
def state_key(callback: Any, **key: Any) -> str:
    """The callback's checkpoint key from ``key`` (what Lightning's docs tell ``state_key`` to return). Fallback:
    Lightning's own format, ``f"{qualname}{key!r}"``, so checkpoints keep matching."""
    generate = getattr(callback, "_generate_state_key", None)
    if generate is not None:
        return generate(**key)
    return f"{type(callback).__qualname__}{key!r}"


@_reads("lightning.pytorch.utilities.signature_utils.is_param_in_hook_signature")
def takes_batch_idx(training_step: Callable[..., Any]) -> bool:
    """Whether ``training_step`` takes ``batch_idx`` (Lightning then passes it). Fallback: the same rule from the
    signature (a ``batch_idx`` parameter, ``*args``, or at least two parameters)."""
    try:
        from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
    except ImportError:
        params = inspect.signature(training_step).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL or p.name == "batch_idx" for p in params):
            return True
        return len([p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]) >= 2
    return is_param_in_hook_signature(training_step, "batch_idx", min_args=2)


# ---------------------------------------------------------------------------------------------- torchmetrics
@_reads("Metric._defaults (the state names), Metric._update_count, Metric._computed, Metric._forward_cache")
def metric_snapshot(metric: Any) -> dict[str, Any]:
    """A copy of a ``torchmetrics`` metric's accumulated state (tensors cloned, list states copied) and of its
    bookkeeping, for :func:`restore_metric`. Without ``_defaults``: the public ``metric_state`` names; with neither,
    a :class:`RuntimeError` naming the installed torchmetrics."""
    names = getattr(metric, "_defaults", None)
    if names is None:
        state = getattr(metric, "metric_state", None)
        if state is None:
            raise RuntimeError(
                f"cannot read the state of the metric {type(metric).__name__}: neither `Metric._defaults` nor "
                f"`Metric.metric_state` exists in torchmetrics {_version('torchmetrics')} (supported: >=1.3)"
            )
        names = state
    snapshot = {}
    for name in names:
        value = getattr(metric, name)
        snapshot[name] = value.clone() if isinstance(value, torch.Tensor) else list(value)
    snapshot.update({k: getattr(metric, k) for k in _METRIC_BOOKKEEPING if hasattr(metric, k)})
    return snapshot


def restore_metric(metric: Any, snapshot: dict[str, Any]) -> None:
    """Put back what :func:`metric_snapshot` copied (part of its entry in :data:`ACCESSORS`)."""
    for name, value in snapshot.items():
        setattr(metric, name, value)


# ---------------------------------------------------------------------------------------------- torch
@_reads("torch.nn.modules.batchnorm._NormBase")
def norm_layer_types() -> tuple[type, ...]:
    """The classes of normalisation layers that may track running statistics (BatchNorm, SyncBatchNorm,
    InstanceNorm and their lazy forms). Fallback: those public classes listed one by one."""
    base = getattr(nn.modules.batchnorm, "_NormBase", None)
    if base is not None:
        return (base,)
    names = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d")
    names += ("InstanceNorm3d", "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d")
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))


# ---------------------------------------------------------------------------------------------- Lightning's rows
@_reads("Trainer._logger_connector.log_metrics (every row the Trainer writes; wrapped on the instance)")
def intercept_logger_rows(trainer: Any, before: Callable[[dict[str, Any], int], dict[str, Any]]) -> bool:
    """Pass every row the Trainer writes to its loggers through ``before(metrics, step) -> metrics`` first (``step``:
    the step the row is written at), installed once per Trainer; ``True`` when it is in place. Fallback without the
    logger connector or its ``log_metrics``: ``False`` (the caller then writes its rows itself)."""
    connector = logger_connector(trainer)
    original = getattr(connector, "log_metrics", None)
    if original is None:
        return False
    if connector.__dict__.get("_ll_rows_before") is None:

        def log_metrics(metrics: dict[str, Any], step: int | None = None) -> None:
            at = step
            if at is None:  # Lightning's own rule: a `step` metric, else the steps that stepped so far
                at = int(metrics["step"]) if "step" in metrics else log_step(trainer)
            original(connector.__dict__["_ll_rows_before"](metrics, at), step)

        connector.log_metrics = log_metrics
    connector.__dict__["_ll_rows_before"] = before
    return True


@_reads("Trainer.fit_loop.epoch_loop.batch_progress.current (.ready, .completed)")
def in_training_batch(trainer: Any) -> bool:
    """Whether a training batch has started and not completed (its hooks, ``on_train_batch_end`` included, run; the
    Trainer writes its step row after). Fallback: ``False``."""
    loop = getattr(getattr(trainer, "fit_loop", None), "epoch_loop", None)
    current = getattr(getattr(loop, "batch_progress", None), "current", None)
    if current is None or not hasattr(current, "ready") or not hasattr(current, "completed"):
        return False
    return bool(getattr(trainer, "training", False)) and current.ready > current.completed


@_reads("Trainer.fit_loop._data_fetcher")
def restart_train_iterator(trainer: Any) -> bool:
    """Create the training dataloader's iterator anew (a sampler changed after Lightning created it); ``True`` when
    done. Lightning creates the first iterator of a fit before ``on_train_epoch_start`` and, since 2.5.3, keeps it
    for the first epoch of a resumed fit (Lightning issue #21938): a loader with workers has then drawn its first
    indices from the sampler as it was before the hook. Call it from ``on_train_epoch_start`` only (the epoch loop
    creates the iterator of every later epoch after that hook). Fallback without the attribute: ``False`` (nothing
    restarted)."""
    fetcher = getattr(getattr(trainer, "fit_loop", None), "_data_fetcher", None)
    if fetcher is None:
        return False
    iter(fetcher)
    return True
