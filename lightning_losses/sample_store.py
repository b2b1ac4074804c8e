"""A per-sample state store keyed by the dataset ``index`` carried in the batch.

Every rank holds the **whole** table (memory proportional to the dataset size, replicated per rank) and writes it
only from the all-gathered global batch after the reweighter's sync point, so all ranks agree exactly. Rules that
make it correct under ``DistributedSampler`` and gradient accumulation:

* within one global batch only the **first** occurrence of an index is applied (the sampler's padding may put a
  sample on two ranks in the same step);
* with ``once_per_epoch=True`` (default) a sample is updated at most once per epoch (the padding repeats a few
  samples in a later step of the same epoch); the epoch comes from :meth:`Reweighter.set_epoch`, which the
  callback calls every epoch (call it yourself when using a reweighter without the Trainer);
* an update depends only on the sample's own value, so splitting a batch into micro-batches gives the same table.

Bytes per sample: 4 (the ``int32`` epoch stamp, ``-1`` = never seen) plus each field's element size (``float32``:
4, ``bool``: 1). 1M samples with one ``float32`` field: 8 MB per rank.

Size: with ``num_samples`` (the dataset length; :class:`~lightning_losses.reweighting.SampleReweighting` sets it
from the training dataset when the strategy was built without it) the table is allocated once and a step costs no
host sync: indices are bounds-checked on device (``torch._assert_async``: an immediate error on CPU, a device-side
assert on GPU). Without it the table grows to ``max(index) + 1``, which reads ``min`` / ``max`` of the indices on the
host once per step (growth is driven by synced indices, so it is identical on every rank); growth past
:data:`MAX_GROWTH` samples is refused with an error naming ``num_samples`` (an index of 1e12 is a bug, not a dataset:
give a larger dataset's length as ``num_samples``).

Undo: between :meth:`PerSampleStore.begin_journal` and :meth:`PerSampleStore.rollback` the store keeps the rows it
overwrites (one gather per write), so a skipped step can be undone exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from lightning_losses._state import representative

__all__ = ["MAX_GROWTH", "PerSampleStore", "first_occurrence"]

#: the largest table a store grows to on demand (2**27 samples: 1 GiB at 8 bytes per sample)
MAX_GROWTH = 2**27


def first_occurrence(index: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask of the first occurrence of each value in ``index`` (no host sync, no Python loop); with
    ``valid``, the first occurrence among the valid entries (invalid ones are ``False`` and shadow nothing).

    Example:
        >>> first_occurrence(torch.tensor([4, 2, 4, 7, 2]))
        tensor([ True,  True, False,  True, False])
        >>> first_occurrence(torch.tensor([4, 2, 4]), valid=torch.tensor([False, True, True]))
        tensor([False,  True,  True])
    """
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=index.device)
    return _first(index, representative(index, valid), valid)


def _first(index: torch.Tensor, rep: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    first = rep == torch.arange(index.numel(), device=index.device)
    return first if valid is None else first & valid


class PerSampleStore:
    """Per-sample tables keyed by dataset index.

    Args:
        fields: ``name -> (dtype, default value)`` of each per-sample field.
        num_samples: dataset size (fixed table, no host sync per step), or ``None`` to grow on demand.
        once_per_epoch: apply at most one update per sample per epoch (see the module docstring).

    Example:
        >>> store = PerSampleStore({"ema": (torch.float32, 0.0)})
        >>> fresh = store.fresh(torch.tensor([3, 1, 3]), epoch=0)
        >>> store.write(torch.tensor([3, 1, 3]), fresh, epoch=0, ema=torch.tensor([0.5, 0.2, 0.9]))
        >>> store.read("ema", torch.tensor([1, 3])), store.bytes_per_sample
        (tensor([0.2000, 0.5000]), 8)
    """

    def __init__(
        self,
        fields: Mapping[str, tuple[torch.dtype, float | bool]],
        num_samples: int | None = None,
        once_per_epoch: bool = True,
    ) -> None:
        self.fields = dict(fields)
        self.once_per_epoch = bool(once_per_epoch)
        self._initial = int(num_samples or 0)
        self.fixed = num_samples is not None
        self._checked: torch.Tensor | None = None  # the last index tensor checked (one check per step, not per call)
        self._rep: tuple[torch.Tensor, torch.Tensor] | None = None  # (index, representatives) from the last fresh()
        self._journal: list[tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]] | None = None
        self._journal_size = 0
        self.reset()

    @property
    def bytes_per_sample(self) -> int:
        """Memory per sample of this store (``int32`` stamp plus every field)."""
        return 4 + sum(torch.empty((), dtype=dtype).element_size() for dtype, _ in self.fields.values())

    def __len__(self) -> int:
        return int(self.stamp.numel())

    def reset(self) -> None:
        self._checked, self._rep = None, None
        device = self.stamp.device if hasattr(self, "stamp") else torch.device("cpu")
        self.stamp = torch.full((self._initial,), -1, dtype=torch.int32, device=device)
        self.tables = {
            n: torch.full((self._initial,), default, dtype=dtype, device=device)
            for n, (dtype, default) in self.fields.items()
        }

    def to(self, device: torch.device) -> PerSampleStore:
        self.stamp = self.stamp.to(device)
        self.tables = {n: t.to(device) for n, t in self.tables.items()}
        return self

    def set_size(self, num_samples: int) -> None:
        """Fix the table size to ``num_samples`` (kept larger if it already is): no host sync from now on."""
        self._initial = max(int(num_samples), len(self))
        self.fixed = True
        self.reserve(self._initial)
        self._checked = None

    def reserve(self, num_samples: int) -> None:
        """Grow the tables to hold indices ``< num_samples`` (never shrinks)."""
        extra = int(num_samples) - len(self)
        if extra <= 0:
            return
        device = self.stamp.device
        self.stamp = torch.cat([self.stamp, torch.full((extra,), -1, dtype=torch.int32, device=device)])
        for n, (dtype, default) in self.fields.items():
            self.tables[n] = torch.cat([self.tables[n], torch.full((extra,), default, dtype=dtype, device=device)])

    def _check(self, index: torch.Tensor) -> None:
        if index.numel() == 0 or index is self._checked:
            return
        if self.fixed:  # no host sync
            n = len(self)
            torch._assert_async(
                ((index >= 0) & (index < n)).all(),
                f"`index` values must be dataset positions in [0, num_samples={n}); set `num_samples` of the "
                "strategy to the dataset length (or to the largest index + 1)",
            )
        else:
            lo, hi = int(index.min()), int(index.max())  # host sync: the store is sized from synced indices
            if lo < 0:
                raise ValueError(f"`index` values must be >= 0 (dataset positions), got {lo}")
            if hi >= max(MAX_GROWTH, len(self)):
                raise ValueError(
                    f"`index` value {hi} would grow the per-sample table to {hi + 1} rows "
                    f"({(hi + 1) * self.bytes_per_sample:,} bytes per rank); indices must be dataset positions. Set "
                    f"`num_samples` of the strategy to the dataset length (tables grow on demand only up to "
                    f"{MAX_GROWTH} samples)"
                )
            self.reserve(hi + 1)
        self._checked = index

    def seen(self, index: torch.Tensor) -> torch.Tensor:
        """Boolean ``[N]``: the sample was updated at least once."""
        self._check(index)
        return self.stamp[index] >= 0

    def fresh(self, index: torch.Tensor, epoch: int | torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Boolean ``[N]`` of the rows an update may write: valid (``valid``, default all), first valid occurrence,
        and (``once_per_epoch``) not yet updated in ``epoch``."""
        self._check(index)
        if index.numel() == 0:
            return torch.zeros(0, dtype=torch.bool, device=index.device)
        rep = representative(index, valid)
        self._rep = (index, rep)  # reused by write() on the same index tensor
        mask = _first(index, rep, valid)
        if self.once_per_epoch:
            mask &= self.stamp[index] != torch.as_tensor(epoch, device=index.device).to(torch.int32)
        return mask

    def read(self, name: str, index: torch.Tensor) -> torch.Tensor:
        """Field ``name`` of the given samples."""
        self._check(index)
        return self.tables[name][index]

    def write(self, index: torch.Tensor, mask: torch.Tensor, epoch: int | torch.Tensor, **values: torch.Tensor) -> None:
        """Write ``values`` (each ``[N]``) for the rows where ``mask`` holds and stamp them with ``epoch``.

        ``mask`` holds at most one entry per index value: the one :meth:`fresh` returned for the same ``index``
        tensor (or any single entry per value without a preceding :meth:`fresh`). No host sync: every copy of an
        index writes the same value.
        """
        self._check(index)
        if index.numel() == 0:
            return
        cached = self._rep is not None and self._rep[0] is index
        rep = self._rep[1] if cached else representative(index, mask)
        take = mask[rep]
        if self._journal is not None:
            self._journal.append((index, {n: self.tables[n][index] for n in values}, self.stamp[index]))
        for name, value in values.items():
            table = self.tables[name]
            table[index] = torch.where(take, value[rep].to(table.dtype), table[index])
        stamp = torch.as_tensor(epoch, device=index.device).to(torch.int32)
        self.stamp[index] = torch.where(take, stamp, self.stamp[index])

    def begin_journal(self) -> None:
        """Start keeping the rows that writes overwrite (drops the previous journal)."""
        self._journal, self._journal_size = [], len(self)

    def rollback(self) -> None:
        """Undo every write (and growth) since :meth:`begin_journal`; the journal stays open, empty."""
        if self._journal is None:
            return
        for index, old, stamp in reversed(self._journal):  # copies of one index hold the same old value
            for name, value in old.items():
                self.tables[name][index] = value
            self.stamp[index] = stamp
        if len(self) > self._journal_size:
            self.stamp = self.stamp[: self._journal_size].clone()
            self.tables = {n: t[: self._journal_size].clone() for n, t in self.tables.items()}
        self._journal, self._checked, self._rep = [], None, None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"stamp": self.stamp.cpu().clone(), **{n: t.cpu().clone() for n, t in self.tables.items()}}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        device = self.stamp.device
        self.stamp = state["stamp"].to(device=device, dtype=torch.int32).clone()
        self.tables = {n: state[n].to(device=device, dtype=dtype).clone() for n, (dtype, _) in self.fields.items()}
        if self.fixed:
            self.set_size(self._initial)
