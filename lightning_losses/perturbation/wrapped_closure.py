r"""The ``"step"`` slot hook of :class:`~lightning_losses.perturbation.WeightPerturbation`: the wrapped closure that
runs the engine's passes (:meth:`~lightning_losses.perturbation.Perturbation.step`) through Lightning's closure (the
first pass), re-runs of ``training_step`` at :math:`w + \delta` (logging suppressed, metrics frozen, the step's
earlier micro-batches replayed) and ESAM's data selection. A mixin: the attributes below are the callback's.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_losses._compat import closure_result, set_closure_result
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import bayes_step, decoupled
from lightning_losses.perturbation.data_selection import check_selection, selected_loss
from lightning_losses.perturbation.engine import Perturbation, batchnorm_modules
from lightning_losses.perturbation.passes import (
    ascent_terms_only,
    frozen_metrics,
    replay,
    rerun,
    suppressed_logging,
)
from lightning_losses.perturbation.timing import StepTimer

__all__ = ["WrappedClosure"]


class WrappedClosure:
    """The step of :class:`~lightning_losses.perturbation.WeightPerturbation` (a mixin: the attributes below are the
    callback's, set in its constructor)."""

    engine: Perturbation
    _named: list[tuple[str, torch.Tensor]] | None
    _optimizer_id: int | None
    _batches: list[tuple[Any, int]]
    _bn: list[torch.nn.Module] | None
    _metrics: list[Any] | None
    _new_stats: bool
    _first_result: Any
    _hook_ran: bool
    _timer: StepTimer

    def _parameters(self, module: Any, optimizer: Any) -> list[tuple[str, torch.Tensor]]:
        if self._named is None or self._optimizer_id != id(optimizer):
            in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
            self._named = [(n, p) for n, p in self.engine.select(module.named_parameters()) if id(p) in in_optimizer]
            self._optimizer_id = id(optimizer)
        return self._named

    def _replay(self, trainer: Any, module: Any, optimizer: Any) -> None:
        """Forward-backward of the step's earlier micro-batches at the current weights (:func:`passes.replay`)."""
        replay(trainer, module, optimizer, self._batches[:-1], type(self).__name__)

    def descent_pass(self, trainer: Any, optimizer: Any, closure: Any, transform: Any) -> torch.Tensor | None:
        """The descent pass at :math:`w + \\delta` (:func:`passes.rerun`); a subclass may run more passes here
        (:class:`~lightning_losses.perturbation.udim.UDIM`: the batch's inputs perturbed)."""
        return rerun(closure, transform)

    def wrap_closure(self, module: Any, optimizer: Any, closure: Any) -> Any:
        """The ``"step"`` plug-in hook called by :meth:`LossesMixin.optimizer_step`."""
        trainer = module.trainer
        torch_opt = getattr(optimizer, "optimizer", optimizer)
        ascent_terms = self.engine.ascent_terms
        fraction = self.engine.select_fraction
        if self.engine.decouple:  # WSAM decoupled: its term is applied right after this optimizer's step
            decoupled.attach(self.engine, torch_opt)
        if self.engine.rule == bayes_step.BAYES:  # bsam: BSAM.step runs Lightning's closure (these passes) once
            bayes_step.attach(torch_opt)
        check_selection(fraction, trainer.accumulate_grad_batches, type(self).__name__)
        before: list[torch.Tensor] = []  # ESAM's data selection: the per-sample losses at w

        def per_sample() -> torch.Tensor:
            out = getattr(module, "objective_output", None)
            if out is None:
                raise ConfigurationError(
                    f"{type(self).__name__}: data selection (esam's `gamma` < 1) needs the per-sample losses of "
                    f"`compute_loss`; `training_step` did not call it (or pass gamma=1.0)"
                )
            return out.per_sample

        def selected(loss: torch.Tensor) -> torch.Tensor:
            out = module.objective_output  # `training_step` returns `compute_loss`'s loss (accumulation refused)
            return selected_loss(out.per_sample, before[0], fraction, out.weights)

        def forward_backward(phase: str) -> torch.Tensor | None:
            if phase == "plain":
                loss = closure()
                self._timer.first_done()
                return loss
            terms = ascent_terms_only(module, ascent_terms if phase in ("first", "ascent") else None)
            if phase == "first":
                # bsam's first pass is at the noisy point, not at the w of the step's earlier micro-batches
                noisy = self.engine.rule == bayes_step.BAYES and len(self._batches) > 1
                if noisy:
                    torch_opt.zero_grad(set_to_none=True)
                    bn = batchnorm_modules(module) if self._bn is None else self._bn
                    with terms:
                        loss = bayes_step.accumulated_noisy_pass(
                            trainer, module, optimizer, closure, self._batches[:-1], bn, self._metrics, self.engine
                        )
                else:
                    with terms:
                        loss = closure()
                self._first_result = closure_result(closure)
                if fraction < 1.0 and loss is not None:
                    before[:] = [per_sample().detach()]
                self._timer.first_done()
                return loss
            with suppressed_logging(module), frozen_metrics(module, self._metrics), terms:
                if len(self._batches) > 1:
                    self._replay(trainer, module, optimizer)
                select = phase == "descent" and fraction < 1.0 and before
                if phase == "descent":
                    return self.descent_pass(trainer, torch_opt, closure, selected if select else None)
                return rerun(closure, selected if select else None)

        def wrapped() -> torch.Tensor | None:
            self._hook_ran = True
            scaler = getattr(trainer.precision_plugin, "scaler", None)
            grad_scale = None
            scaled = scaler is not None and scaler.is_enabled()
            if scaled:
                grad_scale = scaler.scale(torch.ones((), device=module.device))
            self._first_result = None
            self._timer.start(module.device if self.engine.collect_stats else None)
            try:
                loss = self.engine.step(
                    forward_backward,
                    self._parameters(module, torch_opt),
                    step=trainer.global_step,
                    epoch=trainer.current_epoch,
                    zero_grad=lambda: torch_opt.zero_grad(set_to_none=True),
                    no_sync=getattr(trainer.strategy, "block_backward_sync", None),
                    grad_scale=grad_scale,
                    bn_modules=batchnorm_modules(module) if self._bn is None else self._bn,
                    # a closure returning None under a GradScaler: Lightning skips the optimizer step, so no ascent
                    skip_on_none=scaled,
                    optimizer=torch_opt,
                )
            finally:
                self._batches.clear()
            self._timer.stop()
            if self._first_result is not None:
                set_closure_result(closure, self._first_result)  # outputs / progress bar report the loss at w
            self._first_result = None
            if "sharpness" in self.engine.last_stats:
                self.engine.last_stats["sharpness"] *= trainer.accumulate_grad_batches
            self._new_stats = True
            return loss

        return wrapped
