"""Trainer callbacks by name, for recipes (``callbacks: {early_stopping: {monitor: val/loss}}``).

Lightning's own ``EarlyStopping``, ``ModelCheckpoint`` and ``LearningRateMonitor`` are registered here; the
library's callbacks (reweighting, perturbation, entropy control) register themselves in the same registry.

The library's callbacks that plug into a :class:`~lightning_losses.LossesMixin` slot derive from
:class:`MixinCallback`: it checks the module (:func:`require_mixin`), attaches the plug-in in ``setup`` and detaches
it in ``teardown`` (registering the strategy's data-parallel group for the library's reductions in between:
:func:`lightning_losses.distributed.use_strategy`), and builds the checkpoint ``state_key`` once. The slots'
plug-in protocols are in :mod:`lightning_losses.slots`.
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from typing_extensions import override

from lightning_losses import distributed
from lightning_losses._compat import should_update_logs, state_key
from lightning_losses._validation import qualify
from lightning_losses.errors import ConfigurationError
from lightning_losses.registry import Registry
from lightning_losses.slots import Slot
from lightning_losses.strategies import check_strategy, refuse_sharded

__all__ = ["CALLBACKS", "MixinCallback", "build_callbacks", "list_callbacks", "require_mixin", "step_logs_due"]

CALLBACKS: Registry[Any] = Registry("callback")
CALLBACKS.register("early_stopping")(EarlyStopping)
CALLBACKS.register("model_checkpoint", aliases=("checkpoint",))(ModelCheckpoint)
CALLBACKS.register("lr_monitor", aliases=("learning_rate_monitor",))(LearningRateMonitor)


def list_callbacks(filter: Any = None) -> list[str]:
    """Sorted names of the callbacks a recipe can use."""
    return CALLBACKS.list(filter)


def build_callbacks(spec: Any) -> list[Any]:
    """Build callbacks from a recipe section: a mapping ``name -> kwargs`` or a list of ``{name: ..., **kwargs}``."""
    if spec is None:
        return []
    if isinstance(spec, dict):
        items = [(str(name), {"name": name, **(kwargs or {})}) for name, kwargs in spec.items()]
    elif isinstance(spec, list):
        items = [(str(item.get("name", i)) if isinstance(item, dict) else str(i), item) for i, item in enumerate(spec)]
    else:
        items = None
    if items is not None:
        built = []
        for name, item in items:
            try:
                built.append(CALLBACKS.build(item))
            except (ConfigurationError, TypeError, ValueError, MisconfigurationException) as err:
                raise qualify(f"callbacks.{name}", err) from None
        return built
    raise ConfigurationError(f"`callbacks` must be a mapping of callback names to arguments, got {spec!r}")


def require_mixin(callback: Any, pl_module: Any) -> None:
    """Raise a clear error when ``pl_module`` does not use :class:`~lightning_losses.LossesMixin`."""
    from lightning_losses.mixin import LossesMixin

    if not isinstance(pl_module, LossesMixin):
        raise ConfigurationError(
            f"{type(callback).__name__} needs a LightningModule that uses `lightning_losses.LossesMixin` and calls "
            f"`compute_loss`; `{type(pl_module).__name__}` does not (add `ll.LossesMixin` first in its bases)"
        )


def step_logs_due(trainer: Any) -> bool:
    """Whether the Trainer writes its step logs after this training batch (``Trainer(log_every_n_steps=...)``).

    Valid in ``on_train_batch_start`` and ``on_train_batch_end``. A value given to
    ``LightningModule.log(on_step=True)`` on another step reaches no logger (the next logging step overwrites it),
    while each ``log`` call costs a fraction of a millisecond: the library's callbacks log their step statistics only
    when this is ``True`` (as Lightning's ``LearningRateMonitor`` does).
    """
    return should_update_logs(trainer)


class MixinCallback(Callback):
    """Base of the callbacks that plug into a :class:`~lightning_losses.LossesMixin` slot.

    A subclass sets :attr:`slot` and implements :meth:`state_key_fields`; it may override :meth:`slot_plugin` (what
    is attached; default: the callback itself, which then follows the slot's protocol in
    :mod:`lightning_losses.slots`) and :meth:`check_module` (validation before attaching). ``setup`` raises a
    :class:`~lightning_losses.errors.ConfigurationError` for a module without the mixin or a strategy the library does
    not support (:func:`lightning_losses.strategies.check_strategy`; also FSDP2 with :attr:`whole_parameters`), runs
    :meth:`check_module` and attaches the plug-in; ``teardown`` detaches it. A subclass that extends either calls
    ``super()``.
    """

    #: the mixin slot this callback plugs into
    slot: ClassVar[Slot]
    #: why the callback needs whole (unsharded) parameters on every rank, or ``None``: with a reason, ``setup`` refuses
    #: ``ModelParallelStrategy`` (:func:`~lightning_losses.strategies.refuse_sharded`; by the strategy, as ``setup``
    #: runs before ``configure_model`` shards the parameters)
    whole_parameters: ClassVar[str | None] = None

    def state_key_fields(self) -> dict[str, Any]:
        """The fields of :attr:`state_key`, in order (they must stay stable: checkpoints are keyed by them)."""
        raise NotImplementedError(f"{type(self).__name__} must define `state_key_fields`")

    @functools.cached_property
    @override
    def state_key(self) -> str:  # cached: Lightning reads it for every callback hook it calls
        return state_key(self, **self.state_key_fields())

    def slot_plugin(self, pl_module: Any) -> Any:
        """The object attached to :attr:`slot` of ``pl_module`` (default: this callback)."""
        return self

    def check_module(self, pl_module: Any) -> None:
        """Validate ``pl_module`` (a ``LossesMixin``) before the plug-in is attached; raise ``ConfigurationError``."""

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        require_mixin(self, pl_module)
        self.check_module(pl_module)
        if trainer is not None:  # reductions go over the strategy's data-parallel group (not the world under 2-D)
            check_strategy(trainer.strategy, type(self).__name__)  # DeepSpeed, FSDP1, unknown strategies: refused
            if self.whole_parameters is not None:
                refuse_sharded(trainer.strategy, type(self).__name__, self.whole_parameters)
            distributed.use_strategy(trainer.strategy)
        pl_module.attach(self.slot, self.slot_plugin(pl_module))

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        distributed.set_data_parallel_group(None)
        if hasattr(pl_module, "detach"):
            pl_module.detach(self.slot, self.slot_plugin(pl_module))
