"""Accessors of torchmetrics' metric state and of torch's normalisation layers (no Lightning import)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lightning_losses._compat._registry import installed_version, reads

__all__ = ["metric_snapshot", "norm_layer_types", "restore_metric"]

_METRIC_BOOKKEEPING = ("_update_count", "_computed", "_forward_cache")


# ---------------------------------------------------------------------------------------------- torchmetrics
@reads("Metric._defaults (the state names), Metric._update_count, Metric._computed, Metric._forward_cache")
def metric_snapshot(metric: Any) -> dict[str, Any]:
    """A copy of a ``torchmetrics`` metric's accumulated state (tensors cloned, list states copied) and of its
    bookkeeping, for :func:`restore_metric`. Without ``_defaults``: the public ``metric_state`` names; with neither,
    a :class:`RuntimeError` naming the installed torchmetrics."""
    names = getattr(metric, "_defaults", None)
    if names is None:
        state = getattr(metric, "metric_state", None)
        if state is None:
            raise RuntimeError(
                f"cannot read the state of the metric {type(metric).__name__}: neither `Metric._defaults` nor "
                f"`Metric.metric_state` exists in torchmetrics {installed_version('torchmetrics')} (supported: >=1.3)"
            )
        names = state
    snapshot = {}
    for name in names:
        value = getattr(metric, name)
        snapshot[name] = value.clone() if isinstance(value, torch.Tensor) else list(value)
    snapshot.update({k: getattr(metric, k) for k in _METRIC_BOOKKEEPING if hasattr(metric, k)})
    return snapshot


def restore_metric(metric: Any, snapshot: dict[str, Any]) -> None:
    """Put back what :func:`metric_snapshot` copied (part of its entry in :data:`ACCESSORS`)."""
    for name, value in snapshot.items():
        setattr(metric, name, value)


# ---------------------------------------------------------------------------------------------- torch
@reads("torch.nn.modules.batchnorm._NormBase")
def norm_layer_types() -> tuple[type, ...]:
    """The classes of normalisation layers that may track running statistics (BatchNorm, SyncBatchNorm,
    InstanceNorm and their lazy forms). Fallback: those public classes listed one by one."""
    base = getattr(nn.modules.batchnorm, "_NormBase", None)
    if base is not None:
        return (base,)
    names = ("BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "InstanceNorm1d", "InstanceNorm2d")
    names += ("InstanceNorm3d", "LazyBatchNorm1d", "LazyBatchNorm2d", "LazyBatchNorm3d")
    return tuple(getattr(nn, n) for n in names if hasattr(nn, n))
