"""One quiet CPU ``Trainer`` for tests: no logger, checkpoints, progress bar or model summary."""

from __future__ import annotations

from typing import Any

import lightning as L

QUIET: dict[str, Any] = dict(
    accelerator="cpu",
    devices=1,
    logger=False,
    enable_checkpointing=False,
    enable_progress_bar=False,
    enable_model_summary=False,
)


def quiet_trainer(callbacks: list[Any] | None = None, **kwargs: Any) -> L.Trainer:
    """``L.Trainer`` with :data:`QUIET` defaults, overridden by ``kwargs``."""
    return L.Trainer(callbacks=callbacks or [], **{**QUIET, **kwargs})


class LoggedMetrics(L.Callback):
    """``trainer.callback_metrics`` as floats right after every optimizer step that ``every`` divides (the batch that
    took it; not the accumulating micro-batches after it), by step (``rows``); ``prefixes``: keep only these keys,
    ``exclude``: drop the keys ending so (wall-clock times)."""

    def __init__(self, every: int = 1, prefixes: tuple[str, ...] = ("",), exclude: tuple[str, ...] = ()) -> None:
        self.every, self.prefixes, self.exclude = every, prefixes, exclude
        self.rows: dict[int, dict[str, float]] = {}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step
        if step and step % self.every == 0 and step not in self.rows:
            metrics = trainer.callback_metrics.items()
            kept = {k: float(v) for k, v in metrics if k.startswith(self.prefixes) and not k.endswith(self.exclude)}
            self.rows[step] = kept
