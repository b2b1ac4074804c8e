"""``SampleReweighting``: the Trainer callback that attaches a reweighter to a ``LossesMixin`` module.

Recipe form: ``callbacks: {sample_reweighting: {strategy: group_dro, step_size: 0.01}}``; command line:
``--callbacks '{sample_reweighting: {strategy: group_dro}}'``.

Semantics:

* the reweighter runs once per ``compute_loss`` call in training and its state advances once per **optimizer
  step** (committed in ``on_before_optimizer_step``): under gradient accumulation ``group_dro`` and
  ``ema_class_loss`` update ``q`` / the class EMA once from the sums and counts of all micro-batches, so ``K``
  micro-batches of ``B`` reach the state of one batch of ``K*B`` (the per-sample stores are invariant anyway);
* per-sample stores are sized from the training dataset's length at ``on_train_start`` (when the strategy was built
  without ``num_samples`` and the dataset has a length): no host sync per step; a datamodule with a ``num_groups``
  attribute sizes ``group_dro`` (when built without ``num_groups``) and the per-group metrics; ``group_dro`` with
  neither refuses to start (a count taken from the first batch can miss a rare group);
* a ``training_step`` that returns ``None`` (e.g. for a non-finite loss) skips the step for the reweighter too: the
  state (sums, ``q``, class EMA, per-sample store rows, counters) is put back as it was before that micro-batch
  (with gradient accumulation only that micro-batch is undone; the earlier ones still make their step);
* a pass with ``objective_logging_suppressed`` set (a perturbed pass of SAM-like methods) reuses the weights that
  the same ``compute_loss`` call got at the unperturbed weights (each micro-batch its own under gradient
  accumulation): the state advances once per step and no extra collective runs;
* on the Trainer's logging steps (or every ``log_every_n_steps`` optimizer steps) it logs ``reweight/ess``,
  ``reweight/entropy``, ``reweight/max``, ``reweight/min``, ``reweight/zero_fraction`` (global batch),
  ``reweight/nonfinite`` (samples left out so far for a NaN / inf loss), the strategy's own values
  (``reweight/q/0``, ...) and, when the batch carries ``group``, ``reweight/group_acc/g``, ``reweight/group_loss/g``
  and ``reweight/worst_group_acc`` over the steps since the last log.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from typing_extensions import override

from lightning_losses._deferred import Deferred
from lightning_losses._state import step_skipped
from lightning_losses._validation import check_int
from lightning_losses.callbacks import CALLBACKS, MixinCallback, step_logs_due
from lightning_losses.diagnostics import MediaCadence, log_scalars, media_loggers
from lightning_losses.errors import ConfigurationError
from lightning_losses.reweighting.attached import AttachedReweighter, datamodule_groups, dataset_length
from lightning_losses.reweighting.base import Reweighter, build_reweighter
from lightning_losses.reweighting.media import GroupTable, class_labels, log_group_table, log_media
from lightning_losses.reweighting.step_logs import GroupSums, restore_interval, reweighting_row, save_interval
from lightning_losses.sync import sync_statistics

Opt = Tensor | None

__all__ = ["SampleReweighting"]

_Attached = AttachedReweighter  # the former name (tests and old imports)

#: with the default media cadence, the group / class tables are logged once every this many epochs (and at the end)
TABLE_EVERY_EPOCHS = 10
#: ... and at least this many optimizer steps apart
TABLE_MIN_STEPS = 1000


@CALLBACKS.register("sample_reweighting", aliases=("reweighting",))
class SampleReweighting(MixinCallback):
    """Reweight training samples online with a registered strategy (``ll.list_reweighters()``).

    Args:
        strategy: a strategy name or a built :class:`~lightning_losses.reweighting.Reweighter`. Default
            ``"loss_softmax"``.
        log_every_n_steps: log weight / group statistics every this many optimizer steps (0 = never), written to
            the Trainer's loggers on exactly those steps, whatever ``Trainer(log_every_n_steps=...)`` is. Default
            ``None``: on the steps where the Trainer writes its step logs (through ``LightningModule.log``).
        media_every_n_steps: W&B media at the first logging step at or after every this many optimizer steps:
            histograms ``reweight/weights`` and ``reweight/losses`` (per-sample, the batch of rank 0) and, with
            groups, the table ``reweight/groups`` (:class:`~lightning_losses.reweighting.media.GroupTable`), else,
            with integer class targets, ``reweight/classes`` (per class, over the steps since the last log). Default
            ``None``: about once per epoch, at most once per
            :data:`~lightning_losses.diagnostics.MEDIA_MIN_STEPS` steps (the tables grow a row per group each time
            but are logged, whole, every :data:`TABLE_EVERY_EPOCHS` epochs, at least :data:`TABLE_MIN_STEPS` steps
            apart, and at the end of training); ``0``: never.
            Loggers without media (CSV) get none of it.
        **kwargs: the strategy's arguments (e.g. ``step_size=0.01`` for ``group_dro``).

    Example:
        >>> cb = SampleReweighting("group_dro", step_size=0.01)
        >>> cb.state_key
        "SampleReweighting{'strategy': 'group_dro'}"
    """

    def __init__(
        self,
        strategy: str | Reweighter = "loss_softmax",
        log_every_n_steps: int | None = None,
        media_every_n_steps: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.reweighter = build_reweighter(strategy, **kwargs)
        if log_every_n_steps is not None:
            log_every_n_steps = check_int("log_every_n_steps", log_every_n_steps, low=0)
        self.log_every_n_steps = log_every_n_steps
        self.media = MediaCadence(media_every_n_steps)
        self.group_table = GroupTable()
        self._attached: AttachedReweighter | None = None
        self._group_sums: GroupSums | None = None  # per group since the last log (accuracy, loss, count)
        self._class_sums: GroupSums | None = None  # per class, for the media table of a run without groups
        self._pending_groups = Deferred(self._update_groups)  # the steps' sums since the last log, folded when read
        self._pending_classes = Deferred(self._update_classes)
        self.class_table = GroupTable("class")
        self._last_logged_step = -1
        self._table_at: tuple[int, int] | None = None  # epoch and step the tables were last logged at (default)
        self._undo: dict[str, Any] | None = None  # the reweighter's state at the start of the micro-batch
        self._committed = False  # an optimizer step committed the state during this micro-batch
        self._uncommitted = 0  # micro-batches merged since the last commit

    slot = "reweighter"

    @override
    def state_key_fields(self) -> dict[str, Any]:
        return {"strategy": self.reweighter.strategy}

    # ------------------------------------------------------------------ wiring
    @override
    def slot_plugin(self, pl_module: Any) -> AttachedReweighter:
        """The reweighter bound to ``pl_module`` (one per module, kept across ``setup`` calls)."""
        if self._attached is None or self._attached.module is not pl_module:
            self._attached = AttachedReweighter(self.reweighter, pl_module)
        return self._attached

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.reweighter.accumulating = True  # the state advances in on_before_optimizer_step

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        self.reweighter.accumulating = False
        self._flush_metrics()  # nothing kept by reference past the fit

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        size = dataset_length(getattr(trainer, "train_dataloader", None))
        if size:
            self.reweighter.size_stores(size)
        groups = datamodule_groups(trainer)
        if groups:
            self.reweighter.size_groups(groups)
        missing = self.reweighter.unsized()
        if missing:
            raise ConfigurationError(
                f"SampleReweighting(`{self.reweighter.strategy}`) needs `{missing}` before training: neither the "
                f"strategy nor the datamodule (a `{missing}` attribute) gives it, and a count taken from the first "
                f"batch can miss a rare group; pass e.g. SampleReweighting('{self.reweighter.strategy}', "
                f"{missing}=...)"
            )
        self._uncommitted = 0

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._undo, self._committed = self.reweighter.snapshot(), False

    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        self.reweighter.commit()  # once per optimizer step, after all its micro-batches
        self._committed = True

    def _settle(self, pl_module: Any, outputs: Any) -> bool:
        """Keep or undo the micro-batch that just ended; ``True`` when it was skipped (and undone)."""
        skipped = step_skipped(pl_module, outputs) and self._undo is not None
        if skipped:
            self.reweighter.restore(self._undo)  # as before the micro-batch (staged state of the earlier ones too)
            if self._committed and self._uncommitted:  # the optimizer step still ran on the earlier micro-batches
                self.reweighter.commit()
        else:
            self._uncommitted += 1
        if self._committed:
            self._uncommitted = 0
        self._undo = None
        return skipped

    @override
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.reweighter.set_epoch(trainer.current_epoch)

    # ------------------------------------------------------------------ logging
    def _create_group_sums(self, group: torch.Tensor, trainer: Any) -> None:
        size = getattr(self.reweighter, "num_groups", 0) or datamodule_groups(trainer)
        if not size:  # one collective, once
            local = group.max().reshape(1) if group.numel() else group.new_full((1,), -1)
            size = int(sync_statistics({"m": local}, {"m": "max"})[0]["m"]) + 1
        self._group_sums = GroupSums(size, group.device)

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        skipped = self._settle(pl_module, outputs)
        if self.log_every_n_steps == 0 or (skipped and not self._committed):
            return
        # kept by reference (the reweighter's `last` holds detached tensors) and folded on logging steps; a skipped
        # micro-batch adds nothing, but the optimizer step it ends (on the earlier ones) still logs its interval
        last = self.reweighter.last
        logits, target = last.get("logits"), last.get("target")
        kept = not skipped and isinstance(logits, Tensor) and isinstance(target, Tensor)
        if kept and logits.ndim == 2 and target.ndim == 1:
            group, losses = last.get("group"), last.get("losses")
            if group is not None:
                if self._group_sums is None:  # sized on the first step (a collective when the size is unknown)
                    self._create_group_sums(group, trainer)
                self._pending_groups.add(logits, target, group, losses, last.get("sample_mask"))
            elif self.media.every != 0 and not target.is_floating_point() and media_loggers(trainer):
                if self._class_sums is None:
                    self._class_sums = GroupSums(logits.shape[-1], logits.device)
                self._pending_classes.add(logits, target, losses, last.get("sample_mask"))
        if not self._committed:  # accumulating: no optimizer step in this micro-batch, its sums log with the step's
            due = False
        elif self.log_every_n_steps is None:
            due = step_logs_due(trainer)
        else:
            due = trainer.global_step % self.log_every_n_steps == 0
        if not due or (step := trainer.global_step) == self._last_logged_step:
            if self._pending_groups.full() or self._pending_classes.full():  # the same step on every rank
                self._flush_metrics()
            return
        self._last_logged_step = step
        self._flush_metrics()
        # (the skipped micro-batch's output: no weight statistics, no media from it)
        output = None if skipped else getattr(pl_module, "objective_output", None)
        # every rank alike (an empty local batch too): every value from one collective and one host read (`step_logs`)
        weights = None if output is None else output.weights
        metrics, stats, class_stats = reweighting_row(self.reweighter, weights, self._group_sums, self._class_sums)
        # own interval: straight to the loggers, once (``self.log`` would repeat the value on the Trainer's later
        # logging steps, or drop it when they do not coincide)
        log_scalars(trainer, pl_module, metrics, own_interval=self.log_every_n_steps is not None)
        if not skipped and media_loggers(trainer) and self.media.due(step, trainer.current_epoch):
            publish = self._table_due(trainer.current_epoch, step)
            log_media(trainer, self.group_table, self.reweighter, output, last, stats, publish)
            if class_stats is not None:
                labels = class_labels(last["logits"], last["target"])[0]
                log_group_table(
                    trainer, "reweight/classes", self.class_table, class_stats, output, labels, self.reweighter, publish
                )

    def _flush_metrics(self) -> None:
        self._pending_groups.flush()
        self._pending_classes.flush()

    def _update_groups(self, logits: Tensor, target: Tensor, group: Tensor, losses: Opt, mask: Opt) -> None:
        self._group_sums.add(logits, target, group, losses, mask)  # type: ignore[union-attr]

    def _update_classes(self, logits: Tensor, target: Tensor, losses: Opt, sample_mask: Opt) -> None:
        labels, valid = class_labels(logits, target)  # type: ignore[misc]
        mask = valid if sample_mask is None else valid & sample_mask
        self._class_sums.add(logits, labels, labels, losses, mask)  # type: ignore[union-attr]

    def _table_due(self, epoch: int, step: int) -> bool:
        """Whether this media step logs the tables too: every media step with ``media_every_n_steps=N``; with the
        default cadence, the first one at least :data:`TABLE_EVERY_EPOCHS` epochs and :data:`TABLE_MIN_STEPS`
        optimizer steps after the first media step, then likewise spaced (a W&B table is an artifact, about 10 ms a
        log: every 10 epochs of 20 steps would be half a percent of the step time; its rows still grow at every media
        step and ``on_train_end`` logs them all)."""
        if self.media.every is not None:
            return True
        if self._table_at is None:  # the first media step starts the count
            self._table_at = (epoch, step)
            return False
        if epoch - self._table_at[0] < TABLE_EVERY_EPOCHS or step - self._table_at[1] < TABLE_MIN_STEPS:
            return False
        self._table_at = (epoch, step)
        return True

    @override
    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if media_loggers(trainer):  # the rows added since the tables were last logged (no collective)
            self.group_table.publish(trainer, "reweight/groups")
            self.class_table.publish(trainer, "reweight/classes")

    # ------------------------------------------------------------------ checkpointing
    @override
    def state_dict(self) -> dict[str, Any]:
        """The reweighter's state and the logging interval's: the per-group / per-class sums since the last log
        (:func:`~lightning_losses.reweighting.step_logs.save_interval`: a collective) and the media tables' rows."""
        self._flush_metrics()
        tables = {"groups": self.group_table.rows, "classes": self.class_table.rows, "at": self._table_at}
        interval = save_interval(self._group_sums, self._class_sums)
        state = {"strategy": self.reweighter.strategy, "reweighter": self.reweighter.state_dict()}
        return {**state, **interval, "tables": tables}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("strategy") != self.reweighter.strategy:
            raise ValueError(
                f"checkpoint holds reweighting state of `{state_dict.get('strategy')}`, "
                f"but this SampleReweighting uses `{self.reweighter.strategy}`"
            )
        self.reweighter.load_state_dict(state_dict["reweighter"])
        self._group_sums, self._class_sums = restore_interval(state_dict)  # none in checkpoints before them
        tables = state_dict.get("tables") or {}
        self.group_table.rows = [list(r) for r in tables.get("groups", ())]
        self.class_table.rows = [list(r) for r in tables.get("classes", ())]
        self._table_at = None if tables.get("at") is None else tuple(tables["at"])
        self._pending_groups.clear()
        self._pending_classes.clear()
