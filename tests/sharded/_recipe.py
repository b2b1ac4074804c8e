"""Runs inside the 2-process gloo pool: ``configs/sharded/fsdp2.yaml`` built by the CLI's recipe path and fitted."""

from __future__ import annotations

from pathlib import Path

import lightning_losses as ll
from lightning_losses._recipe_build import build_run

from . import _fsdp2

RECIPE = Path(__file__).resolve().parents[2] / "configs" / "sharded" / "fsdp2.yaml"


def fit_recipe(tmp: str, strategy: str | None = None, overrides: tuple[str, ...] = ()) -> tuple[str, dict]:
    """Fit the FSDP2 recipe (or the same with ``trainer.strategy`` replaced by ``strategy``, e.g. ``"ddp"``); returns
    the strategy's class name and the full weights."""
    cfg = ll.load_recipe(
        RECIPE,
        [
            f"trainer.default_root_dir={tmp}",
            "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false",
            "trainer.enable_model_summary=false",
            "trainer.enable_checkpointing=false",
            "logger=none",
            *overrides,
        ],
    )
    if strategy is not None:
        cfg.trainer.strategy = strategy
    with _fsdp2._lightning_env():
        run = build_run(cfg)
        run.trainer.fit(run.model, datamodule=run.datamodule)
        return type(run.trainer.strategy).__name__, _fsdp2.full_weights(run.model)
