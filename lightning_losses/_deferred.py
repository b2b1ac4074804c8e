"""Per-step statistics that only logging steps read, kept by reference and folded in one pass.

A diagnostic that sums something over every training step (a worst-group accuracy over the steps since the last log,
the entropy window) would otherwise run a dozen small tensor ops on each step, a few hundred microseconds of a
millisecond-scale step. :class:`Deferred` keeps the step's tensors instead (a list append, no tensor op) and hands
their concatenation to the fold function when the values are read (a logging step), or when
:data:`FOLD_EVERY` steps are kept (bounded memory). The fold must be a sum over samples, so that one call on the
concatenation equals the calls on the parts (floating-point sums up to their order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["FOLD_EVERY", "Deferred"]

#: at most this many steps are kept before they are folded
FOLD_EVERY = 64


class Deferred:
    """Argument tuples of a per-sample-summing ``fold``, kept and folded together.

    Entries with the same layout (which arguments are ``None``, and each tensor's device and trailing shape) are
    concatenated along dim 0 and folded in one call (dtypes promoted as ``torch.cat`` does: the fold sums over
    samples); a change of layout starts a new call. Nothing here is a
    collective: ``fold`` must not be one either (it runs when ``flush`` is called, which callers do at the same
    point on every rank, or at a count of steps that every rank shares).

    Example:
        >>> seen = []
        >>> d = Deferred(lambda x, m: seen.append((x * (1 if m is None else m)).sum().item()))
        >>> d.add(torch.tensor([1.0, 2.0]), None)
        >>> d.add(torch.tensor([3.0]), None)
        >>> d.flush()
        >>> seen
        [6.0]
    """

    __slots__ = ("_items", "fold")

    def __init__(self, fold: Callable[..., Any]) -> None:
        self.fold = fold
        self._items: list[tuple[Any, ...]] = []

    def __len__(self) -> int:
        return len(self._items)

    def add(self, *args: Any) -> None:
        """Keep one step's arguments (detach them first: a kept graph would hold the step's activations)."""
        self._items.append(args)

    def full(self) -> bool:
        """Whether :data:`FOLD_EVERY` steps are kept (callers flush then, at a point where no undo is pending)."""
        return len(self._items) >= FOLD_EVERY

    def truncate(self, length: int) -> None:
        """Forget the entries added after the first ``length`` (a skipped step's)."""
        del self._items[length:]

    def clear(self) -> None:
        self._items.clear()

    def flush(self) -> None:
        """Fold every kept entry (concatenated by layout) and forget them."""
        items, self._items = self._items, []
        if len(items) > 1 and self._fold_at_once(items):
            return
        run: list[tuple[Any, ...]] = []
        layout: tuple[Any, ...] | None = None
        for item in items:
            key = tuple((t.device, tuple(t.shape[1:])) if isinstance(t, torch.Tensor) else t is None for t in item)
            if run and key != layout:
                self._apply(run)
                run = []
            layout = key
            run.append(item)
        if run:
            self._apply(run)

    def _fold_at_once(self, items: list[tuple[Any, ...]]) -> bool:
        """The usual case, in one call: every entry with its ``None`` at the same places, and tensors that concatenate
        (same trailing shapes and devices; ``torch.cat`` promotes dtypes). ``False`` (nothing folded) otherwise. A
        fold runs after the backward, when each Python step costs most: no per-tensor layout key here."""
        nones = [a is None for a in items[0]]
        for item in items:
            if [a is None for a in item] != nones:
                return False
        try:
            columns = [None if none else torch.cat(col) for none, col in zip(nones, zip(*items))]
        except (RuntimeError, TypeError):  # trailing shapes or devices differ, or an argument is not a tensor
            return False
        self.fold(*columns)
        return True

    def _apply(self, run: list[tuple[Any, ...]]) -> None:
        if len(run) == 1:
            self.fold(*run[0])
            return
        columns = zip(*run)
        self.fold(*(torch.cat(col) if isinstance(col[0], torch.Tensor) else col[0] for col in columns))
