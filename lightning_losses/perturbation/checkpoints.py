"""Checkpoints written in the middle of a perturbed step (from a hook) hold the unperturbed state."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from lightning_losses.perturbation.sharding import is_sharded

if TYPE_CHECKING:
    from lightning_losses.perturbation.engine import Perturbation

__all__ = ["guarded_checkpoints", "unperturbed_checkpoint"]


def unperturbed_checkpoint(checkpoint: dict[str, Any], module: Any, engine: Perturbation) -> None:
    """Replace, in ``checkpoint["state_dict"]``, every entry the engine holds an original of (mid-step): each
    perturbed parameter under **every** key that aliases it (tied weights) and the BatchNorm buffers a perturbed pass
    is changing. Matched by tensor identity over every name of every parameter and buffer (``remove_duplicate=False``:
    the de-duplicated ``named_parameters()`` lists a tied weight under its first name only). Sharded parameters
    (FSDP2) get their original shards as DTensors in a distributed checkpoint, the gathered full tensors otherwise."""
    originals = engine.original_weights()
    state = checkpoint.get("state_dict")
    if not originals or state is None:
        return
    # a sharded parameter (FSDP2) is written as a DTensor in a distributed checkpoint and as a full tensor (on rank
    # 0 only) otherwise: the full original is then gathered, on every rank (same decision everywhere: no DTensor in
    # this rank's state dict means a full one, possibly empty here)
    distributed_checkpoint = any(is_sharded(v) for v in state.values())
    named = (*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False))
    for key, tensor in named:
        saved = originals.get(id(tensor))
        if saved is None:
            continue
        if is_sharded(saved) and not distributed_checkpoint:
            saved = saved.full_tensor()  # a collective: every rank gets here for every sharded original
        if key in state:
            saved = saved.detach().clone()
            state[key] = saved if is_sharded(saved) else saved.to(state[key].device)


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
