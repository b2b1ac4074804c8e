"""How evaluation callbacks (Tent, calibration) get logits and labels out of a batch (shared, one place)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

__all__ = ["batch_logits", "batch_target", "check_forward_args", "check_target_key"]

ForwardFn = Callable[[Any, Any], torch.Tensor]


def check_forward_args(input_key: Any, forward_fn: Any) -> None:
    """Validate the ``input_key`` / ``forward_fn`` pair shared by the evaluation callbacks."""
    from lightning_losses.errors import ConfigurationError

    if not isinstance(input_key, str) or not input_key:
        raise ConfigurationError(f"`input_key` must be the batch key of the model input, got {input_key!r}")
    if forward_fn is not None and not callable(forward_fn):
        raise ConfigurationError(f"`forward_fn` must be callable as forward_fn(pl_module, batch), got {forward_fn!r}")


def check_target_key(target_key: Any) -> str:
    """Validate the batch key of the labels (calibration callbacks)."""
    from lightning_losses.errors import ConfigurationError

    if not isinstance(target_key, str) or not target_key:
        raise ConfigurationError(f"`target_key` must be the batch key of the labels, got {target_key!r}")
    return target_key


def batch_logits(pl_module: Any, batch: Any, input_key: str = "x", forward_fn: ForwardFn | None = None) -> torch.Tensor:
    """Logits of ``batch``: ``forward_fn(pl_module, batch)`` if given, else ``pl_module(batch[input_key])`` for a
    mapping, ``pl_module(batch[0])`` for a tuple / list, ``pl_module(batch)`` for a tensor."""
    if forward_fn is not None:
        return forward_fn(pl_module, batch)
    if isinstance(batch, Mapping):
        if input_key not in batch:
            raise KeyError(f"batch has no `{input_key}` (keys: {sorted(batch)}); set `input_key` or `forward_fn`")
        return pl_module(batch[input_key])
    if isinstance(batch, Sequence) and not isinstance(batch, (str, bytes)):
        return pl_module(batch[0])
    return pl_module(batch)


def batch_target(batch: Any, target_key: str = "target") -> torch.Tensor:
    """Integer labels of ``batch``: ``batch[target_key]`` for a mapping, ``batch[1]`` for a tuple / list."""
    if isinstance(batch, Mapping):
        if target_key not in batch:
            raise KeyError(f"batch has no `{target_key}` (keys: {sorted(batch)}); set `target_key`")
        return batch[target_key]
    if isinstance(batch, Sequence) and len(batch) > 1:
        return batch[1]
    raise TypeError(f"cannot find labels in a batch of type {type(batch).__name__}; use a dict with `{target_key}`")
