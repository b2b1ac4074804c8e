"""What keeps a perturbed pass invisible: logging suppressed, metric states put back, objective terms detached from
the ascent, BatchNorm running statistics frozen, and checkpoints written mid-step holding the unperturbed state.

Shared by the Lightning callback (:mod:`lightning_losses.perturbation.callback`) and the manual helper
(:mod:`lightning_losses.perturbation.manual`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from lightning_losses.perturbation.engine import Perturbation

__all__ = [
    "ascent_terms_only",
    "batchnorm_modules",
    "frozen_batchnorm",
    "frozen_metrics",
    "guarded_checkpoints",
    "metric_modules",
    "suppressed_logging",
    "unperturbed_checkpoint",
]


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


@contextlib.contextmanager
def suppressed_logging(module: Any):
    """Inside: ``module.objective_logging_suppressed = True`` and ``module.log`` / ``module.log_dict`` are no-ops.

    Each entry is one perturbed pass: it increments ``module.objective_suppressed_passes``, which tells a plug-in that
    replays per-call state of the step (the reweighter's weights at :math:`w`) where a new pass begins."""
    attrs = module.__dict__  # plain instance attributes: no `nn.Module.__setattr__` round trip
    keys = ("objective_logging_suppressed", "log", "log_dict")
    shadowed = {k: attrs[k] for k in keys if k in attrs}
    attrs["objective_suppressed_passes"] = getattr(module, "objective_suppressed_passes", 0) + 1
    attrs.update(objective_logging_suppressed=True, log=_noop, log_dict=_noop)
    try:
        yield
    finally:
        for key in keys:
            if key in shadowed:
                attrs[key] = shadowed[key]
            else:
                attrs.pop(key, None)


def frozen_batchnorm(modules: Sequence[nn.Module]) -> contextlib.AbstractContextManager:
    """Run the body in train mode but leave BatchNorm running statistics (and ``num_batches_tracked``) exactly as
    they were: the buffers are snapshotted and copied back (works for ``momentum=None`` too). No modules: a no-op
    context."""
    return _restored_buffers(modules) if modules else contextlib.nullcontext()


@contextlib.contextmanager
def _restored_buffers(modules: Sequence[nn.Module], originals: dict[int, Tensor] | None = None):
    """``originals`` (optional) holds ``id(buffer) -> snapshot`` while inside (for checkpoints written meanwhile)."""
    buffers = [b for m in modules for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    saved = [b.clone() for b in buffers]
    if originals is not None:
        originals.update((id(b), s) for b, s in zip(buffers, saved))
    try:
        yield
    finally:
        with torch.no_grad():
            for b, s in zip(buffers, saved):
                b.copy_(s)
        if originals is not None:
            originals.clear()


def batchnorm_modules(module: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``module`` that track running statistics."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats]


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


def metric_modules(module: Any) -> list[Any]:
    """The ``torchmetrics`` metrics among the submodules of ``module``."""
    try:
        from torchmetrics import Metric
    except ImportError:  # pragma: no cover - torchmetrics is a dependency of Lightning
        return []
    return [m for m in module.modules() if isinstance(m, Metric)]


def frozen_metrics(module: Any, metrics: Sequence[Any] | None = None) -> contextlib.AbstractContextManager:
    """Inside: ``torchmetrics`` metrics of ``module`` may be updated (``metric(preds, target)`` still returns the
    batch value), but their accumulated state is put back afterwards, so a perturbed pass never counts twice.

    ``metrics`` is the list to guard when the caller has it already (default: found in ``module``); with no metric
    this is a no-op context."""
    metrics = metric_modules(module) if metrics is None else metrics
    return _restored_metrics(metrics) if metrics else contextlib.nullcontext()


@contextlib.contextmanager
def _restored_metrics(metrics: Sequence[Any]):
    saved = []
    for m in metrics:
        state = {}
        for name in m._defaults:
            value = getattr(m, name)
            state[name] = value.clone() if isinstance(value, torch.Tensor) else list(value)
        extra = {k: getattr(m, k) for k in ("_update_count", "_computed", "_forward_cache") if hasattr(m, k)}
        saved.append((m, state, extra))
    try:
        yield
    finally:
        for m, state, extra in saved:
            for name, value in {**state, **extra}.items():
                setattr(m, name, value)


def ascent_terms_only(module: Any, names: tuple[str, ...] | None) -> contextlib.AbstractContextManager:
    """Detach the objective terms not in ``names`` (their value still counts; their gradient does not).

    ``names=None`` keeps every term (a no-op context)."""
    return contextlib.nullcontext() if names is None else _detached_terms(module, names)


@contextlib.contextmanager
def _detached_terms(module: Any, names: tuple[str, ...]):
    handles = [
        term.loss.register_forward_hook(lambda _m, _i, out: out.detach())
        for term in module.objective.terms
        if term.name not in names
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()
