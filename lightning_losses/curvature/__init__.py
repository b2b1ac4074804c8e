"""Curvature and training-health diagnostics: :class:`CurvatureMonitor` (registered as ``curvature_monitor``)."""

from lightning_losses.curvature.monitor import CurvatureMonitor

__all__ = ["CurvatureMonitor"]
