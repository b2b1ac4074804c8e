r"""The engine's pass for ``bsam`` (Möllenhoff & Khan, ICLR 2023): the noisy point and the precision-scaled ascent.

bSAM's ascent divides by the precision :math:`s` of its optimizer (:class:`~lightning_losses.perturbation.bsam.BSAM`),
so the ``bsam`` preset (``rule="bayes"``) runs its step with that optimizer:

1. ``"first"`` pass at the noisy point :math:`\tilde w = w + \xi/\sqrt{N s}` (per-replica under DDP unless
   ``sync_ascent``), giving :math:`\tilde g`; its loss is the step's reported loss (with gradient accumulation the
   callback clears the gradient accumulated at :math:`w` and re-evaluates the step's earlier micro-batches at the
   noisy point too, BatchNorm statistics frozen for them: they updated them at :math:`w`; so k micro-batches give the
   update of one batch of k times their size);
2. the weights go to :math:`w + \rho\,\tilde g/s` (the preset's ``rho``, a number or a schedule; the optimizer's own
   ``rho`` is used by its closure step only); :math:`\sqrt{s}|\tilde g|` is averaged over ranks (the authors'
   m-sharpness with m = the per-device batch: each replica draws its own noise and perturbation) and handed to the
   optimizer, outside its ``state``;
3. ``"descent"`` pass there (synchronised, BatchNorm statistics frozen), then :math:`w` is restored exactly and
   :math:`g_p` is left in ``.grad``; ``optimizer.step()`` applies the update.

What differs from the other presets: the ascent *reads* the optimizer's precision (the optimizer's ``state`` is still
changed by ``optimizer.step()`` only), the first pass is not at :math:`w` (so ``loss`` and BatchNorm statistics of
that pass are those at :math:`\tilde w`), and every optimizer parameter is perturbed (``params`` / ``exclude`` do not
apply). A non-finite :math:`\tilde g` on a rank skips that rank's perturbation and contributes zeros to the averaged
precision term.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import functional as F
from lightning_losses.perturbation import looksam
from lightning_losses.perturbation.bsam import BSAM
from lightning_losses.perturbation.passes import frozen_batchnorm, frozen_metrics, replay, suppressed_logging

__all__ = ["BAYES", "accumulated_noisy_pass", "attach", "bayes_step", "check_bayes"]

#: the engine's ``rule`` of bSAM
BAYES = "bayes"

_UNSUPPORTED = {
    "radius_mode": "global",
    "scaling": None,
    "direction": "gradient",
    "descent": "perturbed",
    "inner_steps": 1,
    "every_n_steps": 1,
    "probability": 1.0,
    "reuse_alpha": None,
    "warmup_epochs": 0,
    "select_fraction": 1.0,
    "params": None,
    "exclude": None,
    "min_ndim": 0,
    "ascent_terms": None,
}


def check_bayes(engine: Any) -> None:
    """Refuse the engine options ``bsam`` cannot honour (every step is a bSAM step over all optimizer parameters)."""
    if engine.rule != BAYES:
        return
    for key, default in _UNSUPPORTED.items():
        if getattr(engine, key) != default:
            raise ConfigurationError(
                f"perturbation `bsam` does not support `{key}` (every step is a bSAM step over all the BSAM "
                f"optimizer's parameters), got {key}={getattr(engine, key)!r}"
            )


def attach(optimizer: Any) -> BSAM:
    """Check that ``optimizer`` is a :class:`BSAM` and make its closure step run the closure once (the engine's
    passes) before its update."""
    torch_opt = getattr(optimizer, "optimizer", optimizer)
    if not isinstance(torch_opt, BSAM):
        raise ConfigurationError(
            "perturbation `bsam` needs the `BSAM` optimizer (lightning_losses.perturbation.BSAM: its ascent divides "
            f"by the optimizer's precision), got {type(torch_opt).__name__}"
        )
    torch_opt.driven = True
    return torch_opt


def _grads(params: list[Tensor]) -> list[Tensor]:
    return [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]


def bayes_step(
    engine: Any,
    forward_backward: Callable[[str], Tensor | None],
    optimizer: Any,
    *,
    step: int,
    zero_grad: Callable[[], None] | None,
    ascent_ctx: Callable[[], Any],
    grad_scale: Tensor | float | None,
    bn_modules: Sequence[nn.Module],
    skip_on_none: bool,
) -> Tensor | None:
    """One ``bsam`` step (see the module docstring); returns the loss of the first pass (at the noisy point)."""
    opt = attach(optimizer)
    params = [p for group in opt.param_groups for p in group["params"] if p.requires_grad]
    if zero_grad is None:

        def zero_grad() -> None:
            for p in params:
                p.grad = None

    stats: dict[str, Tensor] = {}
    radius = float(engine.radius(step))
    opt.to_noisy_point()
    engine._active_params, engine._saved = [p for p, _, _ in opt._saved], [w for _, w, _ in opt._saved]
    try:
        with ascent_ctx():
            loss0 = forward_backward("first")
        if skip_on_none and loss0 is None:  # the caller will not step: nothing to perturb
            engine.last_stats = {}
            return loss0
        grads = [p.grad for p in params if p.grad is not None]
        if grad_scale is not None and grads:
            torch._foreach_div_(grads, torch.as_tensor(grad_scale, dtype=grads[0].dtype, device=grads[0].device))
        gnorm = F.global_norm(grads) if grads else torch.zeros(())
        stats["grad_norm"] = gnorm
        finite = bool(torch.isfinite(gnorm))  # the one host sync of a step
        if not finite:
            engine.skipped += 1
            zero_grad()
        opt.to_perturbed_point(rho=radius)
        terms = [opt._noisy_terms.get(p, torch.zeros_like(p)) for p in params]
        if not engine.sync_ascent:  # per-replica terms: one average, the same s on every rank
            terms = looksam.mean_over_ranks(terms)
        opt._noisy_terms = dict(zip(params, terms))
        if engine.collect_stats:
            stats["norm"] = F.global_norm([p.detach() - w for p, w in zip(engine._active_params, engine._saved)])
        zero_grad()
        with engine._frozen_bn(bn_modules if engine.freeze_bn else ()):
            forward_backward("descent")
    finally:
        opt.restore()
        engine._saved, engine._active_params = None, []
    engine.perturbed_steps += finite
    if engine.collect_stats:
        g1 = F.global_norm(_grads(params))
        stats["grad_norm_perturbed"] = g1 if grad_scale is None else g1 / torch.as_tensor(grad_scale).to(g1.device)
        stats["radius"] = torch.tensor(radius)
        stats["skipped"] = torch.tensor(float(engine.skipped))
    engine.last_stats = stats
    return loss0


def accumulated_noisy_pass(
    trainer: Any,
    module: Any,
    optimizer: Any,
    closure: Callable[[], Any],
    earlier: Sequence[tuple[Any, int]],
    bn_modules: Sequence[nn.Module],
    metrics: Sequence[Any] | None,
    engine: Any,
) -> Tensor | None:
    """The callback's ``"first"`` pass of a ``bsam`` step under gradient accumulation (the gradient accumulated at
    :math:`w` already cleared): every micro-batch at the noisy point. The last one runs through Lightning's closure
    (logged), the ``earlier`` ones (``(batch, batch_idx)``) are replayed (logging suppressed, metrics and BatchNorm
    statistics put back: those micro-batches updated them at :math:`w`), all without DDP's gradient sync; with
    ``sync_ascent`` the sum is then averaged over the ranks here, as DDP's sync would have. Returns the closure's loss.
    """
    block = getattr(trainer.strategy, "block_backward_sync", None)
    with block() if block is not None else contextlib.nullcontext():
        loss = closure()
    with suppressed_logging(module), frozen_metrics(module, metrics), frozen_batchnorm(bn_modules):
        replay(trainer, module, optimizer, earlier, "WeightPerturbation")
    if engine.sync_ascent:
        torch_opt = getattr(optimizer, "optimizer", optimizer)
        grads = [p.grad for group in torch_opt.param_groups for p in group["params"] if p.grad is not None]
        if grads:
            torch._foreach_copy_(grads, looksam.mean_over_ranks(grads))
    return loss
