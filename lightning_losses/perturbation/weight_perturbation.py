r"""Lightning integration: the ``WeightPerturbation`` callback (its named presets ``SAM``, ``ASAM``,
``AdversarialModelPerturbation`` and ``AWP`` are in :mod:`~lightning_losses.perturbation.callback`, its wrapped
closure, the step itself, in :mod:`~lightning_losses.perturbation.wrapped_closure`).

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

from lightning_losses._validation import check_int
from lightning_losses.callbacks import CALLBACKS, MixinCallback, step_logs_due
from lightning_losses.diagnostics import log_scalars
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation.checkpoints import unperturbed_checkpoint
from lightning_losses.perturbation.engine import Perturbation, batchnorm_modules
from lightning_losses.perturbation.passes import metric_modules
from lightning_losses.perturbation.presets import build_perturbation
from lightning_losses.perturbation.sharding import check_strategy, fsdp_units, reshard_all
from lightning_losses.perturbation.timing import StepTimer
from lightning_losses.perturbation.wrapped_closure import WrappedClosure

__all__ = ["WeightPerturbation"]


class WeightPerturbation(WrappedClosure, MixinCallback):
    r"""Sharpness-aware training on any ``LossesMixin`` model with automatic optimization.

    Args:
        method: a preset of :data:`~lightning_losses.perturbation.PERTURBATIONS` (``"sam"``, ``"asam"``,
            ``"asam_p2"``, ``"adversarial_model_perturbation"``, ``"awp"``, ``"gsam"``, ``"wsam"``,
            ``"friendly_sam"``, ``"esam"``) or a built
            :class:`~lightning_losses.perturbation.Perturbation`.
        log_every_n_steps: collect and log the statistics below every this many optimizer steps (0 = never),
            written to the Trainer's loggers on exactly those steps. Default ``None``: on the steps where the Trainer
            writes its step logs (``Trainer(log_every_n_steps=...)``), as the other callbacks do.
        **options: the preset's arguments (``rho``, ``epsilon``, ``gamma``, ...) and engine options (``params``,
            ``ascent_terms``, ``sync_ascent``, ``freeze_bn``, ``every_n_steps``, ``probability``, ``reuse_alpha``,
            ``inner_steps``, ``warmup_epochs``).

    Logged on the logging steps (``perturbation/...``; this rank's values, which every rank shares with
    ``sync_ascent=True``): ``norm`` :math:`\|\delta\|`, ``sharpness`` :math:`L(w+\delta) - L(w)` (same batch; the mean
    over the data-parallel ranks, so the global batch's), ``grad_norm`` / ``grad_norm_perturbed`` (unscaled),
    ``radius``, ``cos_delta_grad`` (cosine between :math:`\delta` and the gradient at :math:`w + \delta`; for SAM the
    cosine between the gradients at :math:`w` and :math:`w + \delta`), ``skipped`` (non-finite ascent gradients so far),
    ``perturbed_fraction`` (perturbed optimizer steps over all
    optimizer steps so far; with ``every_n_steps`` / ``probability`` / LookSAM reuse the unperturbed steps log only
    ``skipped``, ``perturbed_fraction`` and the times), ``step_time`` (seconds of the step's closure, every pass) and
    ``time_ratio`` (that over the closure's first, unperturbed forward-backward: the step's cost against an
    unperturbed one; :mod:`~lightning_losses.perturbation.timing`). On those steps a model of at most
    :data:`~lightning_losses.perturbation.step_phases.KEEP_DELTA_NUMEL` elements keeps :math:`\delta` during the
    descent pass for the cosine (one parameter-sized buffer more; larger ones subtract the saved weights instead).

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

    def __init__(self, method: Any = "sam", log_every_n_steps: int | None = None, **options: Any) -> None:
        self.log_every_n_steps = (
            None if log_every_n_steps is None else check_int("log_every_n_steps", log_every_n_steps, low=0)
        )
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
        self._fsdp_units: list[Any] | None = None  # FSDP2 units of the module (`on_train_start`)
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
        self._fsdp_units = fsdp_units(pl_module)  # walked once per fit, not at every step

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self._bn = self._metrics = self._fsdp_units = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.engine.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.engine.load_state_dict(state_dict)

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self.engine.collect_stats = self._stats_due(trainer, before=True)
        # after an evaluation pass FSDP2 leaves the root unsharded: perturb the shards
        reshard_all(pl_module, self._fsdp_units)
        if trainer.accumulate_grad_batches > 1:
            if batch_idx % trainer.accumulate_grad_batches == 0:
                self._batches.clear()
            self._batches.append((batch, batch_idx))

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._new_stats and self._stats_due(trainer, before=False):  # also on a step left unperturbed
            stats = {f"perturbation/{k}": v for k, v in self.engine.last_stats.items()}
            stats["perturbation/perturbed_fraction"] = self.engine.perturbed_steps / max(trainer.global_step, 1)
            stats["perturbation/skipped"] = float(self.engine.skipped)
            stats.update(self._timer.metrics())
            log_scalars(trainer, pl_module, stats, own_interval=self.log_every_n_steps is not None)
        self._new_stats = False

    def _stats_due(self, trainer: Any, before: bool) -> bool:
        """Whether this optimizer step's statistics are collected (``before`` the step) and logged (after it)."""
        every = self.log_every_n_steps
        if every is None:
            return step_logs_due(trainer)  # valid before the step too (as LearningRateMonitor uses it)
        return every > 0 and (trainer.global_step + int(before)) % every == 0

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


CALLBACKS.register("weight_perturbation")(WeightPerturbation)
