"""Module extra state (``get_extra_state``: MAT's held-out table, the ranking losses' state) through full FSDP2
checkpoints.

Lightning's ``ModelParallelStrategy`` loads a full (single-file) checkpoint parameter by parameter and buffer by buffer
(``lightning.fabric.strategies.model_parallel._load_raw_module_state``): the ``<module>._extra_state`` entries of the
file are dropped without a word, so a resumed MAT loss would train on an empty table. Under that strategy the
:class:`~lightning_losses.LossesMixin` writes every extra state a second time, under :data:`KEY` of the checkpoint
(rank 0's copy in a full checkpoint, the metadata file of a distributed one), and sets it back in
``on_load_checkpoint``, after the strategy has loaded the weights. A distributed checkpoint loads the extra state in
place into the current module's tensors, so a table that grows on demand must be given its size (MAT's
``num_samples``) to be resumed from one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import nn

__all__ = ["KEY", "load_extra_states", "save_extra_states"]

#: the checkpoint entry holding ``{module name: extra state}``
KEY = "lightning_losses_extra_state"


def _owners(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    for name, sub in module.named_modules():
        if type(sub).get_extra_state is not nn.Module.get_extra_state:
            yield name, sub


def save_extra_states(module: nn.Module, checkpoint: dict[str, Any], strategy: Any) -> None:
    """Put every submodule's extra state under :data:`KEY` of ``checkpoint`` when ``strategy`` is a
    ``ModelParallelStrategy`` (whose full-checkpoint loading drops it); nothing otherwise."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    if not isinstance(strategy, ModelParallelStrategy):
        return
    states = {name: sub.get_extra_state() for name, sub in _owners(module)}
    if states:
        checkpoint[KEY] = states


def load_extra_states(module: nn.Module, checkpoint: dict[str, Any]) -> None:
    """Set back the extra states saved by :func:`save_extra_states` (no-op for a checkpoint without them).

    Raises:
        ValueError: a saved extra state belongs to a submodule ``module`` does not have (another model).
    """
    states = checkpoint.get(KEY)
    if not states:
        return
    owners = dict(_owners(module))
    missing = sorted(set(states) - set(owners))
    if missing:
        raise ValueError(
            f"the checkpoint holds the extra state of the submodules {missing}, which the model does not have (its "
            f"submodules with extra state: {sorted(owners)})"
        )
    for name, state in states.items():
        owners[name].set_extra_state(state)
