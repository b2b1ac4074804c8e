"""Every private attribute of Lightning, torchmetrics and torch that the package reads or writes, in one place.

By kind: :mod:`~lightning_losses._compat.steps` (the optimization closure, the Trainer, callbacks, hook signatures,
the data fetcher), :mod:`~lightning_losses._compat.logs` (the logger connector, its rows and the result collection)
and :mod:`~lightning_losses._compat.tensors` (torchmetrics' metric state, torch's normalisation layers).

Each accessor names what it reads, and says what happens when a release no longer has it: a documented fallback (the
behaviour a public API gives) or a :class:`RuntimeError` naming the attribute and the installed version. The package
supports ``lightning>=2.2,<3`` and ``torchmetrics>=1.3``; ``tests/test_compat.py`` checks every accessor listed in
:data:`ACCESSORS` against the installed versions (a CI matrix over versions runs it once per version).

Nothing here imports Lightning at import time: the manual perturbation helper (plain PyTorch) uses the metric and
BatchNorm accessors.
"""

from __future__ import annotations

from lightning_losses._compat._registry import ACCESSORS
from lightning_losses._compat.logs import (
    callback_metrics_store,
    forget_logged_metrics,
    in_training_batch,
    intercept_logger_rows,
    log_on_step,
    log_step,
    logger_connector,
    should_update_logs,
)
from lightning_losses._compat.steps import (
    attached_trainer,
    closure_parts,
    closure_result,
    epoch_to_run,
    restart_train_iterator,
    set_closure_result,
    state_key,
    takes_batch_idx,
)
from lightning_losses._compat.tensors import metric_snapshot, norm_layer_types, restore_metric

__all__ = [
    "ACCESSORS",
    "attached_trainer",
    "callback_metrics_store",
    "closure_parts",
    "closure_result",
    "epoch_to_run",
    "forget_logged_metrics",
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
