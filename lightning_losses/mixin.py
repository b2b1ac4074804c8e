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
its ``setup`` through :meth:`LossesMixin.attach`):

* ``"reweighter"``: ``reweighter(losses=[N], sample_mask=[N] | None, **tensors) -> [N]`` weights, training only;
* ``"terms"``: objects with ``extra_terms(module, tensors, step) -> {name: [N]}`` (entropy controls), training only;
* ``"step"``: an object with ``wrap_closure(module, optimizer, closure) -> closure`` (weight perturbation); the mixin
  overrides :meth:`optimizer_step` to apply it, so Lightning's automatic optimization is kept.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_losses.errors import ConfigurationError
from lightning_losses.objective import Objective, ObjectiveOutput

__all__ = ["LossesMixin"]

_SLOTS = ("reweighter", "terms", "step")
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

    def configure_objective(self, spec: Any) -> Objective:
        """Set the objective from a mapping, a YAML path, a ``DictConfig`` or an :class:`Objective`."""
        self.objective = spec if isinstance(spec, Objective) else Objective(spec)
        return self.objective

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
            ConfigurationError: unknown slot, or a second reweighter / step wrapper.
        """
        if slot not in _SLOTS:
            raise ConfigurationError(f"`slot` must be one of {', '.join(map(repr, _SLOTS))}, got {slot!r}")
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

    # ------------------------------------------------------------------ loss
    def compute_loss(self, **tensors: Any) -> torch.Tensor:
        """Evaluate the objective on named tensors and return the scalar loss to backpropagate.

        Keeps the per-sample losses and weights in :attr:`objective_output` (on the single-term path of one process,
        evaluated when first read: see :class:`~lightning_losses.objective.ObjectiveOutput`) and logs
        ``{stage}/loss`` and ``{stage}/{term}`` (global values: identical on every rank, no extra sync). Reweighting
        and extra terms apply in training only.

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
        # the step (a chain of Lightning properties) only when a schedule or a plug-in reads it
        step = int(self.global_step) if attached and (extra_plugins or objective._plan()[1]) else 0
        extra: dict[str, torch.Tensor] = {}
        for plugin in extra_plugins:
            extra.update(plugin.extra_terms(self, tensors, step))
        # `forward` directly: an Objective has no hooks to run, and `nn.Module.__call__` costs two frames per step
        out = objective.forward(
            tensors, step=step, reweighter=plugins["reweighter"] if training else None, extra_terms=extra
        )
        self.__dict__["objective_output"] = out  # plain attribute: skip nn.Module.__setattr__ on the hot path
        # Lightning allows no logging in predict
        if attached and stage != "predict" and not self.objective_logging_suppressed:
            options = {"on_step": training, "on_epoch": not training, "batch_size": out.size or 1}
            if len(out.terms) == 1 and next(iter(out.terms.values())) is out.value:  # the term is the loss: log it once
                self.log(_LOSS_KEYS[stage], out.value, sync_dist=False, **options)
            else:
                metrics = {_LOSS_KEYS[stage]: out.value, **{f"{stage}/{k}": v for k, v in out.terms.items()}}
                self.log_dict(metrics, sync_dist=False, **options)
        return out.loss

    # ------------------------------------------------------------------ optimizer step
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        """Lightning's ``optimizer_step``, with the closure wrapped by an attached ``"step"`` plug-in (if any)."""
        plugins = self.__dict__.get("_ll_plugin_slots")
        wrapper = plugins["step"] if plugins is not None else None
        if wrapper is not None and optimizer_closure is not None:
            optimizer_closure = wrapper.wrap_closure(self, optimizer, optimizer_closure)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # type: ignore[misc]
