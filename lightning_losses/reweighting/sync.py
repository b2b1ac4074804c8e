"""Moved to :mod:`lightning_losses.sync` (shared by the reweighting and perturbation pillars); this path keeps
working."""

from __future__ import annotations

from lightning_losses.sync import REDUCTIONS, sync_statistics

__all__ = ["REDUCTIONS", "sync_statistics"]
