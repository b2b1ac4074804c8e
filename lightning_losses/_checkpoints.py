"""``--ckpt_path``: a checkpoint file, ``last`` or ``best``, resolved from the run's folder before anything runs.

Lightning resolves ``last`` / ``best`` against the current trainer's own checkpoint callback, which a new process
has not filled; here they are found on disk under ``trainer.default_root_dir`` (every run of a recipe writes its
checkpoints to ``<default_root_dir>/<logger name>/version_<n>/checkpoints/`` or ``<default_root_dir>/checkpoints/``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning_losses.errors import ConfigurationError

__all__ = ["find_checkpoints", "resolve_ckpt_path"]


def find_checkpoints(root: str | os.PathLike) -> list[Path]:
    """Every ``*.ckpt`` under ``root``, oldest first (by modification time, then name)."""
    found = [p for p in Path(root).rglob("*.ckpt") if p.is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns, str(p)))


def _best_recorded(path: Path) -> Path | None:
    """The ``best_model_path`` the newest checkpoint's ``ModelCheckpoint`` state records (if it still exists)."""
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False)
    for key, value in state.get("callbacks", {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(value, dict) and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            if best.is_file():
                return best
    return None


def resolve_ckpt_path(spec: Any, root: str | os.PathLike) -> str | None:
    """``None``, a checkpoint file, ``"last"`` (the newest under ``root``) or ``"best"`` -> a file path (or ``None``).

    Raises:
        ConfigurationError: the file does not exist, or ``root`` holds no checkpoint.
    """
    if spec is None or spec == "":
        return None
    if not isinstance(spec, (str, os.PathLike)):
        raise ConfigurationError(f"`ckpt_path` must be a checkpoint file, `last` or `best`, got {spec!r}")
    if str(spec) in ("last", "best"):
        found = find_checkpoints(root)
        if not found:
            raise ConfigurationError(
                f"`ckpt_path` {str(spec)!r}: no checkpoint (*.ckpt) under `{root}` (`trainer.default_root_dir`); "
                "train first, or give a checkpoint file"
            )
        newest = found[-1]
        return str((_best_recorded(newest) or newest) if spec == "best" else newest)
    if not Path(spec).is_file():
        raise ConfigurationError(
            f"`ckpt_path` must be a checkpoint file, `last` or `best`, got {str(spec)!r} (no such file)"
        )
    return str(spec)
