"""``LossesMixin``: adds a configurable objective to any ``LightningModule``.

Usage::

    class Classifier(ll.LossesMixin, L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = ...
            self.configure_objective({"focal": {"gamma": 2.0}})

        def training_step(self, batch, batch_idx):
            return self.compute_loss(logits=self.net(batch["x"]), target=batch["target"], index=batch["index"])

Plug-in points (used by the callbacks of :mod:`lightning_losses.callbacks` and later components; each registers in
its ``setup`` through :meth:`LossesMixin.attach`, see :class:`~lightning_losses.callbacks.MixinCallback`). Their
protocols are declared in :mod:`lightning_losses.slots` (:class:`~lightning_losses.slots.ReweighterPlugin`,
:class:`~lightning_losses.slots.TermsPlugin`, :class:`~lightning_losses.slots.StepPlugin`):

* ``"reweighter"``: ``reweighter(losses=[N], sample_mask=[N] | None, **tensors) -> [N]`` weights, training only;
* ``"terms"``: objects with ``extra_terms(module, tensors, step) -> {name: [N]}`` (entropy controls), training only;
* ``"step"``: an object with ``wrap_closure(module, optimizer, closure) -> closure`` (weight perturbation); the mixin
  overrides :meth:`optimizer_step` to apply it, so Lightning's automatic optimization is kept.

A plug-in whose hook is not in effect fails loudly instead of silently doing nothing: :meth:`attach` refuses a
``"step"`` plug-in when a Lightning class's ``optimizer_step`` comes before the mixin's in the method resolution
order (the mixin is not first in the bases), and with a ``"reweighter"`` or ``"terms"`` plug-in attached the first
optimizer step whose ``training_step`` returned a loss without any ``compute_loss`` call raises (checked until one
step passes). An ``optimizer_step`` override that does not call the mixin's is caught by the ``"step"`` plug-in
itself (:class:`~lightning_losses.perturbation.WeightPerturbation` checks that its wrapped closure ran).
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_losses import distributed
from lightning_losses._accumulation import GlobalTermProbe
from lightning_losses._compat import log_on_step
from lightning_losses._extra_state import load_extra_states, save_extra_states
from lightning_losses._objective_logging import load_nonfinite_counts, log_objective_diagnostics, save_nonfinite_counts
from lightning_losses.errors import ConfigurationError
from lightning_losses.objective import Objective, ObjectiveOutput

__all__ = ["LossesMixin"]

_SLOTS = ("reweighter", "terms", "step")
_LIGHTNING_PACKAGES = ("lightning", "pytorch_lightning")
_STAGES = {"train": "train", "validate": "val", "sanity_check": "val", "test": "test", "predict": "predict"}
_LOSS_KEYS = {stage: f"{stage}/loss" for stage in _STAGES.values()}


class LossesMixin:
    """Mixin for ``lightning.LightningModule`` (put it first in the bases).

    Attributes:
        objective: the :class:`~lightning_losses.objective.Objective` set by :meth:`configure_objective`.
        objective_output: the last :class:`~lightning_losses.objective.ObjectiveOutput` (per-sample losses, weights).
    """

    objective: Objective
    objective_output: ObjectiveOutput | None = None
    #: when True, :meth:`compute_loss` neither logs nor runs plug-ins' side effects (set during perturbed passes).
    objective_logging_suppressed: bool = False
    #: suppressed (perturbed) passes so far; a plug-in that replays the step's per-call state tells passes apart by it.
    objective_suppressed_passes: int = 0
    #: ``objective/coef/*``, ``objective/nonfinite[/*]`` in training (False: none; ``train/*`` is logged either way)
    objective_statistics: bool = True

    def configure_objective(self, spec: Any) -> Objective:
        """Set the objective from a mapping, a YAML path, a ``DictConfig`` or an :class:`Objective`.

        The objective becomes the submodule ``self.objective``: losses with parameters of their own (the class proxies
        of ``arcface``, ``cosface``, ``sub_center_arcface``, ``proxy_anchor``) are then in ``self.parameters()``, so the
        optimizer of ``configure_optimizers`` trains them, checkpoints save them and DDP keeps them in sync. Call it
        in ``__init__`` after ``super().__init__()``.
        """
        self.objective = spec if isinstance(spec, Objective) else Objective(spec)
        return self.objective

    # ------------------------------------------------------------------ fit lifecycle
    def setup(self, stage: str) -> None:
        """Register the strategy's data-parallel group (:func:`lightning_losses.distributed.use_strategy`: the
        ``data_parallel`` dimension of a ``ModelParallelStrategy`` mesh, the world otherwise), over which the
        objective's global normalisation reduces, then run the next class's ``setup``. The library's callbacks
        register it too; this covers a fit without any. An override of ``setup`` calls ``super().setup(stage)``."""
        trainer = self.__dict__.get("_trainer")
        if trainer is not None:
            distributed.use_strategy(trainer.strategy)
            # the fit's first training call looks for batch-level terms (`_accumulation`)
            self.__dict__["_ll_accumulation_check"] = stage == "fit" and trainer.accumulate_grad_batches > 1
        self._ll_next_hook("setup", stage)

    def teardown(self, stage: str) -> None:
        """Drop the data-parallel group registered by :meth:`setup`, then run the next class's ``teardown``."""
        distributed.set_data_parallel_group(None)
        self._ll_next_hook("teardown", stage)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the interval's non-finite counts; under FSDP2 also the submodules' extra state apart
        (:mod:`lightning_losses._extra_state`); then run the next class's hook."""
        trainer = self.__dict__.get("_trainer")
        if trainer is not None:
            save_extra_states(self, checkpoint, trainer.strategy)
        save_nonfinite_counts(self, checkpoint)
        self._ll_next_hook("on_save_checkpoint", checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Set back what :meth:`on_save_checkpoint` saved apart, then run the next class's hook."""
        load_extra_states(self, checkpoint)
        load_nonfinite_counts(self, checkpoint)
        self._ll_next_hook("on_load_checkpoint", checkpoint)

    def _ll_next_hook(self, name: str, *args: Any) -> None:
        """The next class's hook ``name`` in the MRO, if it has one (cooperative ``super()`` for the mixin's hooks)."""
        parent = getattr(super(), name, None)
        if parent is not None:
            parent(*args)

    # ------------------------------------------------------------------ plug-ins
    def _ll_plugins(self) -> dict[str, Any]:
        plugins = self.__dict__.get("_ll_plugin_slots")
        if plugins is None:
            plugins = {"reweighter": None, "terms": [], "step": None}
            self.__dict__["_ll_plugin_slots"] = plugins
        return plugins

    def attach(self, slot: str, plugin: Any) -> None:
        """Attach a plug-in to ``slot`` (one of ``"reweighter"``, ``"terms"``, ``"step"``).

        Raises:
            ConfigurationError: unknown slot, a second reweighter / step wrapper, or a ``"step"`` plug-in while a
                Lightning class's ``optimizer_step`` hides the mixin's (the mixin is not first in the bases).
        """
        if slot not in _SLOTS:
            raise ConfigurationError(f"`slot` must be one of {', '.join(map(repr, _SLOTS))}, got {slot!r}")
        if slot == "step":
            _check_optimizer_step(type(self), plugin)
        else:  # these plug-ins act inside compute_loss: checked at the first optimizer step (see optimizer_step)
            self.__dict__["_ll_check_loss"] = True
            self.__dict__["_ll_loss_seen"] = False
        plugins = self._ll_plugins()
        if slot == "terms":
            if plugin not in plugins["terms"]:
                plugins["terms"].append(plugin)
            return
        if plugins[slot] is not None and plugins[slot] is not plugin:
            raise ConfigurationError(f"a {slot} plug-in is already attached ({plugins[slot]!r}); only one is allowed")
        plugins[slot] = plugin

    def detach(self, slot: str, plugin: Any) -> None:
        """Remove a plug-in previously attached with :meth:`attach`."""
        plugins = self._ll_plugins()
        if slot == "terms":
            if plugin in plugins["terms"]:
                plugins["terms"].remove(plugin)
        elif plugins.get(slot) is plugin:
            plugins[slot] = None
        if plugins["reweighter"] is None and not plugins["terms"]:
            self.__dict__["_ll_check_loss"] = False

    # ------------------------------------------------------------------ loss
    def compute_loss(self, **tensors: Any) -> torch.Tensor:
        """Evaluate the objective on named tensors and return the scalar loss to backpropagate.

        Keeps the per-sample losses and weights in :attr:`objective_output` and logs ``{stage}/loss`` and
        ``{stage}/{term}`` (global values: identical on every rank, no extra sync); in training also, on the Trainer's
        logging steps, ``objective/coef/{term}`` and ``objective/nonfinite``
        (:mod:`lightning_losses._objective_logging`). Reweighting and extra terms apply in training only.

        Raises:
            ConfigurationError: :meth:`configure_objective` was never called.
            ValueError / TypeError: a missing input or a tensor of the wrong shape or dtype.
        """
        state = self.__dict__
        modules = state.get("_modules") or {}
        objective = modules.get("objective") or getattr(self, "objective", None)  # a dict lookup on the hot path
        if not isinstance(objective, Objective):
            raise ConfigurationError(
                f"{type(self).__name__}.compute_loss called before configure_objective(...); call it in __init__"
            )
        trainer = state.get("_trainer")
        attached = trainer is not None
        running = trainer.state.stage if attached else None
        # by the member's raw value: hashing Lightning's str enums runs Python code (`value.lower()`)
        stage = "train" if running is None else _STAGES.get(running._value_, "train")
        training = stage == "train"
        plugins = state.get("_ll_plugin_slots") or self._ll_plugins()
        extra_plugins = plugins["terms"] if training else ()
        if training and state.get("_ll_check_loss"):
            state["_ll_loss_seen"] = True
        # the step (a chain of Lightning properties) only when a schedule or a plug-in reads it
        step = int(self.global_step) if attached and (extra_plugins or objective.uses_step) else 0
        extra: dict[str, torch.Tensor] = {}
        for plugin in extra_plugins:
            extra.update(plugin.extra_terms(self, tensors, step))
        probe = None
        if training and state.get("_ll_accumulation_check"):
            state["_ll_accumulation_check"] = False
            probe = GlobalTermProbe(objective)
        # `forward` directly: an Objective has no hooks to run, and `nn.Module.__call__` costs two frames per step
        try:
            out = objective.forward(
                tensors, step=step, reweighter=plugins["reweighter"] if training else None, extra_terms=extra
            )
        finally:
            if probe is not None:
                probe.report(trainer.accumulate_grad_batches)
        self.__dict__["objective_output"] = out  # plain attribute: skip nn.Module.__setattr__ on the hot path
        # Lightning allows no logging in predict
        if attached and stage != "predict" and not self.objective_logging_suppressed:
            muted = state.get("_ll_sync_warning_muted")
            if not training and (muted is None or stage not in muted):
                _mute_sync_dist_warning([_LOSS_KEYS[stage], *(f"{stage}/{k}" for k in out.terms)])
                state["_ll_sync_warning_muted"] = {stage, *(muted or ())}
            if len(out.terms) == 1 and next(iter(out.terms.values())) is out.value:  # the term is the loss: log it once
                metrics = {_LOSS_KEYS[stage]: out.value}
            else:
                metrics = {_LOSS_KEYS[stage]: out.value, **{f"{stage}/{k}": v for k, v in out.terms.items()}}
            if training:
                log_on_step(self, trainer, metrics, out.size or 1)  # `self.log(on_step=True)`, its repeat calls cheap
                if self.objective_statistics:
                    log_objective_diagnostics(self, trainer, out)
            else:
                self.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=False, batch_size=out.size or 1)
        return out.loss

    # ------------------------------------------------------------------ optimizer step
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's ``optimizer_step``, with the closure wrapped by an attached ``"step"`` plug-in (if any).

        Raises:
            ConfigurationError: ``"reweighter"`` / ``"terms"`` plug-ins are attached but the step's ``training_step``
                returned a loss without calling :meth:`compute_loss` (raised before the optimizer updates anything).
        """
        state = self.__dict__
        plugins = state.get("_ll_plugin_slots")
        wrapper = plugins["step"] if plugins is not None else None
        if wrapper is not None and optimizer_closure is not None:
            optimizer_closure = wrapper.wrap_closure(self, optimizer, optimizer_closure)
        if state.get("_ll_check_loss") and optimizer_closure is not None:
            optimizer_closure = _loss_checked(self, optimizer_closure)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # type: ignore[misc]


def _mute_sync_dist_warning(names: list[str]) -> None:
    """Silence Lightning's "It is recommended to use `self.log(name, ..., sync_dist=True)`" for these exact names.

    The mixin's epoch-level values are global already (every rank computes the same value from all-reduced sums),
    so syncing them again would cost collectives and change nothing; Lightning cannot know that and warns at every
    evaluation epoch end under DDP. Only these names are silenced (a user's own unsynced logs still warn); called in
    each process (the first evaluation step there), since spawned ranks do not inherit the parent's filters.
    """
    import re
    import warnings

    for name in names:
        warnings.filterwarnings("ignore", message=re.escape(f"It is recommended to use `self.log({name!r}, ..., "))


def _check_optimizer_step(cls: type, plugin: Any) -> None:
    """Raise when a Lightning class's ``optimizer_step`` (which never calls ``super()``) comes before
    ``LossesMixin.optimizer_step`` in ``cls``'s method resolution order. A user's own override in between may call
    ``super()``: the ``"step"`` plug-in checks at run time that its closure ran."""
    for klass in cls.__mro__:
        if klass is LossesMixin:
            return
        if "optimizer_step" in vars(klass) and klass.__module__.split(".")[0] in _LIGHTNING_PACKAGES:
            bases = ", ".join(b.__name__ for b in cls.__bases__)
            raise ConfigurationError(
                f"{type(plugin).__name__} cannot run: in `{cls.__name__}({bases})` the `optimizer_step` of "
                f"`{klass.__name__}` comes before `LossesMixin.optimizer_step` in the method resolution order, so the "
                f"closure is never wrapped; put `LossesMixin` first in the bases: "
                f"`class {cls.__name__}(ll.LossesMixin, L.LightningModule)`"
            )


def _loss_checked(module: LossesMixin, closure: Any) -> Any:
    """``closure`` that raises if it returned a loss while no training ``compute_loss`` call ever ran; the check stops
    after the first step that passes it."""
    state = module.__dict__

    def checked() -> Any:
        loss = closure()
        if loss is not None:
            if not state.get("_ll_loss_seen"):
                plugins = state.get("_ll_plugin_slots") or {}
                attached = [plugins.get("reweighter")] + list(plugins.get("terms") or ())
                names = ", ".join(getattr(p, "plugin_name", type(p).__name__) for p in attached if p is not None)
                cls = type(module).__name__
                raise ConfigurationError(
                    f"{names} did not run: `{cls}.training_step` returned a loss without calling "
                    f"`self.compute_loss(...)`, where reweighting and extra objective terms apply; compute the "
                    f"training loss with `compute_loss` (e.g. `return self.compute_loss(logits=..., target=...)`)"
                )
            state["_ll_check_loss"] = False
        return loss

    return checked
