r"""Lightning integration: the ``WeightPerturbation`` callback (its named presets ``SAM``, ``ASAM``,
``AdversarialModelPerturbation`` and ``AWP`` are in :mod:`~lightning_losses.perturbation.callback`).

Automatic optimization is kept. The callback attaches itself to :class:`~lightning_losses.LossesMixin`'s ``"step"``
slot; the mixin's ``optimizer_step`` hands the optimizer a wrapped closure, so whatever the precision plugin does with
"the closure" (GradScaler included) covers every pass, and ``gradient_clip_val``, ``on_before_optimizer_step``, the
LR scheduler, ``global_step`` and checkpoint cadence see exactly one optimizer step.

What each pass does:

* first pass: Lightning's closure at :math:`w` (logging and metric updates happen here, once);
* perturbed passes: ``training_step`` again at :math:`w + \delta` with ``module.objective_logging_suppressed = True``
  and ``module.log`` / ``log_dict`` turned into no-ops, the state of every ``torchmetrics`` metric of the module put
  back afterwards (a metric updated in ``training_step`` counts each batch once), BatchNorm running statistics
  frozen. Other user state updated in ``training_step`` should check ``self.objective_logging_suppressed``.

Gradient accumulation (``accumulate_grad_batches = k``): the ascent uses the gradient accumulated over all k
micro-batches of the step, and every micro-batch is re-evaluated at :math:`w + \delta` (the callback keeps references
to the step's k batches; plain closure-based SAM would re-run only the last one). The perturbed step therefore equals
a perturbed step on the concatenated batch; it costs 2k forward-backward passes per optimizer step. Per-call state
of the objective is replayed, not recomputed: under :class:`~lightning_losses.SampleReweighting` each micro-batch is
re-evaluated with the weights it got at :math:`w` (every perturbed pass, ``inner_steps > 1`` included).

Skipped batches (``training_step`` returning ``None``, Lightning's way to skip one): a step whose micro-batches were
all skipped has no gradient and is not perturbed (weights untouched, not counted in ``perturbed_steps``); a skipped
micro-batch adds no gradient at :math:`w` nor at :math:`w + \delta` while the others are perturbed as usual; under a
GradScaler, where Lightning skips the optimizer step when the closure returns ``None``, nothing is perturbed. Under
DDP Lightning refuses ``None`` from ``training_step`` (``RuntimeError`` on that rank); a replayed micro-batch that
returns ``None`` raises the same error instead of letting ranks issue different collectives.

Checkpoints written inside the step (from a hook) hold the unperturbed state: every state-dict key of a perturbed
parameter (tied weights included) and the BatchNorm statistics a perturbed pass is changing.

The callback needs :meth:`LossesMixin.optimizer_step <lightning_losses.LossesMixin.optimizer_step>`: ``setup``
raises a :class:`~lightning_losses.errors.ConfigurationError` when ``LightningModule.optimizer_step`` comes first in
the module's bases, and the first optimizer step raises when an ``optimizer_step`` override did not call the mixin's.
"""

from __future__ import annotations

from typing import Any

import torch
from typing_extensions import override

from lightning_losses._compat import closure_result, set_closure_result
from lightning_losses.callbacks import CALLBACKS, MixinCallback, step_logs_due
from lightning_losses.diagnostics import log_scalars
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import bayes_step, decoupled
from lightning_losses.perturbation.checkpoints import unperturbed_checkpoint
from lightning_losses.perturbation.data_selection import check_selection, selected_loss
from lightning_losses.perturbation.engine import Perturbation, batchnorm_modules
from lightning_losses.perturbation.passes import (
    ascent_terms_only,
    frozen_metrics,
    metric_modules,
    replay,
    rerun,
    suppressed_logging,
)
from lightning_losses.perturbation.presets import build_perturbation
from lightning_losses.perturbation.sharding import check_strategy, reshard_all
from lightning_losses.perturbation.timing import StepTimer

__all__ = ["WeightPerturbation"]


class WeightPerturbation(MixinCallback):
    r"""Sharpness-aware training on any ``LossesMixin`` model with automatic optimization.

    Args:
        method: a preset of :data:`~lightning_losses.perturbation.PERTURBATIONS` (``"sam"``, ``"asam"``,
            ``"asam_p2"``, ``"adversarial_model_perturbation"``, ``"awp"``, ``"gsam"``, ``"wsam"``,
            ``"friendly_sam"``, ``"esam"``) or a built
            :class:`~lightning_losses.perturbation.Perturbation`.
        **options: the preset's arguments (``rho``, ``epsilon``, ``gamma``, ...) and engine options (``params``,
            ``ascent_terms``, ``sync_ascent``, ``freeze_bn``, ``every_n_steps``, ``probability``, ``reuse_alpha``,
            ``inner_steps``, ``warmup_epochs``).

    Logged every step (``perturbation/...``, this rank's values): ``norm`` :math:`\|\delta\|`, ``sharpness``
    :math:`L(w+\delta) - L(w)` (same batch), ``grad_norm`` / ``grad_norm_perturbed`` (unscaled), ``radius``,
    ``cos_delta_grad`` (cosine between :math:`\delta` and the gradient at :math:`w + \delta`; for SAM the cosine between
    the gradients at :math:`w` and :math:`w + \delta`), ``skipped`` (non-finite ascent gradients so far),
    ``perturbed_fraction`` (perturbed optimizer steps over all
    optimizer steps so far; with ``every_n_steps`` / ``probability`` / LookSAM reuse the unperturbed steps log only
    ``skipped``, ``perturbed_fraction`` and the times), ``step_time`` (seconds of the step's closure, every pass) and
    ``time_ratio`` (that over the closure's first, unperturbed forward-backward: the step's cost against an
    unperturbed one; :mod:`~lightning_losses.perturbation.timing`).

    Example:
        >>> import lightning as L
        >>> from lightning_losses.demo import DigitsClassifier, DigitsDataModule
        >>> from lightning_losses.perturbation import SAM
        >>> trainer = L.Trainer(max_steps=2, callbacks=[SAM(rho=0.05)], logger=False, enable_progress_bar=False,
        ...                     enable_checkpointing=False, enable_model_summary=False)
        >>> trainer.fit(DigitsClassifier(), DigitsDataModule())
        >>> trainer.global_step
        2
    """

    def __init__(self, method: Any = "sam", **options: Any) -> None:
        if isinstance(method, Perturbation):
            if options:
                raise ConfigurationError("pass options to the preset, not next to an already built `Perturbation`")
            self.engine = method
            self.method = "custom"
        else:
            self.engine = build_perturbation(method, **options)
            self.method = str(method)
        self.options = dict(options)
        self._named: list[tuple[str, torch.Tensor]] | None = None
        self._optimizer_id: int | None = None
        self._batches: list[tuple[Any, int]] = []
        self._bn: list[torch.nn.Module] | None = None
        self._metrics: list[Any] | None = None
        self._new_stats = False
        self._first_result: Any = None
        self._hook_ran = False  # the wrapped closure ran in this optimizer step (the mixin hook is in effect)
        self._timer = StepTimer()

    slot = "step"

    @override
    def state_key_fields(self) -> dict[str, Any]:
        return {"method": self.method, **{k: repr(v) for k, v in sorted(self.options.items())}}

    # ------------------------------------------------------------------ lifecycle
    @override
    def check_module(self, pl_module: Any) -> None:
        if not pl_module.automatic_optimization:
            raise ConfigurationError(
                f"{type(self).__name__} works with automatic optimization; with manual optimization call "
                f"`lightning_losses.perturbation.perturbed_backward` in `training_step` instead"
            )
        names = self.engine.ascent_terms
        objective = getattr(pl_module, "objective", None)
        if names is not None and objective is not None:
            valid = [t.name for t in objective.terms]
            unknown = [n for n in names if n not in valid]
            if unknown:
                raise ConfigurationError(
                    f"`ascent_terms` names unknown objective term(s) {unknown}; the objective has {valid}"
                )

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if trainer is not None:  # DeepSpeed, FSDP1 and untested strategies, sync_ascent=False under FSDP2: refused
            check_strategy(trainer.strategy, type(self).__name__, self.engine.sync_ascent)
        super().setup(trainer, pl_module, stage)  # attach raises when a Lightning `optimizer_step` hides the mixin's
        self._named = None
        self._hook_ran = False

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        # after `LightningModule.setup` / `configure_model`, which may create layers and metrics
        self._bn = batchnorm_modules(pl_module)
        self._metrics = metric_modules(pl_module)

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._bn = self._metrics = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.engine.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.engine.load_state_dict(state_dict)

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.engine.collect_stats = step_logs_due(trainer)  # valid before the step too (as LearningRateMonitor uses it)
        reshard_all(pl_module)  # after an evaluation pass FSDP2 leaves the root unsharded: perturb the shards
        if trainer.accumulate_grad_batches > 1:
            if batch_idx % trainer.accumulate_grad_batches == 0:
                self._batches.clear()
            self._batches.append((batch, batch_idx))

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._new_stats and step_logs_due(trainer):  # also on a step left unperturbed (no statistics then)
            stats = {f"perturbation/{k}": v for k, v in self.engine.last_stats.items()}
            stats["perturbation/perturbed_fraction"] = self.engine.perturbed_steps / max(trainer.global_step, 1)
            stats["perturbation/skipped"] = float(self.engine.skipped)
            stats.update(self._timer.metrics())
            log_scalars(trainer, pl_module, stats)
        self._new_stats = False

    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        """Raise before the first optimizer step that took Lightning's closure unwrapped (an ``optimizer_step``
        override that does not call ``LossesMixin.optimizer_step``): the step would silently be a plain one."""
        slots = pl_module.__dict__.get("_ll_plugin_slots") or {}
        if not self._hook_ran and slots.get("step") is self:  # only while attached (a plug-in may be swapped out)
            cls = type(pl_module).__name__
            raise ConfigurationError(
                f"{type(self).__name__} did not run: `{cls}.optimizer_step` overrides `LossesMixin.optimizer_step` "
                f"without calling it, so the optimizer got Lightning's closure unwrapped; call "
                f"`super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)` in `{cls}.optimizer_step`"
            )
        self._hook_ran = False

    @override
    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written while the weights are perturbed (from a hook inside the step) gets the originals."""
        unperturbed_checkpoint(checkpoint, pl_module, self.engine)

    # ------------------------------------------------------------------ the step
    def _parameters(self, module: Any, optimizer: Any) -> list[tuple[str, torch.Tensor]]:
        if self._named is None or self._optimizer_id != id(optimizer):
            in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
            self._named = [(n, p) for n, p in self.engine.select(module.named_parameters()) if id(p) in in_optimizer]
            self._optimizer_id = id(optimizer)
        return self._named

    def _replay(self, trainer: Any, module: Any, optimizer: Any) -> None:
        """Forward-backward of the step's earlier micro-batches at the current weights (:func:`passes.replay`)."""
        replay(trainer, module, optimizer, self._batches[:-1], type(self).__name__)

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


CALLBACKS.register("weight_perturbation")(WeightPerturbation)
