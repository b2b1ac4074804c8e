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

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

import torch

from lightning_losses.distributed import is_distributed
from lightning_losses.registry import Registry
from lightning_losses.reweighting.guards import (
    ID_KEYS,
    check_id_range,
    check_inputs,
    check_mask,
    id_range,
    nonfinite_mask,
)
from lightning_losses.reweighting.state import DeclaredState, StateSpec
from lightning_losses.sync import sync_statistics

__all__ = ["REWEIGHTERS", "Reweighter", "build_reweighter", "list_reweighters"]

REWEIGHTERS: Registry[type[Reweighter]] = Registry("reweighter", name_attr="strategy")
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class Reweighter(DeclaredState):
    """Base class of every sample reweighter.

    **Writing a reweighter**: validate the hyperparameters in ``__init__`` and store each as an attribute of the same
    name, declare the states (``add_state``, with ``reduction="sum"`` / ``"max"`` / ``"min"`` for accumulators merged
    from the synced statistic of the same name), end with ``self.hparams = self.capture_hparams(locals())`` (what
    ``repr`` shows); implement :meth:`local_statistics` (this rank's statistics, masked samples left out) and
    :meth:`compute` (the ``[N]`` weights from synced values); register it: the registry sets ``strategy``.

    >>> import torch
    >>> from lightning_losses._validation import check_number
    >>> from lightning_losses.reweighting import REWEIGHTERS, Reweighter, build_reweighter
    >>>
    >>> @REWEIGHTERS.register("above_mean", aliases=("relative_loss",))
    ... class AboveMean(Reweighter):
    ...     # weight exp((loss - mean of every loss seen so far, over all ranks) / temperature)
    ...     def __init__(self, temperature: float = 1.0) -> None:
    ...         super().__init__()
    ...         self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)
    ...         self.add_state("loss_sum", torch.zeros((), dtype=torch.float64), reduction="sum")
    ...         self.add_state("count", torch.zeros((), dtype=torch.float64), reduction="sum")
    ...         self.hparams = self.capture_hparams(locals())
    ...
    ...     def local_statistics(self, losses, inputs):
    ...         kept = inputs["sample_mask"]
    ...         return {"loss_sum": losses.double().where(kept, 0.0).sum(), "count": kept.double().sum()}
    ...
    ...     def compute(self, losses, synced, inputs):
    ...         mean = self.loss_sum / self.count.clamp_min(1.0)
    ...         return torch.exp((losses.double() - mean) / self.temperature).to(losses.dtype)
    >>> r = build_reweighter("relative_loss", temperature=2.0)
    >>> r, r.strategy
    (AboveMean(temperature=2.0), 'above_mean')
    >>> r(losses=torch.tensor([1.0, 3.0]))
    tensor([0.6065, 1.6487])
    >>> REWEIGHTERS.unregister("above_mean")  # keep the doctest's registry clean

    Class attributes:
        requires: input names that must be passed to ``compute_loss`` (``"group"``, ``"index"``, ...); a strategy may
            set it per instance when what it needs depends on its arguments.

    Attributes:
        statistics: ``name -> reduction`` (one of ``"sum"``, ``"mean"``, ``"max"``, ``"min"``, ``"cat"``) of the
            per-step statistics returned by :meth:`local_statistics`; every rank must return the same names.
        local_slice: this rank's slice of the global (``"cat"``) batch in the current step.
        last: detached tensors of the last step, for logging (``weights``, ``losses`` and the inputs).
        hparams: the validated constructor arguments (shown by ``repr``), generated by :meth:`capture_hparams`.
    """

    requires: tuple[str, ...] = ()
    #: the registered name, set by ``@REWEIGHTERS.register(name)`` (an unregistered subclass may set it itself)
    strategy: ClassVar[str] = ""
    #: constructor arguments left out of :attr:`hparams` (and ``repr``): sizes of the data, not hyperparameters
    hparams_exclude: ClassVar[tuple[str, ...]] = ("num_samples",)
    #: ``input name -> text`` appended to the missing-input error (e.g. an alternative to passing it)
    missing_hints: ClassVar[dict[str, str]] = {}
    #: per-sample float inputs besides ``losses`` whose non-finite values exclude the sample (e.g. WPO's log-weights)
    finite_inputs: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self._states: dict[str, StateSpec] = {}
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
        self._unsynced_nonfinite: torch.Tensor | None = None  # count of steps that synced nothing (DDP), or None

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

    def capture_hparams(self, local_vars: Mapping[str, Any]) -> dict[str, Any]:
        """The :attr:`hparams` generated from the constructor's signature; call it last in ``__init__``, as
        ``self.hparams = self.capture_hparams(locals())``.

        For each argument of ``type(self).__init__`` (in order; ``self``, ``*args`` / ``**kwargs`` and
        :attr:`hparams_exclude` left out): the validated instance attribute of the same name when there is one, else
        the local variable of that name in ``local_vars`` (the argument as passed, or as validated in place); a tensor
        becomes a list. An argument found in neither is left out.
        """
        own = vars(self)
        out: dict[str, Any] = {}
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            if name == "self" or name in self.hparams_exclude or param.kind in _VARIADIC:
                continue
            if name in own:
                value = own[name]
            elif name in local_vars:
                value = local_vars[name]
            else:
                continue
            out[name] = value.tolist() if isinstance(value, torch.Tensor) else value
        return out

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
        pending = self._unsynced_nonfinite
        if synced_step:  # piggy-back on the packed buffer: no extra collective
            local["_nonfinite"], reductions["_nonfinite"] = bad if pending is None else bad + pending, "sum"
            for key in ids:
                local[f"_ids_{key}"], reductions[f"_ids_{key}"] = id_range(inputs[key], mask), "max"
        else:  # nothing to reduce in this step: count now, sum over ranks at the next step that syncs
            self._unsynced_nonfinite = bad if pending is None else pending + bad
            for key, (arg, size) in ids.items():
                check_id_range(self.strategy, key, arg, size, id_range(inputs[key], mask))
        if any(r == "cat" for k, r in reductions.items() if k in local):
            local["sample_mask"], reductions["sample_mask"] = mask, "cat"
        synced, offset = sync_statistics(local, reductions)
        if synced_step:
            for key, (arg, size) in ids.items():  # synced extremes: the same decision on every rank
                check_id_range(self.strategy, key, arg, size, synced.pop(f"_ids_{key}"))
            self.nonfinite = self.nonfinite + synced.pop("_nonfinite").to(torch.int64)
            self._unsynced_nonfinite = None
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
        """Extra values to log (group weights, ...), identical on every rank: a 0-d tensor logs as
        ``reweight/{name}``, a 1-D one as ``reweight/{name}/{i}`` per element (the callback adds
        :meth:`nonfinite_count` as ``reweight/nonfinite``)."""
        return {}

    def take_unsynced_nonfinite(self) -> torch.Tensor:
        """This rank's count of steps that synced nothing, handed over (zeroed) to be summed over ranks (callback)."""
        pending, self._unsynced_nonfinite = self._unsynced_nonfinite, None
        return torch.zeros_like(self.nonfinite) if pending is None else pending

    @property
    def unsynced_nonfinite_pending(self) -> bool:
        """Whether :meth:`take_unsynced_nonfinite` has a count (on every rank alike: a step that synced nothing)."""
        return self._unsynced_nonfinite is not None

    def nonfinite_count(self) -> torch.Tensor:
        """Samples left out so far because a value was NaN / inf (summed over ranks; a strategy step that syncs
        nothing, e.g. fixed class weights, adds its local count at the next step that syncs)."""
        pending = self._unsynced_nonfinite
        return self.nonfinite if pending is None else self.nonfinite + pending

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
