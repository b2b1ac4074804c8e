"""One logger row per training step for the step statistics of every diagnostic (the objective's and each callback's).

Each write to the loggers is a logger call (W&B: a history row, milliseconds; CSV: a row), and Lightning writes its
own row of ``train/*`` values on each of its logging steps, after the batch-end hooks. The statistics that the
objective and the library's callbacks send during a training batch on such a step (the usual case: they follow
``log_every_n_steps``) are kept and written inside that row, so a logging step costs one logger call whatever the
number of callbacks, and every value sits in the same row as ``train/loss``. Values sent at any other time (a
callback's own interval that falls between the Trainer's logging steps, the end of the fit, evaluation) are written
at once, in a row of their own. A kept row that the Trainer did not write (a step it left out, e.g. one that
accumulates gradients) goes out, at its own step, before the Trainer's next row.
"""

from __future__ import annotations

from array import array
from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from lightning_losses._compat import (
    callback_metrics_store,
    forget_logged_metrics,
    in_training_batch,
    intercept_logger_rows,
    log_step,
    logger_connector,
    should_update_logs,
)

__all__ = ["host_values", "keep_media", "log_scalars", "read_values", "write_row"]

_KEPT, _MERGE, _MEDIA_KEYS = "_ll_kept_row", "_ll_merge_kept", "_ll_kept_media"


def write_row(trainer: Any, values: dict[str, Any]) -> None:
    """Send ``values`` (scalars or scalar tensors, already global) to the Trainer's loggers at :func:`log_step`: in
    the Trainer's own row of this step when it writes one after this training batch, otherwise now; into a row
    another diagnostic keeps for this step, if there is one."""
    if not _keep(trainer, values):
        logger_connector(trainer).log_metrics(values, step=log_step(trainer))


def keep_media(trainer: Any, media: dict[str, Any]) -> bool:
    """Put W&B ``media`` (``wandb`` objects by key) into the Trainer's row of this step, as :func:`write_row` does
    with scalars (a W&B log call of its own costs about as much as the whole row), when that row is kept or will be
    written after this training batch; ``False``: there is none, the caller logs them itself. Only for a Trainer whose
    loggers all take media (a CSV logger would get the objects too). They are sent, not kept in
    ``trainer.logged_metrics`` (which holds metrics)."""
    if not _keep(trainer, media):
        return False
    state = trainer.__dict__
    state[_MEDIA_KEYS] = state.get(_MEDIA_KEYS, ()) + tuple(media)
    return True


def _keep(trainer: Any, values: dict[str, Any]) -> bool:
    """Keep ``values`` for the Trainer's row of this step (``False``: it writes none; the caller writes them now); a
    row kept for an earlier step goes out first, at its own step."""
    connector = logger_connector(trainer)
    step = log_step(trainer)
    state = trainer.__dict__
    kept = state.get(_KEPT)
    if kept is not None and kept[0] == step:  # another diagnostic's row of this step is kept: the same row
        kept[1].update(values)
        return True
    if kept is not None:  # a row kept for an earlier step: out first, at its own step
        del state[_KEPT]
        connector.log_metrics(kept[1], step=kept[0])
    if in_training_batch(trainer) and should_update_logs(trainer):
        hooks = state.get(_MERGE)
        if hooks is None:  # one pair per Trainer
            hooks = state[_MERGE] = (partial(_merge_kept, trainer), partial(_forget_media, trainer))
        if intercept_logger_rows(trainer, *hooks):
            state[_KEPT] = (step, dict(values))
            return True
    return False


def _merge_kept(trainer: Any, metrics: dict[str, Any], step: int) -> dict[str, Any]:
    """What the Trainer writes at ``step``: its ``metrics`` with the row kept for that step; a row kept for another
    step is written first, at its own step."""
    kept = trainer.__dict__.pop(_KEPT, None)
    if kept is None:
        return metrics
    if kept[0] == step:
        return {**metrics, **kept[1]}
    logger_connector(trainer).log_metrics(kept[1], step=kept[0])
    return metrics


def _forget_media(trainer: Any, row: dict[str, Any]) -> None:
    """Once a row is written: the media sent in it leave ``trainer.logged_metrics``."""
    keys = trainer.__dict__.get(_MEDIA_KEYS)
    if keys is not None and any(key in row for key in keys):
        del trainer.__dict__[_MEDIA_KEYS]
        forget_logged_metrics(trainer, keys)


def log_scalars(trainer: Any, pl_module: Any, metrics: Mapping[str, Any], *, own_interval: bool = False) -> None:
    """Log step statistics (tensors or numbers, already global) from a callback hook, at :func:`log_step`.

    The values go to ``trainer.callback_metrics`` (monitorable by ``EarlyStopping`` / ``ModelCheckpoint``) and to
    every logger now, at the step the Trainer's own ``train/*`` logs of this batch are written at: on the Trainer's
    logging steps (the callers' default) and on a callback's own period (``own_interval``, kept for the callers'
    clarity: the path is the same). Not through ``LightningModule.log``: Lightning keeps a result object per key
    and step there, a fraction of a millisecond per key, which for the tens of diagnostic keys of a step would cost
    percents of a small model's step time (``bench/diagnostics.py``). In a training batch on one of the Trainer's
    logging steps they are written inside the Trainer's own row of that step (one logger call for every callback's
    values, :func:`write_row`); at other times in a row of their own, at once. Without Lightning's
    logger connector (another Trainer), ``pl_module.log_dict(on_step=True)``.
    """
    if not metrics:
        return
    connector = logger_connector(trainer)
    if connector is None:
        pl_module.log_dict(dict(metrics), on_step=True, on_epoch=False, sync_dist=False, batch_size=1)
        return
    numbers = host_values(metrics)
    # one float64 CPU tensor for all of them (monitors read tensors), in views
    # (over the numbers' own buffer: no parsing of a Python list, about half the time of `torch.tensor` after a step)
    values = torch.frombuffer(array("d", numbers.values()), dtype=torch.float64)
    row = dict(zip(numbers, values.unbind(0)))
    callback_metrics_store(trainer).update(row)  # what `trainer.callback_metrics` returns, without its refresh
    # the row: the same CPU tensors (Lightning turns a row of tensors into numbers in one pass, `.item()` each, without
    # a sync; a row that mixes numbers and tensors takes its slow path, some µs a key), in the caller's order
    write_row(trainer, row)


def host_values(metrics: Mapping[str, Any]) -> dict[str, float]:
    """``metrics`` (numbers and one-element tensors) as Python floats, in their order; the tensors read with
    :func:`read_values` (one host read off the CPU: each ``.item()`` would be a kernel and a sync of its own).

    Example:
        >>> host_values({"a": torch.tensor(0.5), "b": 2, "c": torch.tensor([3], dtype=torch.int64)})
        {'a': 0.5, 'b': 2.0, 'c': 3.0}
    """
    tensors = {k: v for k, v in metrics.items() if isinstance(v, torch.Tensor)}
    if not tensors:  # the usual case: the callers finish their values in Python
        return {k: float(v) for k, v in metrics.items()}
    read = read_values(tensors)
    return {k: read[k][0] if k in read else float(v) for k, v in metrics.items()}


def read_values(tensors: Mapping[str, torch.Tensor], separate: bool | None = None) -> dict[str, list[float]]:
    """Every tensor of ``tensors`` as a flat list of Python floats, by name: from one host read (one concatenation in
    float64 on the first tensor's device: exact for int64 counts, where a stack would promote to float32), or, with
    ``separate`` (default: every tensor on the CPU, where a read syncs nothing), each tensor's own read (a conversion
    and a concatenation would be kernels of their own, on a step after the backward).

    Example:
        >>> read_values({"n": torch.tensor(7), "q": torch.tensor([0.25, 0.75])})
        {'n': [7.0], 'q': [0.25, 0.75]}
    """
    if separate is None:
        separate = all(t.device.type == "cpu" for t in tensors.values())
    out: dict[str, list[float]] = {}
    if separate:
        for name, t in tensors.items():
            got = (t if t.ndim <= 1 else t.reshape(-1)).tolist()
            out[name] = [float(v) for v in got] if isinstance(got, list) else [float(got)]
        return out
    device, flat = next(iter(tensors.values())).device, []
    for t in tensors.values():  # no call where there is nothing to do: each is a kernel launch on a cold step
        t = t.detach() if t.requires_grad else t
        t = t if t.ndim == 1 else t.reshape(-1)
        flat.append(t if t.dtype == torch.float64 and t.device == device else t.to(device, torch.float64))
    values, at = torch.cat(flat).tolist(), 0
    for name, t in zip(tensors, flat):
        out[name], at = values[at : at + t.numel()], at + t.numel()
    return out
