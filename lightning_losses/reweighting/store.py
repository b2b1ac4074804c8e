"""The per-sample store, re-exported from :mod:`lightning_losses.sample_store` (it moved to the foundation layer so
that losses, e.g. ``mat``, can keep per-sample state too)."""

from lightning_losses.sample_store import MAX_GROWTH, PerSampleStore, first_occurrence

__all__ = ["MAX_GROWTH", "PerSampleStore", "first_occurrence"]
