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
