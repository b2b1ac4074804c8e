"""Declared, checkpointed state of a :class:`~lightning_losses.reweighting.Reweighter` (its base): ``add_state`` /
``add_store``, the staged update at the optimizer step, ``reset`` and the ``state_dict`` round trip."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from lightning_losses._validation import check_state_keys
from lightning_losses.reweighting.guards import Undoable

__all__ = ["DeclaredState", "StateSpec"]

_MERGE = ("sum", "max", "min")


@dataclass
class StateSpec:
    """A declared state: its default value and the reduction merging synced statistics into it (or ``None``)."""

    default: torch.Tensor
    reduction: str | None


class DeclaredState(Undoable):
    """State declarations and their checkpoint round trip (the :class:`~lightning_losses.reweighting.Reweighter`
    constructor creates the containers and the ``step`` / ``epoch`` / ``nonfinite`` states)."""

    statistics: dict[str, str]
    step: torch.Tensor
    epoch: torch.Tensor

    def add_state(self, name: str, default: torch.Tensor, reduction: str | None = None) -> None:
        """Declare a checkpointed state tensor.

        Args:
            name: attribute name.
            default: initial value (cloned; :meth:`reset` restores it).
            reduction: ``None`` for a state that :meth:`compute` sets from synced values, or ``"sum"`` / ``"max"`` /
                ``"min"`` for an accumulator: after the sync point the synced statistic of the same name is merged
                into it (``state += s``, ``max(state, s)``, ``min(state, s)``).
        """
        if reduction is not None and reduction not in _MERGE:
            raise ValueError(f"`reduction` of state `{name}` must be None or one of {_MERGE}, got {reduction!r}")
        if reduction is not None and name not in self.statistics:
            self.statistics[name] = reduction
        self._states[name] = StateSpec(default.detach().clone(), reduction)
        setattr(self, name, default.detach().clone())

    def stage(self, **values: torch.Tensor) -> None:
        """Set states at the next :meth:`commit` (the end of the optimizer step), not now."""
        self._staged.update(values)

    def commit(self) -> None:
        """End of an optimizer step: apply the :meth:`stage` d states and count the step."""
        for name, value in self._staged.items():
            setattr(self, name, value)
        self._staged = {}
        self.step = self.step + 1

    def add_store(self, name: str, store: Any) -> None:
        """Register a :class:`~lightning_losses.reweighting.store.PerSampleStore` (checkpointed as ``name.*``)."""
        self._stores[name] = store
        setattr(self, name, store)

    def set_epoch(self, epoch: int) -> None:
        """Tell the reweighter the current epoch (the callback calls this at every training epoch start)."""
        self.epoch = torch.as_tensor(int(epoch), dtype=torch.int64, device=self.epoch.device)

    def reset(self) -> None:
        """Restore every state to its default."""
        for name, spec in self._states.items():
            setattr(self, name, spec.default.clone())
        for store in self._stores.values():
            store.reset()
        self._staged = {}

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every state tensor (CPU copies), stores included as ``store_name.field``."""
        out = {name: getattr(self, name).detach().cpu().clone() for name in self._states}
        for prefix, store in self._stores.items():
            out.update({f"{prefix}.{k}": v for k, v in store.state_dict().items()})
        return out

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restore from :meth:`state_dict` (unknown or missing keys raise ``KeyError`` naming them; a checkpoint from
        before the ``nonfinite`` count loads with the count at 0)."""
        check_state_keys(type(self).__name__, state, self.state_dict(), optional=("nonfinite",))
        device = self.step.device
        for name, spec in self._states.items():
            value = state[name] if name in state else spec.default
            setattr(self, name, torch.as_tensor(value).detach().clone().to(device))
        for prefix, store in self._stores.items():
            store.load_state_dict({k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")})
        self._staged = {}

    def _to(self, device: torch.device) -> None:
        if self.step.device != device:
            for name in self._states:
                setattr(self, name, getattr(self, name).to(device))
            for store in self._stores.values():
                store.to(device)
            if self._unsynced_nonfinite is not None:
                self._unsynced_nonfinite = self._unsynced_nonfinite.to(device)
