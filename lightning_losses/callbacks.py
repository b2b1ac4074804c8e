"""Trainer callbacks by name, for recipes (``callbacks: {early_stopping: {monitor: val/loss}}``).

Lightning's own ``EarlyStopping``, ``ModelCheckpoint`` and ``LearningRateMonitor`` are registered here; the
library's callbacks (reweighting, perturbation, entropy control) register themselves in the same registry.
A library callback that needs :class:`~lightning_losses.LossesMixin` calls :func:`require_mixin` in ``setup``.
"""

from __future__ import annotations

from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

from lightning_losses._compat import should_update_logs
from lightning_losses._validation import qualify
from lightning_losses.errors import ConfigurationError
from lightning_losses.registry import Registry

__all__ = ["CALLBACKS", "build_callbacks", "list_callbacks", "require_mixin", "step_logs_due"]

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
