"""Diagnostics shared by the library's callbacks: scalars through Lightning, media for the loggers that take it.

* :func:`log_scalars`: step statistics go into ``trainer.callback_metrics`` and the Trainer's loggers at the step the
  Trainer's own ``train/*`` logs are written at (on the Trainer's logging steps, or on a callback's own
  ``log_every_n_steps``): every value can be monitored (``EarlyStopping``, ``ModelCheckpoint``) and lines up with
  ``train/*``.
* :func:`log_histogram`, :func:`log_table`, :func:`log_image`: W&B loggers (``WandbLogger``) get a
  ``wandb.Histogram`` (of the global batch: gathered over the data-parallel group) / ``wandb.Table`` /
  ``wandb.Image`` through the logger's ``log_metrics`` at the same step (on a logging step of a training batch,
  when W&B loggers are the Trainer's only ones, in the Trainer's own row of the step: one W&B log call); loggers
  without media (CSV, ...) are skipped without error and the values are not even moved to the host. ``wandb``
  is imported only when a W&B logger is there; W&B itself logs from rank 0 only.
* :class:`MediaCadence`: when a callback logs media (``media_every_n_steps``: ``None`` about once per epoch and at
  most once per :data:`MEDIA_MIN_STEPS` steps, ``0`` never, ``N`` every ``N`` optimizer steps).
* :func:`calibration_bins`, :func:`reliability_diagram`: the bins of a reliability diagram and its picture
  (matplotlib, Agg canvas, imported lazily).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_losses._compat import log_step
from lightning_losses._log_rows import keep_media, log_scalars
from lightning_losses._validation import check_int
from lightning_losses.distributed import all_gather_values, global_sum

__all__ = [
    "MEDIA_MIN_STEPS",
    "MediaCadence",
    "calibration_bins",
    "histogram",
    "log_histogram",
    "log_histograms",
    "log_image",
    "log_reliability",
    "log_reliability_bins",
    "log_scalars",
    "log_table",
    "media_loggers",
    "reliability_bins",
    "reliability_diagram",
]


def media_loggers(trainer: Any) -> list[Any]:
    """The Trainer's loggers that take media (W&B); empty when there is none (no ``wandb`` import then). Asked on
    every step by the callbacks with media: the answer is kept on the Trainer for its list of loggers (while it is
    the same list with the same length; Lightning's ``trainer.loggers = ...`` sets a new one)."""
    loggers = getattr(trainer, "loggers", ())
    state = getattr(trainer, "__dict__", None)
    memo = None if state is None else state.get(_MEDIA)
    if memo is not None and memo[0] is loggers and memo[1] == len(loggers):
        return memo[2]
    from lightning.pytorch.loggers import WandbLogger

    found = [lg for lg in loggers if isinstance(lg, WandbLogger)]
    if state is not None and isinstance(loggers, list):
        state[_MEDIA] = (loggers, len(loggers), found)
    return found


_MEDIA = "_ll_media_loggers"


def _step(trainer: Any, step: int | None) -> int:
    return log_step(trainer) if step is None else int(step)


def histogram(values: torch.Tensor, bins: int = 64) -> tuple[list[int], list[float]] | None:
    """``(counts, edges)`` of the finite ``values`` over ``bins`` equal bins from their minimum to their maximum (the
    last bin closed; ``numpy.histogram``'s rule, also for equal values: the range widened by 0.5 each side), counted
    on the values' device; ``None`` without a finite value. Two host reads of a few numbers, no copy of the values.

    Example:
        >>> histogram(torch.tensor([0.0, 1.0, 1.0, 3.0, float("nan")]), bins=3)
        ([1, 2, 1], [0.0, 1.0, 2.0, 3.0])
    """
    bins = check_int("bins", bins, low=1)
    flat = values.detach().reshape(-1)
    flat = flat if flat.dtype in (torch.float32, torch.float64) else flat.float()
    if not flat.numel():
        return None
    # the usual case first: the extremes of all the values are finite (a NaN or an infinity shows in them), so no
    # test and no copy of the finite values (kernels of their own, on a step after the backward)
    lo, hi = torch.stack(torch.aminmax(flat)).tolist()
    if not (math.isfinite(lo) and math.isfinite(hi)):
        flat = flat[torch.isfinite(flat)]
        if not flat.numel():
            return None
        lo, hi = torch.stack(torch.aminmax(flat)).tolist()
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts = [int(c) for c in torch.histc(flat, bins=bins, min=lo, max=hi).tolist()]
    step = (hi - lo) / bins
    return counts, [lo + i * step for i in range(bins)] + [hi]


def log_histogram(trainer: Any, key: str, values: torch.Tensor, *, step: int | None = None, bins: int = 64) -> bool:
    """Log a histogram of ``values`` over the global batch (gathered from every data-parallel rank; non-finite values
    left out) to the media loggers; ``True`` when one took it (:func:`log_histograms` with one key)."""
    return log_histograms(trainer, {key: values}, step=step, bins=bins)


def log_histograms(
    trainer: Any, values: Mapping[str, torch.Tensor], *, step: int | None = None, bins: int = 64
) -> bool:
    """Log a histogram per key of ``values`` over the global batch (gathered from every data-parallel rank; non-finite
    values left out) to the media loggers, in one logger call; ``True`` when one took any.

    Call it on every rank, at a step that is the same on all of them (a media cadence): the values are gathered (two
    collectives a key) only when the Trainer has a media logger, a decision every rank takes alike. The bins are
    counted on the device (:func:`histogram`) and handed to ``wandb.Histogram(np_histogram=...)``. On the Trainer's
    logging steps of a training batch (``step=None``), with W&B loggers only, they go into the Trainer's own row of
    the step (:func:`~lightning_losses._log_rows.keep_media`).
    """
    loggers = media_loggers(trainer)
    if not loggers:
        return False
    counted = {key: histogram(all_gather_values(v), bins) for key, v in values.items()}
    counted = {key: c for key, c in counted.items() if c is not None}
    if not counted:
        return False
    import wandb

    _send(trainer, loggers, {key: wandb.Histogram(np_histogram=c) for key, c in counted.items()}, step)
    return True


def _send(trainer: Any, loggers: list[Any], row: dict[str, Any], step: int | None) -> None:
    """``row`` (``wandb`` objects) to the media ``loggers``: into the Trainer's row of a logging step (``step=None``)
    when every logger of the Trainer takes media (:func:`~lightning_losses._log_rows.keep_media`: no W&B log call of
    their own), else in a row of their own now."""
    if step is None and len(loggers) == len(trainer.loggers) and keep_media(trainer, row):
        return
    for logger in loggers:
        logger.log_metrics(row, step=_step(trainer, step))


def log_table(
    trainer: Any, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, step: int | None = None
) -> bool:
    """Log a table (``columns``, one list per row) to the media loggers; ``True`` when one took it."""
    loggers = media_loggers(trainer)
    if loggers:
        import wandb

        _send(trainer, loggers, {key: wandb.Table(columns=list(columns), data=[list(r) for r in rows])}, step)
    return bool(loggers)


def log_image(trainer: Any, key: str, image: Any, *, step: int | None = None, caption: str | None = None) -> bool:
    """Log one image (``[H, W, 3]`` uint8 array, or a zero-argument callable returning one, called only when a
    media logger is there) to the media loggers; ``True`` when one took it."""
    loggers = media_loggers(trainer)
    if not loggers:
        return False
    if callable(image) and not getattr(trainer, "is_global_zero", True):
        return True  # W&B logs from rank 0 only: the picture is not drawn on the other ranks
    picture = image() if callable(image) else image
    import wandb

    _send(trainer, loggers, {key: [wandb.Image(picture, **({} if caption is None else {"caption": caption}))]}, step)
    return True


#: with the default cadence, media are at least this many optimizer steps apart (as Lightning's
#: ``WandbLogger.watch``, whose histograms default to every 100 steps)
MEDIA_MIN_STEPS = 100


class MediaCadence:
    """When to log media, in optimizer steps.

    Args:
        every: ``None`` (default): about once per epoch: at the first call of each epoch, and no sooner than
            :data:`MEDIA_MIN_STEPS` optimizer steps after the previous media (with epochs shorter than that, at the
            first call at least that many steps later, wherever it falls in its epoch); ``0``: never; ``N``: at the
            first call at or after each multiple of ``N`` optimizer steps (exactly every ``N`` steps for a caller that
            asks after every step; at its next logging step for one that asks only then).
        name: the argument's name, for the error message.

    A media step costs milliseconds (a W&B histogram or table is serialised and sent; a matplotlib picture is drawn):
    once per epoch is nothing on epochs of thousands of steps, but several percent of the training time on epochs
    of twenty; the spacing bounds it.

    Example:
        >>> c = MediaCadence(2)
        >>> [c.due(step, epoch=0) for step in (1, 2, 3, 4, 7, 8)]
        [False, True, False, True, True, True]
        >>> c = MediaCadence(None)
        >>> [c.due(step, epoch) for step, epoch in ((1, 0), (2, 0), (300, 1), (350, 2), (400, 2), (401, 3))]
        [True, False, True, False, True, False]
    """

    def __init__(self, every: int | None, name: str = "media_every_n_steps") -> None:
        self.every = None if every is None else check_int(name, every, low=0)
        self._epoch = -1
        self._last: int | None = None  # the step of the last media (default cadence)
        self._next = self.every or 0  # the next multiple of `every` not yet served

    def due(self, step: int, epoch: int) -> bool:
        """Whether media are due at optimizer step ``step`` (``global_step`` after the step) of epoch ``epoch``."""
        if self.every is None:
            if epoch == self._epoch or (self._last is not None and step - self._last < MEDIA_MIN_STEPS):
                return False
            self._epoch, self._last = epoch, step
            return True
        if self.every == 0 or step < self._next:
            return False
        self._next = (step // self.every + 1) * self.every
        return True


def calibration_bins(
    confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per equal-width confidence bin: sample count, sum of confidences, sum of correct (float64, ``[n_bins]``).

    Example:
        >>> counts, conf, acc = calibration_bins(torch.tensor([0.45, 0.95, 0.97]), torch.tensor([0, 1, 1]), 2)
        >>> counts.tolist(), acc.tolist()
        ([1.0, 2.0], [0.0, 2.0])
    """
    conf = confidence.detach().double().flatten()
    idx = (conf * n_bins).long().clamp_(0, n_bins - 1)
    zeros = torch.zeros(n_bins, dtype=torch.float64, device=conf.device)
    counts = zeros.index_add(0, idx, torch.ones_like(conf))
    return counts, zeros.index_add(0, idx, conf), zeros.index_add(0, idx, correct.detach().double().flatten())


def reliability_diagram(
    counts: torch.Tensor, confidence_sums: torch.Tensor, correct_sums: torch.Tensor, title: str = ""
) -> Any:
    """Render a reliability diagram (accuracy per confidence bin against the diagonal) as a ``[H, W, 3]`` uint8 array.

    Uses matplotlib's Agg canvas directly (no ``pyplot`` state, no backend switch).
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n = counts.double().cpu()
    n_bins = n.numel()
    acc = (correct_sums.double().cpu() / n.clamp_min(1.0)).numpy()
    conf = (confidence_sums.double().cpu() / n.clamp_min(1.0)).numpy()
    present = (n > 0).numpy()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    fig = Figure(figsize=(4, 4), dpi=80)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.bar(edges[:-1][present], acc[present], width=1.0 / n_bins, align="edge", edgecolor="k", label="accuracy")
    ax.bar(
        edges[:-1][present], (conf - acc)[present], bottom=acc[present], width=1.0 / n_bins, align="edge",
        color="tab:red", alpha=0.3, label="gap",
    )  # fmt: skip
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy", title=title)
    ax.legend(loc="upper left")
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def reliability_bins(trainer: Any, confidence: torch.Tensor, correct: torch.Tensor, n_bins: int) -> torch.Tensor | None:
    """The ``[3, n_bins]`` bins of a reliability diagram (counts, confidence sums, correct sums) of this rank's
    ``confidence`` / ``correct`` (``[N]``), summed over ranks (one collective), when the Trainer has a media logger;
    ``None`` otherwise. Call it on every rank: the decision is the same on all of them."""
    if not media_loggers(trainer):
        return None
    return global_sum(torch.stack(calibration_bins(confidence, correct, n_bins)))


def log_reliability_bins(
    trainer: Any, key: str, bins: torch.Tensor, title: str = "", *, step: int | None = None
) -> bool:
    """Log the reliability diagram of :func:`reliability_bins`' ``bins`` to the media loggers (drawn on rank 0 only);
    ``True`` when a logger took it."""
    counts, conf, acc = bins.unbind(0)
    return log_image(
        trainer, key, lambda: reliability_diagram(counts, conf, acc, title), step=step, caption=title or None
    )


def log_reliability(
    trainer: Any, key: str, confidence: torch.Tensor, correct: torch.Tensor, n_bins: int, title: str = ""
) -> bool:
    """Log the reliability diagram of this rank's ``confidence`` / ``correct`` (``[N]``), binned and summed over
    ranks (one collective), to the media loggers. Call it on every rank: the decision (whether the Trainer has a
    media logger) is the same on all of them. ``True`` when a logger took it."""
    bins = reliability_bins(trainer, confidence, correct, n_bins)
    return bins is not None and log_reliability_bins(trainer, key, bins, title)
