"""Accessors of Lightning's optimization closure, Trainer, callbacks, hook signatures and data fetcher."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from lightning_losses._compat._registry import reads

__all__ = [
    "attached_trainer",
    "epoch_to_run",
    "closure_parts",
    "closure_result",
    "restart_train_iterator",
    "set_closure_result",
    "state_key",
    "takes_batch_idx",
]


@reads("Closure._step_fn, Closure._backward_fn, Closure._zero_grad_fn (lightning.pytorch.loops.optimization)")
def closure_parts(closure: Any) -> tuple[Callable[[], Any], Callable[[Any], Any]] | None:
    """``(step_fn, backward_fn)`` of Lightning's automatic-optimization closure: ``step_fn()`` runs
    ``training_step`` and returns a ``ClosureResult`` (``.closure_loss``, ``.loss``), ``backward_fn(loss)`` the
    backward with the precision plugin's scaling. Fallback: ``None`` for a closure of another shape (or one without a
    backward), which the caller then simply calls."""
    step_fn, backward_fn = getattr(closure, "_step_fn", None), getattr(closure, "_backward_fn", None)
    if step_fn is None or backward_fn is None or not hasattr(closure, "_zero_grad_fn"):
        return None
    return step_fn, backward_fn


@reads("Closure._result (the ClosureResult of the closure's last call)")
def closure_result(closure: Any) -> Any:
    """The result of the closure's last call (what Lightning reports as the step's outputs). Fallback: ``None``."""
    return getattr(closure, "_result", None)


def set_closure_result(closure: Any, result: Any) -> None:
    """Make ``result`` the closure's last result (the outputs Lightning reports); a no-op for a closure without one.
    Part of :func:`closure_result`'s entry in :data:`ACCESSORS`."""
    if hasattr(closure, "_result"):
        closure._result = result


@reads("LightningModule._trainer")
def attached_trainer(module: Any) -> Any | None:
    """The Trainer ``module`` is attached to, or ``None`` (``module.trainer`` raises when there is none). Fallback
    without the attribute: ``module.trainer``, ``None`` when that raises."""
    if hasattr(module, "_trainer"):
        return module._trainer
    try:
        return module.trainer
    except (RuntimeError, AttributeError):  # no Trainer attached; a plain nn.Module has no `trainer` at all
        return None


@reads("Callback._generate_state_key")
def state_key(callback: Any, **key: Any) -> str:
    """The callback's checkpoint key from ``key`` (what Lightning's docs tell ``state_key`` to return). Fallback:
    Lightning's own format, ``f"{qualname}{key!r}"``, so checkpoints keep matching."""
    generate = getattr(callback, "_generate_state_key", None)
    if generate is not None:
        return generate(**key)
    return f"{type(callback).__qualname__}{key!r}"


@reads("lightning.pytorch.utilities.signature_utils.is_param_in_hook_signature")
def takes_batch_idx(training_step: Callable[..., Any]) -> bool:
    """Whether ``training_step`` takes ``batch_idx`` (Lightning then passes it). Fallback: the same rule from the
    signature (a ``batch_idx`` parameter, ``*args``, or at least two parameters)."""
    try:
        from lightning.pytorch.utilities.signature_utils import is_param_in_hook_signature
    except ImportError:
        params = inspect.signature(training_step).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_POSITIONAL or p.name == "batch_idx" for p in params):
            return True
        return len([p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]) >= 2
    return is_param_in_hook_signature(training_step, "batch_idx", min_args=2)


@reads("Trainer.fit_loop._data_fetcher")
def restart_train_iterator(trainer: Any) -> bool:
    """Create the training dataloader's iterator anew (a sampler changed after Lightning created it); ``True`` when
    done. Lightning creates the first iterator of a fit before ``on_train_epoch_start`` and, since 2.5.3, keeps it
    for the first epoch of a resumed fit (Lightning issue #21938): a loader with workers has then drawn its first
    indices from the sampler as it was before the hook. Call it from ``on_train_epoch_start`` only (the epoch loop
    creates the iterator of every later epoch after that hook). Fallback without the attribute: ``False`` (nothing
    restarted)."""
    fetcher = getattr(getattr(trainer, "fit_loop", None), "_data_fetcher", None)
    if fetcher is None:
        return False
    iter(fetcher)
    return True


@reads("Trainer.fit_loop.epoch_progress.current.processed")
def epoch_to_run(trainer: Any) -> int:
    """The training epoch the Trainer runs next, the one it hands the samplers' ``set_epoch``: on a fit resumed from a
    checkpoint written at an epoch's end, the epoch after the checkpoint's (whose ``current_epoch`` it still reads
    while the data are set up). Fallback: ``trainer.current_epoch`` (0 for an object without one)."""
    current = getattr(getattr(getattr(trainer, "fit_loop", None), "epoch_progress", None), "current", None)
    processed = getattr(current, "processed", None)
    return int(getattr(trainer, "current_epoch", 0) if processed is None else processed)
