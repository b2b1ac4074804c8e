r"""WSAM's decoupled form (Yue et al., KDD 2023; the reference's default): the base optimizer steps on the gradient
:math:`g` at :math:`w`, then the sharpness term is applied as a plain SGD step with each parameter group's current
learning rate, :math:`w \leftarrow w - \eta\,\frac{\gamma}{1-\gamma}(g_p - g)` (no momentum, no Adam scaling: like
decoupled weight decay).

The engine leaves :math:`g` in ``.grad`` and keeps the pending term (:attr:`Perturbation.pending`); a step post-hook
on the optimizer (:func:`attach`: the callback does it, :func:`~lightning_losses.perturbation.perturbed_backward`
with ``optimizer=``) applies it right after ``optimizer.step()``. A step the optimizer skips (a GradScaler's
non-finite step) applies nothing; the next perturbed step drops a term left pending.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_losses.perturbation.sharding import local

__all__ = ["apply_pending", "attach"]


def apply_pending(engine: Any, optimizer: Any) -> None:
    """Apply ``engine.pending`` (``(params, terms)``) with the learning rate of each parameter's group."""
    pending, engine.pending = engine.pending, None
    if pending is None:
        return
    params, terms = pending
    lrs = {id(p): float(group["lr"]) for group in optimizer.param_groups for p in group["params"]}
    with torch.no_grad():
        for p, term in zip(params, terms):
            lr = lrs.get(id(p))
            if lr is not None:
                local(p.detach()).add_(term.to(p.dtype), alpha=-lr)


def attach(engine: Any, optimizer: Any) -> None:
    """Register (once per optimizer) the step post-hook that applies the engine's pending term."""
    if getattr(engine, "_decoupled_optimizer", None) is optimizer:
        return
    handle = getattr(engine, "_decoupled_handle", None)
    if handle is not None:
        handle.remove()
    engine._decoupled_handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: apply_pending(engine, opt))
    engine._decoupled_optimizer = optimizer
