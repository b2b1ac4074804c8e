r"""``EntropyControl``: an entropy bonus with a fixed, scheduled or target-controlled coefficient.

The callback attaches itself to :class:`~lightning_losses.LossesMixin` in ``setup`` and adds, in training, the
per-sample term :math:`-\beta H(p_i)` (named ``{name}_bonus``, logged by the objective as ``train/{name}_bonus``)
to the objective before reweighting and the global normalisation. ``beta`` is signed: positive raises entropy
(confidence penalty), negative lowers it (entropy minimisation).

* ``EntropyControl(beta=0.1)``: fixed; ``beta={"name": "linear", ...}``: scheduled (:mod:`lightning_losses.schedules`).
* ``EntropyControl(target=0.5)`` or ``band=[0.4, 0.6]``: :class:`~lightning_losses.entropy.EntropyController`
  updates ``beta`` after every optimizer step from the mean entropy of the global batch (all ranks, all
  micro-batches of the step): one ``all_reduce`` of two numbers per step, no host sync.

On the Trainer's logging steps (``Trainer(log_every_n_steps=...)``), or every ``log_every_n_steps`` optimizer
steps when that is given, it logs ``{name}/mean`` (mean entropy of the samples seen since the
last log, global), ``{name}/beta``, ``{name}/target`` (controller; for a band its midpoint, plus
``{name}/band_low`` and ``{name}/band_high``) and, with ``per_class=True``, ``{name}/class_{c}`` (mean entropy per
true class, or per predicted class without integer targets) and ``{name}/nonfinite``: the samples (or tokens) whose
entropy was NaN / inf so far, left out of the controller's mean and of every logged statistic (summed over ranks). The
values go through Lightning (:func:`~lightning_losses.diagnostics.log_scalars`): they reach
``trainer.callback_metrics`` (``EarlyStopping(monitor="entropy/mean")`` works) and are written at the step of the
Trainer's ``train/*`` logs (one extra collective and host sync per log step). At ``media_every_n_steps`` a W&B logger
also gets ``{name}/per_sample``: a histogram of the per-sample entropies of the batch (rank 0's).

A ``training_step`` that returns ``None`` (e.g. for a non-finite loss) skips the step here too: that micro-batch's
entropies leave the controller's accumulators and the logging window, so ``beta`` and the dual variable move as if
the micro-batch had not been there.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from typing_extensions import override

from lightning_losses._deferred import Deferred
from lightning_losses._state import step_skipped
from lightning_losses._validation import check_bool, check_choice, check_int, check_number, check_state_keys
from lightning_losses.callbacks import CALLBACKS, MixinCallback, step_logs_due
from lightning_losses.diagnostics import MediaCadence, log_histogram, log_scalars, media_loggers
from lightning_losses.distributed import global_sum, global_sum_values, rank_zero_share
from lightning_losses.entropy.controller import EntropyController
from lightning_losses.entropy.window import class_means, entropies, merge_window, upgrade_window, window_statistics
from lightning_losses.errors import ConfigurationError
from lightning_losses.schedules import build_schedule

__all__ = ["EntropyControl"]


@CALLBACKS.register("entropy_control", aliases=("entropy",))
class EntropyControl(MixinCallback):
    r"""Add :math:`-\beta H` to the training objective, with ``beta`` fixed, scheduled or held at a target entropy.

    Args:
        target: target mean entropy in nats (number or schedule mapping); turns the controller on.
        band: ``[low, high]`` entropy band (nats) for the controller instead of a single target (AEnt-style).
        beta: the coefficient without a controller (number or schedule mapping), the initial value with one.
            Default 0.
        lr: controller step size :math:`\eta`. Default 0.02 (see :class:`EntropyController` for the settings that
            hold the digits demo at its target: ``lr=0.03, kp=1.0, warmup_steps=40``).
        beta_min / beta_max: controller clip range. Defaults -1 / 1; ``beta_min=0`` only ever raises entropy.
        kp: controller proportional gain (PI control; damps oscillations). Default 0: plain dual ascent.
        warmup_steps: optimizer steps before the controller starts updating ``beta``. Default 0.
        input: name of the logits tensor passed to ``compute_loss``. Default ``"logits"``. ``[N, C]`` logits, or
            ``[N, T, V]`` token logits (tokens whose ``target`` is ``ignore_index`` are left out).
        ignore_index: token label that does not count. Default -100.
        normalization: how token logits' entropies make the per-sequence bonus (see
            :func:`~lightning_losses.functional.aggregation.aggregate_tokens`): ``"sequence"`` (default: mean over the
            sequence's valid tokens) or ``"token"`` (the objective's mean of the bonus is then exactly
            :math:`-\beta` times the **global** token-mean entropy the controller measures, as the token losses'
            ``"token"`` normalisation; one all-reduce per call). The controller always measures the global token mean.
        per_class: also log the mean entropy per class. Default False.
        log_every_n_steps: logging period in optimizer steps. Default ``None``: the Trainer's logging steps.
        media_every_n_steps: period of the per-sample entropy histogram (W&B loggers) in optimizer steps; default
            ``None``: about once per epoch (on its first logging step); ``0``: never.
        name: metric prefix and term name (``{name}_bonus``); give each instance its own. Default ``"entropy"``.

    Example:
        >>> import lightning as L, lightning_losses as ll
        >>> cb = ll.EntropyControl(target=0.5)
        >>> cb.controller
        EntropyController(target=Constant(value=0.5), lr=0.02, beta_range=(-1.0, 1.0))
        >>> trainer = L.Trainer(callbacks=[cb], max_steps=2, logger=False, enable_progress_bar=False)
    """

    def __init__(
        self,
        target: float | Any = None,
        band: list[float] | None = None,
        beta: float | Any = 0.0,
        lr: float = 0.02,
        beta_min: float = -1.0,
        beta_max: float = 1.0,
        kp: float = 0.0,
        warmup_steps: int = 0,
        input: str = "logits",
        ignore_index: int = -100,
        normalization: str = "sequence",
        per_class: bool = False,
        log_every_n_steps: int | None = None,
        name: str = "entropy",
        media_every_n_steps: int | None = None,
    ) -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ConfigurationError(f"`name` must be an identifier-like string such as 'entropy', got {name!r}")
        if not isinstance(input, str) or not input:
            raise ConfigurationError(f"`input` must name the logits tensor passed to compute_loss, got {input!r}")
        self.name = name
        self.input = input
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.normalization = check_choice("normalization", normalization, ("sequence", "token"))
        self.per_class = check_bool("per_class", per_class)
        self.log_every_n_steps = (
            None if log_every_n_steps is None else check_int("log_every_n_steps", log_every_n_steps, low=1)
        )
        self.media = MediaCadence(media_every_n_steps)
        self._last_per_sample: torch.Tensor | None = None  # the last batch's per-sample entropies (for the histogram)
        self.controller: EntropyController | None = None
        if target is None and band is None:
            controller_only = {
                "lr": (lr, 0.02),
                "beta_min": (beta_min, -1.0),
                "beta_max": (beta_max, 1.0),
                "kp": (kp, 0.0),
                "warmup_steps": (warmup_steps, 0),
            }
            changed = [k for k, (value, default) in controller_only.items() if value != default]
            if changed:
                raise ConfigurationError(
                    f"`{changed[0]}` configures the entropy controller, which needs `target` or `band`; got "
                    f"{changed[0]}={controller_only[changed[0]][0]!r} with neither (for a fixed or scheduled "
                    f"coefficient use `beta` alone)"
                )
            self.schedule = build_schedule(beta, "beta")
        else:
            self.controller = EntropyController(
                target=target,
                band=band,
                lr=lr,
                beta=check_number("beta", beta),
                beta_min=beta_min,
                beta_max=beta_max,
                kp=kp,
                warmup_steps=warmup_steps,
            )
        self.last_entropy: torch.Tensor | None = None  # global mean entropy of the last step (controller only)
        self.last_metrics: dict[str, float] = {}
        self._last_step = 0
        self._window: torch.Tensor | None = None  # [sum, count, nonfinite, class sums..., class counts...] (local)
        self._pending = Deferred(self._fold_window)  # the steps' entropies since the window was last folded
        self.nonfinite = 0.0  # entropies left out as NaN / inf (global, logged; a float64 tensor in checkpoints)
        self._undo: tuple[Any, ...] | None = None

    slot = "terms"

    @override
    def state_key_fields(self) -> dict[str, Any]:
        return {"name": self.name}

    # ------------------------------------------------------------------ plug-in
    def beta(self, step: int) -> torch.Tensor | float:
        """The coefficient in force at optimizer step ``step``."""
        return self.controller.beta if self.controller is not None else self.schedule(step)

    def _entropies(self, tensors: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        if self.input not in tensors:
            given = ", ".join(f"`{k}`" for k in tensors) or "none"
            raise ValueError(f"{self.name}: EntropyControl needs `{self.input}` in compute_loss(...); got {given}")
        return entropies(tensors[self.input], tensors.get("target"), self.ignore_index, self.normalization, self.input)

    def _accumulate_window(self, h: torch.Tensor, mask: torch.Tensor | None, logits: torch.Tensor, target: Any):
        """Keep the step's entropies for the window (folded when it is read: :mod:`lightning_losses._deferred`)."""
        per_class = self.per_class and logits.ndim == 2
        target = target if per_class and isinstance(target, torch.Tensor) else None
        self._pending.add(h.detach(), mask, logits.detach() if per_class else None, target)

    def _fold_window(self, h: torch.Tensor, mask: Any, logits: Any, target: Any) -> None:
        stats = window_statistics(h, mask, logits, target, logits is not None)
        self._window = merge_window(self._window, stats)

    def _folded_window(self) -> torch.Tensor | None:
        self._pending.flush()
        return self._window

    def extra_terms(self, module: Any, tensors: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """The mixin's ``"terms"`` hook: ``{f"{name}_bonus": -beta * H}`` per sample; observes H for the controller."""
        per_sample, h, mask = self._entropies(tensors)
        if not getattr(module, "objective_logging_suppressed", False):  # perturbed passes do not count
            if self.controller is not None:
                self.controller.observe(h, mask)
            self._accumulate_window(h, mask, tensors[self.input], tensors.get("target"))
            self._last_per_sample = per_sample.detach()
        beta = self.beta(step)
        if isinstance(beta, torch.Tensor):
            beta = beta.to(per_sample.device, per_sample.dtype)
        return {f"{self.name}_bonus": -beta * per_sample}

    # ------------------------------------------------------------------ control and logging
    @override
    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        controller = None if self.controller is None else self.controller.snapshot()
        if self._pending.full():  # no undo pending here
            self._pending.flush()
        self._undo = (controller, self._window, len(self._pending))
        self._last_per_sample = None

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._undo is not None and step_skipped(pl_module, args[0] if args else None):
            controller, self._window, kept = self._undo  # the skipped micro-batch's entropies never happened
            self._pending.truncate(kept)
            self._last_per_sample = None
            if self.controller is not None:
                self.controller.restore(controller)
        self._undo = None
        step = int(trainer.global_step)
        if step == self._last_step:  # accumulating: no optimizer step in this batch
            return
        self._last_step = step
        own = self.log_every_n_steps is not None
        log_now = step % self.log_every_n_steps == 0 if own else step_logs_due(trainer)
        window = self._folded_window() if log_now else None
        reduced: torch.Tensor | None = None
        if self.controller is not None:
            out = self.controller.update(step - 1, window)
            self.last_entropy = out[1]
            if log_now and window is not None:
                reduced = out[2]
        elif window is not None:
            reduced = global_sum_values(window)
        if log_now and reduced is not None:
            self._log(trainer, pl_module, step, reduced)
        if log_now:
            self._window = None
        # (the default cadence on logging steps only: the histogram joins the Trainer's row of the step)
        due = self.media.every != 0 and (log_now or self.media.every is not None) and self._last_per_sample is not None
        if due and media_loggers(trainer) and self.media.due(step, trainer.current_epoch):
            log_histogram(trainer, f"{self.name}/per_sample", self._last_per_sample)
        self._last_per_sample = None

    def _log(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int, reduced: Any) -> None:
        beta = self.beta(step)
        window = reduced if isinstance(reduced, list) else reduced.tolist()  # one host read (the row reads anyway)
        self.nonfinite += window[2]
        metrics: dict[str, float] = {
            f"{self.name}/mean": window[0] / max(window[1], 1.0),
            f"{self.name}/beta": float(beta),
            f"{self.name}/nonfinite": self.nonfinite,
        }
        if self.controller is not None:
            metrics[f"{self.name}/target"] = self.controller.target_at(step)
            if self.controller.band is not None:  # the target is the band's midpoint; log the edges too
                metrics[f"{self.name}/band_low"], metrics[f"{self.name}/band_high"] = self.controller.band
        metrics.update(class_means(self.name, window))
        self.last_metrics = metrics
        log_scalars(trainer, pl_module, metrics, own_interval=self.log_every_n_steps is not None)

    # ------------------------------------------------------------------ checkpointing
    @override
    def state_dict(self) -> dict[str, Any]:
        """The state to checkpoint. The logging window is local to each rank, and a checkpoint is written from one
        rank (or deduplicated): it is saved summed over the data-parallel group (a collective under DDP / FSDP2, as
        ``Trainer.save_checkpoint`` runs it on every rank), and restored on rank 0 only."""
        return {
            "controller": None if self.controller is None else self.controller.state_dict(),
            "last_step": self._last_step,
            "window": None if self._folded_window() is None else global_sum(self._window).cpu(),
            "nonfinite": torch.tensor(self.nonfinite, dtype=torch.float64),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_keys(
            f"EntropyControl `{self.name}`",
            state_dict,
            ("controller", "last_step", "window", "nonfinite"),
            optional=("nonfinite",),  # checkpoints from before the count: 0, and a window without its slot
        )
        if (state_dict.get("controller") is None) != (self.controller is None):
            raise ConfigurationError(
                f"checkpointed EntropyControl `{self.name}` "
                f"{'has' if state_dict.get('controller') is not None else 'has no'} controller state but this "
                f"callback {'has none' if self.controller is None else 'has a controller'}; configure it the same way"
            )
        if self.controller is not None:
            self.controller.load_state_dict(state_dict["controller"])
        self._last_step = int(state_dict["last_step"])
        window = state_dict["window"]
        if window is not None and "nonfinite" not in state_dict:  # [sum, count, ...] -> [sum, count, 0, ...]
            window = upgrade_window(window)
        if window is not None:  # the global window: counted once, on rank 0 (the next reduction adds the others)
            window = rank_zero_share(window)
        self._window = window
        self._pending.clear()
        self.nonfinite = float(state_dict.get("nonfinite", 0.0))

    def __repr__(self) -> str:
        how = repr(self.controller) if self.controller is not None else f"beta={self.schedule!r}"
        return f"EntropyControl(name={self.name!r}, {how})"
