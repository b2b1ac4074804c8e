"""What a perturbed pass runs under, and how it is run again.

A perturbed pass must stay invisible: logging suppressed (:func:`suppressed_logging`), metric states put back
(:func:`frozen_metrics`), objective terms detached from the ascent (:func:`ascent_terms_only`), BatchNorm running
statistics frozen (:func:`frozen_batchnorm`). :func:`rerun` and :func:`replay` run Lightning's ``training_step`` and
backward again at the perturbed weights (the callback's passes); the manual helper (plain PyTorch) uses the guards only.
Nothing here imports Lightning at import time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_losses._compat import closure_parts, metric_snapshot, norm_layer_types, restore_metric, takes_batch_idx

__all__ = [
    "ascent_terms_only",
    "batchnorm_modules",
    "frozen_batchnorm",
    "frozen_metrics",
    "metric_modules",
    "replay",
    "restored_buffers",
    "rerun",
    "suppressed_logging",
    "training_step_loss",
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
    return restored_buffers(modules) if modules else contextlib.nullcontext()


@contextlib.contextmanager
def restored_buffers(modules: Sequence[nn.Module], originals: dict[int, Tensor] | None = None):
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
    types = norm_layer_types()
    return [m for m in module.modules() if isinstance(m, types) and m.track_running_stats]


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
    saved = [(m, metric_snapshot(m)) for m in metrics]
    try:
        yield
    finally:
        for m, snapshot in saved:
            restore_metric(m, snapshot)


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


def rerun(closure: Any, transform: Any = None) -> torch.Tensor | None:
    """Run Lightning's closure again at the perturbed weights, without its ``zero_grad`` part (``transform``: maps
    the step's loss to the one to back-propagate, e.g. ESAM's data selection; it needs Lightning's closure).

    The engine has just cleared the gradients itself, so the ``optimizer_zero_grad`` / ``on_before_zero_grad`` hooks
    run once per optimizer step, as without perturbation; ``training_step`` and the backward (with the precision
    plugin's scaling and the backward hooks) run as in the first pass. A closure of another shape is simply called.
    """
    parts = closure_parts(closure)
    if parts is None:
        if transform is not None:
            raise RuntimeError("data selection needs Lightning's automatic-optimization closure")
        return closure()
    step_fn, backward_fn = parts
    with torch.enable_grad():
        result = step_fn()
        loss = getattr(result, "closure_loss", None)
        if loss is not None:
            backward_fn(loss if transform is None else transform(loss))
    return getattr(result, "loss", None)


def training_step_loss(output: Any) -> torch.Tensor | None:
    """The loss of a ``training_step`` output (a tensor, a mapping with ``"loss"``, or ``None``)."""
    if isinstance(output, Mapping):
        return output.get("loss")
    return output


def replay(trainer: Any, module: Any, optimizer: Any, batches: Sequence[tuple[Any, int]], who: str) -> None:
    """Forward-backward of the step's earlier micro-batches (``batches``: ``(batch, batch_idx)``) at the current
    weights, with no DDP sync. A micro-batch whose ``training_step`` returns ``None`` was skipped at :math:`w` too
    (Lightning) and adds no gradient; under DDP it raises, as Lightning's own closure does (``who`` names the
    callback in that message)."""
    with_idx = takes_batch_idx(module.training_step)
    block = getattr(trainer.strategy, "block_backward_sync", contextlib.nullcontext)
    for batch, batch_idx in batches:
        with block(), torch.enable_grad():
            out = trainer.strategy.training_step(*((batch, batch_idx) if with_idx else (batch,)))
            loss = training_step_loss(out)
            if loss is None:
                if trainer.world_size > 1:  # as Lightning's own closure: ranks would issue other collectives
                    raise RuntimeError(
                        "Skipping the `training_step` by returning None in distributed training is not supported "
                        f"(micro-batch {batch_idx} returned None in a perturbed pass of {who})"
                    )
                continue
            trainer.strategy.backward(loss / trainer.accumulate_grad_batches, optimizer)
