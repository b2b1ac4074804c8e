"""The run's full resolved recipe: ``config.yaml`` in its log folder and the hyperparameters of every logger."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf

__all__ = ["SaveRecipe", "package_versions", "recipe_record"]


def package_versions() -> dict[str, str]:
    """Versions of the packages a run depends on (and of Python)."""
    import lightning
    import torch

    import lightning_losses

    return {
        "lightning_losses": lightning_losses.__version__,
        "lightning": lightning.__version__,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }


def recipe_record(cfg: DictConfig, **extra: Any) -> dict[str, Any]:
    """The resolved recipe as a plain mapping, plus ``extra`` entries and ``versions``."""
    record = OmegaConf.to_container(cfg, resolve=True)
    record.update({k: v for k, v in extra.items() if v is not None})
    record["versions"] = package_versions()
    return record


class SaveRecipe(L.Callback):
    """Write the resolved recipe to ``<log_dir>/config.yaml`` and log it to every logger, once, on rank 0.

    Like LightningCLI's ``SaveConfigCallback`` (which writes the parser's config): the recipe here is the one the run
    was built from, after the default, the files, the overrides and the interpolations.

    Args:
        cfg: the resolved recipe (:func:`~lightning_losses.config.load_recipe`).
        subcommand: recorded as ``subcommand``.
        ckpt_path: recorded as ``ckpt_path`` when given.
    """

    def __init__(self, cfg: DictConfig, *, subcommand: str = "fit", ckpt_path: str | None = None) -> None:
        self.record = recipe_record(cfg, subcommand=subcommand, ckpt_path=ckpt_path)
        self.saved = False

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        log_dir = trainer.log_dir  # broadcast from rank 0: a collective, so every rank calls it
        if self.saved or not trainer.is_global_zero:
            self.saved = True
            return
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(self.record)))
        for logger in trainer.loggers:
            logger.log_hyperparams(self.record)
        self.saved = True
