"""Moved to :mod:`lightning_losses._validation.tensors` (the one validation home); this path keeps working."""

from __future__ import annotations

from lightning_losses._validation.tensors import (
    as_index,
    check_binary,
    check_label_range,
    check_multiclass,
    check_per_class,
    check_regression,
    not_ignored,
    require_tensor,
    shape_str,
    upcast_half,
)

__all__ = [
    "as_index",
    "check_binary",
    "check_label_range",
    "check_multiclass",
    "check_per_class",
    "check_regression",
    "not_ignored",
    "require_tensor",
    "shape_str",
    "upcast_half",
]
