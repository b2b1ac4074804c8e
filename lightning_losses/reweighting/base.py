"""The :class:`Reweighter` base: declared state, one sync point per step, ``state_dict`` round-trip.

A step (``weights = reweighter(losses=..., sample_mask=..., **tensors)``) runs in four fixed phases::

    local = self.local_statistics(losses, inputs)          # this rank's statistics (no collective)
    synced, offset = sync_statistics(local, self.statistics) # THE sync point (see lightning_losses.sync)
    merge synced values into accumulated states               # add_state(..., reduction="sum" / "max" / "min")
    weights = self.compute(losses, synced, inputs)           # pure function of synced values and state

Every state change happens after the sync point and only from synced values, so the state is identical on every
rank, and DDP on k ranks equals one process on the concatenated batch. A new strategy is a short subclass: declare
its statistics and states in ``__init__``, implement ``local_statistics`` and ``compute``.

**Masked samples.** ``sample_mask`` (boolean ``[N]``, from the objective: ``False`` where the target is
``ignore_index``) reaches the hooks as ``inputs["sample_mask"]``; when a strategy has ``"cat"`` statistics the mask
is gathered with them (``synced["sample_mask"]``). Strategies leave masked samples out of every statistic (sums,
counts, min / max, softmax and sorted-loss normalisation, per-sample stores), and the base returns weight 0 for them:
a masked sample changes nothing, exactly as if it were not in the batch. No host sync is added.

**Optimizer steps.** A strategy whose state moves every step (Group DRO's ``q``, the class EMA) computes the new
state from the statistics accumulated since the last optimizer step and :meth:`stage` s it; :meth:`commit` applies
it and counts the step. Standalone, every call commits (one call = one step). With ``accumulating = True`` (set
by :class:`~lightning_losses.reweighting.SampleReweighting`, which commits in ``on_before_optimizer_step``) the
micro-batches of one optimizer step accumulate their synced statistics and the state is updated once: ``K``
micro-batches of ``B`` give the state of one batch of ``K*B``; micro-batch ``m`` is weighted with the state updated
from micro-batches ``1..m`` (the last one with exactly the step's final state).

**Non-finite values, ids, skipped steps** (see :mod:`~lightning_losses.reweighting.guards`): a NaN / inf loss is
handled as a masked sample and counted in ``nonfinite``; group / class ids are range-checked on every rank alike;
:meth:`snapshot` / :meth:`restore` undo a micro-batch whose ``training_step`` returned ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from lightning_losses._validation import check_state_keys
from lightning_losses.distributed import is_distributed
from lightning_losses.registry import Registry
from lightning_losses.reweighting.guards import (
    ID_KEYS,
    Undoable,
    check_id_range,
    check_inputs,
    check_mask,
    id_range,
    nonfinite_mask,
)
from lightning_losses.sync import sync_statistics

__all__ = ["REWEIGHTERS", "Reweighter", "build_reweighter", "list_reweighters"]

REWEIGHTERS: Registry[type[Reweighter]] = Registry("reweighter")
_MERGE = ("sum", "max", "min")


@dataclass
class _State:
    default: torch.Tensor
    reduction: str | None


class Reweighter(Undoable):
    """Base class of every sample reweighter.

    Class attributes:
        requires: input names that must be passed to ``compute_loss`` (``"group"``, ``"index"``, ...); a strategy may
            set it per instance when what it needs depends on its arguments.

    Attributes:
        statistics: ``name -> reduction`` (one of ``"sum"``, ``"mean"``, ``"max"``, ``"min"``, ``"cat"``) of the
            per-step statistics returned by :meth:`local_statistics`; every rank must return the same names.
        local_slice: this rank's slice of the global (``"cat"``) batch in the current step.
        last: detached tensors of the last step, for logging (``weights``, ``losses`` and the inputs).
        hparams: the validated constructor arguments (shown by ``repr``).
    """

    requires: tuple[str, ...] = ()
    strategy: ClassVar[str] = ""
    #: ``input name -> text`` appended to the missing-input error (e.g. an alternative to passing it)
    missing_hints: ClassVar[dict[str, str]] = {}
    #: per-sample float inputs besides ``losses`` whose non-finite values exclude the sample (e.g. WPO's log-weights)
    finite_inputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._states: dict[str, _State] = {}
        self._stores: dict[str, Any] = {}
        self.hparams: dict[str, Any] = {}
        self.statistics: dict[str, str] = {}
        self.local_slice = slice(0, 0)
        self.last: dict[str, torch.Tensor] = {}
        #: accumulate over calls until :meth:`commit` (set by the callback); False: every call commits
        self.accumulating = False
        self._staged: dict[str, torch.Tensor] = {}
        self.add_state("step", torch.zeros((), dtype=torch.int64))
        self.add_state("epoch", torch.zeros((), dtype=torch.int64))
        #: samples left out because a value was NaN / inf (summed over ranks: identical on every rank)
        self.add_state("nonfinite", torch.zeros((), dtype=torch.int64))
        self._unsynced_nonfinite = torch.zeros((), dtype=torch.int64)  # steps that synced nothing (DDP only)

    # ------------------------------------------------------------------ declarations
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
        self._states[name] = _State(default.detach().clone(), reduction)
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

    def size_stores(self, num_samples: int) -> None:
        """Give every per-sample store that grows on demand a fixed size (``num_samples``, the dataset length):
        no host sync per step from then on. Stores built with an explicit ``num_samples`` keep theirs."""
        for store in self._stores.values():
            if not store.fixed:
                store.set_size(num_samples)

    def size_groups(self, num_groups: int) -> None:
        """Tell a group-aware strategy the number of groups of the training data (the callback calls this when the
        datamodule has a ``num_groups``), so that it is not taken from the first global batch, which may miss a
        group. A no-op for strategies without groups, and for ones built with an explicit number."""

    def unsized(self) -> str | None:
        """The argument that must be set before training (its value cannot be taken from the data safely), or
        ``None``. :class:`~lightning_losses.reweighting.SampleReweighting` raises naming it at the start of
        training."""
        return None

    def id_sizes(self, inputs: Mapping[str, Any]) -> dict[str, tuple[str, int | None]]:
        """``input name -> (argument, size)`` of the integer ids this strategy indexes tables with in this step
        (``size`` ``None``: not known yet, only the sign is checked). Called after :meth:`local_statistics`."""
        return {}

    def add_store(self, name: str, store: Any) -> None:
        """Register a :class:`~lightning_losses.reweighting.store.PerSampleStore` (checkpointed as ``name.*``)."""
        self._stores[name] = store
        setattr(self, name, store)

    # ------------------------------------------------------------------ state
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
            self._unsynced_nonfinite = self._unsynced_nonfinite.to(device)

    # ------------------------------------------------------------------ step
    @staticmethod
    def masked_ids(ids: torch.Tensor, inputs: Mapping[str, Any]) -> torch.Tensor:
        """``ids`` (group / class ids) with masked samples set to 0, safe to index with (their weight is 0)."""
        mask = inputs.get("sample_mask")
        return ids if mask is None else ids.masked_fill(~mask, 0)

    @torch.no_grad()
    def __call__(self, losses: torch.Tensor, sample_mask: torch.Tensor | None = None, **inputs: Any) -> torch.Tensor:
        """One step: ``[N]`` detached losses (plus named inputs) -> ``[N]`` weights; advances the state.

        ``sample_mask``: optional boolean ``[N]``; ``False`` samples take no part in any statistic and get weight 0.
        Samples with a non-finite loss are handled as masked and counted in ``nonfinite``.
        """
        check_inputs(self, losses, inputs)
        mask = check_mask(sample_mask, losses)
        self._to(losses.device)
        mask, bad, losses = nonfinite_mask(losses.detach(), inputs, self.finite_inputs, mask)
        inputs = {**inputs, "sample_mask": mask}
        for key in ID_KEYS:  # ids index tables: int64 (bool groups become 0 / 1; narrow ids would wrap or fail)
            value = inputs.get(key)
            if isinstance(value, torch.Tensor) and value.dtype != torch.int64 and not value.is_floating_point():
                inputs[key] = value.long()
        local = dict(self.local_statistics(losses, inputs))
        reductions: dict[str, str] = dict(self.statistics)
        ids = self.id_sizes(inputs)
        synced_step = bool(local) or not is_distributed()  # whether this step reduces anything over ranks
        if synced_step:  # piggy-back on the packed buffer: no extra collective
            local["_nonfinite"], reductions["_nonfinite"] = bad + self._unsynced_nonfinite, "sum"
            for key in ids:
                local[f"_ids_{key}"], reductions[f"_ids_{key}"] = id_range(inputs[key], mask), "max"
        else:  # nothing to reduce in this step: count now, sum over ranks at the next step that syncs
            self._unsynced_nonfinite = self._unsynced_nonfinite + bad
            for key, (arg, size) in ids.items():
                check_id_range(self.strategy, key, arg, size, id_range(inputs[key], mask))
        if any(r == "cat" for k, r in reductions.items() if k in local):
            local["sample_mask"], reductions["sample_mask"] = mask, "cat"
        synced, offset = sync_statistics(local, reductions)
        if synced_step:
            for key, (arg, size) in ids.items():  # synced extremes: the same decision on every rank
                check_id_range(self.strategy, key, arg, size, synced.pop(f"_ids_{key}"))
            self.nonfinite = self.nonfinite + synced.pop("_nonfinite").to(torch.int64)
            self._unsynced_nonfinite = torch.zeros_like(self._unsynced_nonfinite)
        self.local_slice = slice(offset, offset + losses.numel())
        for name, spec in self._states.items():
            if spec.reduction is not None and name in synced:
                current = getattr(self, name)
                value = synced[name].to(current.dtype)
                if spec.reduction == "sum":
                    merged = current + value
                else:
                    merged = torch.maximum(current, value) if spec.reduction == "max" else torch.minimum(current, value)
                setattr(self, name, merged)
        weights = self.compute(losses, synced, inputs)
        weights = weights.masked_fill(~mask, 0.0)
        if not self.accumulating:
            self.commit()
        self.last = {"losses": losses, "weights": weights}
        self.last.update({k: v.detach() for k, v in inputs.items() if isinstance(v, torch.Tensor)})
        return weights

    def local_statistics(self, losses: torch.Tensor, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        """This rank's statistics for the sync point (names and reductions declared in :attr:`statistics`)."""
        return {}

    def compute(
        self, losses: torch.Tensor, synced: Mapping[str, torch.Tensor], inputs: Mapping[str, Any]
    ) -> torch.Tensor:
        """Update the non-accumulated state from ``synced`` and return this rank's ``[N]`` weights."""
        raise NotImplementedError

    def log_values(self) -> dict[str, torch.Tensor]:
        """Extra scalars to log (group weights, ...), identical on every rank (the callback adds
        :meth:`nonfinite_count` as ``reweight/nonfinite``)."""
        return {}

    def take_unsynced_nonfinite(self) -> torch.Tensor:
        """This rank's non-finite count of steps that synced nothing, handed over (and zeroed) so that a caller can
        sum it over ranks and add it to ``nonfinite`` (the callback does, in its logging collective)."""
        pending, self._unsynced_nonfinite = self._unsynced_nonfinite, torch.zeros_like(self._unsynced_nonfinite)
        return pending

    def nonfinite_count(self) -> torch.Tensor:
        """Samples left out so far because a value was NaN / inf (summed over ranks; a strategy step that syncs
        nothing, e.g. fixed class weights, adds its local count at the next step that syncs)."""
        return self.nonfinite + self._unsynced_nonfinite

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams.items())
        return f"{type(self).__name__}({args})"


def list_reweighters(filter: Any = None) -> list[str]:
    """Sorted canonical names of the registered reweighting strategies.

    Example:
        >>> "group_dro" in list_reweighters()
        True
    """
    return REWEIGHTERS.list(filter)


def build_reweighter(name: str | Mapping[str, Any] | Reweighter, /, **kwargs: Any) -> Reweighter:
    """Build a registered reweighter by name: ``build_reweighter("group_dro", step_size=0.01)``.

    Raises:
        ConfigurationError: unknown name (with the nearest valid one), unknown argument or invalid value.

    Example:
        >>> build_reweighter("cvar", alpha=0.5)
        CVaR(alpha=0.5)
    """
    return REWEIGHTERS.build(name, **kwargs)
