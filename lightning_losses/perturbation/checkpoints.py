"""Checkpoints written in the middle of a perturbed step (from a hook) hold the unperturbed state."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lightning_losses.perturbation.engine import Perturbation

__all__ = ["guarded_checkpoints", "unperturbed_checkpoint"]


def unperturbed_checkpoint(checkpoint: dict[str, Any], module: Any, engine: Perturbation) -> None:
    """Replace, in ``checkpoint["state_dict"]``, every entry the engine holds an original of (mid-step): each
    perturbed parameter under **every** key that aliases it (tied weights) and the BatchNorm buffers a perturbed pass
    is changing. Matched by tensor identity over every name of every parameter and buffer (``remove_duplicate=False``:
    the de-duplicated ``named_parameters()`` lists a tied weight under its first name only)."""
    originals = engine.original_weights()
    state = checkpoint.get("state_dict")
    if not originals or state is None:
        return
    named = (*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False))
    for key, tensor in named:
        saved = originals.get(id(tensor))
        if saved is not None and key in state:
            state[key] = saved.detach().clone()


@contextlib.contextmanager
def guarded_checkpoints(module: Any, engine: Perturbation):
    """Inside: a checkpoint the module's ``on_save_checkpoint`` hook sees gets the unperturbed weights (the manual
    path's equivalent of :meth:`WeightPerturbation.on_save_checkpoint`)."""
    original = getattr(module, "on_save_checkpoint", None)
    if original is None:
        yield
        return
    shadowed = module.__dict__.get("on_save_checkpoint")

    def hook(checkpoint: dict[str, Any]) -> Any:
        out = original(checkpoint)
        unperturbed_checkpoint(checkpoint, module, engine)
        return out

    module.__dict__["on_save_checkpoint"] = hook
    try:
        yield
    finally:
        if shadowed is not None:
            module.__dict__["on_save_checkpoint"] = shadowed
        else:
            module.__dict__.pop("on_save_checkpoint", None)
