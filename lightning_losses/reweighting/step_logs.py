"""The statistics of a logging step of ``SampleReweighting``, from one collective and one host read.

A logging step writes a few tens of numbers: the weight statistics of the global batch, the non-finite count, the
strategy's own values (``q/0``, ...) and, per group, the accuracy and mean loss since the last log. Each finished as
a tensor would be a dozen tensor operations on a handful of numbers, and cold caches after the step's backward make
each of them cost as much as a small matrix product. So the raw sums go into one float64 vector (device operations
only: :func:`~lightning_losses.reweighting.metrics.weight_sums`, :class:`GroupSums`), are summed over the
data-parallel group in one collective (:func:`~lightning_losses.sync.sync_statistics`), read to the host
(:func:`~lightning_losses._log_rows.read_values`: once off the CPU, piece by piece on it) and finished in Python
floats. The read is the host sync that Lightning's own row of the step makes anyway (it reads
every logged value with ``.item()``); steps that do not log run none of this.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import torch

from lightning_losses._log_rows import read_values
from lightning_losses.distributed import global_sum, is_distributed, rank_zero_share
from lightning_losses.reweighting.metrics import (
    group_pair_sums,
    group_stats_from_sums,
    sums_from_pairs,
    weight_stats_from_sums,
    weight_sums,
)
from lightning_losses.sync import sync_statistics

__all__ = [
    "HOST_WEIGHTS",
    "GroupSums",
    "host_weight_sums",
    "restore_interval",
    "reweighting_row",
    "save_interval",
    "stats_from_taken",
]

#: in one process, a batch of at most this many weights is described from the host read itself
HOST_WEIGHTS = 512


class GroupSums:
    """Per-group sample count, correct predictions and loss sum since the last :meth:`take` (local to the rank).

    Kept in two accumulators that a fold adds to with two ``bincount`` passes and two in-place sums (the fewest
    kernels: a logging step folds every step since the last one after the backward, when each costs most): ``pairs``,
    the sample count per ``(group, correct)`` pair (``2 * group + correct``, ``[2 * size]``; int64, float64 after a
    checkpoint), and ``losses``, the loss sum per group (float64 ``[size]``). :attr:`sums` gives them as
    :func:`~lightning_losses.reweighting.metrics.sums_from_pairs` does (``[size, 3]``: count, correct, loss; checkpoints
    hold that), :func:`stats_from_taken` finishes :meth:`take`'s values on the host.

    Example:
        >>> sums = GroupSums(2)
        >>> sums.add(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([0, 1]), torch.tensor([0.5, 1.5]))
        >>> sums.sums.tolist()
        [[1.0, 1.0, 0.5], [1.0, 0.0, 1.5]]
        >>> pairs, losses = sums.take()
        >>> pairs.tolist(), losses.tolist()
        ([0, 1, 1, 0], [0.5, 1.5])
    """

    def __init__(self, size: int, device: Any = None) -> None:
        self.size = int(size)
        self.device = device
        # `None`: nothing since the last take (the first fold of an interval starts them: no zeros to add to)
        self.pairs: torch.Tensor | None = None
        self.losses: torch.Tensor | None = None

    def add(self, preds: Any, target: Any, group: Any, losses: Any = None, mask: Any = None) -> None:
        """Add a batch (:func:`~lightning_losses.reweighting.metrics.group_pair_sums`' arguments)."""
        pairs, sums = group_pair_sums(preds, target, group, self.size, losses, mask)
        if self.pairs is None:  # int64 counts (exact; read and summed over ranks in float64)
            self.pairs = pairs
        else:
            self.pairs = self.pairs.to(pairs.device).add_(pairs)  # (a restored checkpoint's are on the CPU)
        if sums is not None:
            self.losses = sums if self.losses is None else self.losses.to(sums.device).add_(sums)

    @property
    def sums(self) -> torch.Tensor:
        """Count, correct and loss sum per group, float64 ``[size, 3]``."""
        return sums_from_pairs(*self._current())

    @sums.setter
    def sums(self, value: torch.Tensor) -> None:
        value = value.to(torch.float64)
        self.pairs = torch.stack([value[:, 0] - value[:, 1], value[:, 1]], 1).reshape(-1)
        self.losses = value[:, 2].clone()

    def take(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pairs, losses)`` since the last take, and a fresh start."""
        out = self._current()
        self.pairs = self.losses = None
        return out

    def _current(self) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.device if self.pairs is None else self.pairs.device
        pairs = torch.zeros(2 * self.size, dtype=torch.float64, device=device) if self.pairs is None else self.pairs
        losses = torch.zeros(self.size, dtype=torch.float64, device=device) if self.losses is None else self.losses
        return pairs, losses


def stats_from_taken(pairs: list[float], losses: list[float]) -> dict[str, Any]:
    """:func:`~lightning_losses.reweighting.metrics.group_stats_from_sums` of :meth:`GroupSums.take`'s values read to
    the host (and summed over ranks).

    Example:
        >>> stats_from_taken([0.0, 1.0, 1.0, 0.0], [0.5, 1.5])["acc"]
        [1.0, 0.0]
    """
    flat: list[float] = []
    for g, loss in enumerate(losses):
        wrong, right = pairs[2 * g], pairs[2 * g + 1]
        flat += [wrong + right, right, loss]
    return group_stats_from_sums(flat)


def save_interval(groups: GroupSums | None, classes: GroupSums | None) -> dict[str, torch.Tensor | None]:
    """The per-group / per-class sums since the last log, for a checkpoint: local to each rank, saved summed over the
    data-parallel group (a collective, as ``Trainer.save_checkpoint`` runs on every rank; ``EntropyControl`` saves its
    window alike)."""
    return {
        "group_sums": None if groups is None else global_sum(groups.sums).cpu(),
        "class_sums": None if classes is None else global_sum(classes.sums).cpu(),
    }


def restore_interval(state: dict[str, Any]) -> tuple[GroupSums | None, GroupSums | None]:
    """The accumulators of :func:`save_interval`'s state (:func:`~lightning_losses.distributed.rank_zero_share`: the
    next log sums the ranks, counted once); ``None`` where the checkpoint has none."""
    out = []
    for key in ("group_sums", "class_sums"):
        saved = state.get(key)
        acc = None
        if saved is not None:
            acc = GroupSums(saved.shape[0])
            acc.sums = rank_zero_share(saved.to(torch.float64))
        out.append(acc)
    return out[0], out[1]


def reweighting_row(
    reweighter: Any, weights: torch.Tensor | None, groups: GroupSums | None, classes: GroupSums | None
) -> tuple[dict[str, float], dict[str, Any] | None, dict[str, Any] | None]:
    """The ``reweight/*`` values of a logging step (call on every rank alike: one collective under DDP).

    Args:
        reweighter: the strategy; its non-finite count of steps that synced nothing is summed over ranks here and
            added to its ``nonfinite`` state (with ``weights`` only), its :meth:`log_values` are read.
        weights: the objective's per-sample weights of this rank (``None``: no weight statistics).
        groups / classes: the per-group / per-class sums since the last log (taken: they start again from 0).

    Returns:
        ``(metrics, group_stats, class_stats)``: Python floats by key, and the per-group / per-class statistics
        (:func:`~lightning_losses.reweighting.metrics.group_stats_from_sums`) for the media.
    """
    # the weights' sums on the device, summed over ranks with the group sums; or, in one process with a small batch,
    # the weights themselves in the host read (a few Python sums are cheaper than a dozen cold tensor operations)
    on_host = weights is not None and not is_distributed() and weights.numel() <= HOST_WEIGHTS
    local: dict[str, torch.Tensor] = {}  # named pieces, reduced over the ranks in one collective
    if weights is not None and not on_host:
        local["weights"], local["extremes"] = weight_sums(weights)
        if reweighter.unsynced_nonfinite_pending:  # the same on every rank
            local["pending"] = reweighter.take_unsynced_nonfinite().reshape(1)
    for name, acc in (("groups", groups), ("classes", classes)):
        if acc is not None:
            local[f"{name}/pairs"], local[f"{name}/losses"] = acc.take()
    synced, _ = sync_statistics(local, {name: "max" if name == "extremes" else "sum" for name in local})
    if "pending" in synced:  # the state stays a device tensor (checkpointed); summed over ranks above
        reweighter.nonfinite = reweighter.nonfinite + synced["pending"][0].to(torch.int64)
    values = reweighter.log_values()
    read = {**synced, "nonfinite": reweighter.nonfinite_count()}
    read.update({f"value/{name}": v for name, v in values.items()})
    if on_host:
        read["raw_weights"] = weights  # type: ignore[assignment]
    host = read_values(read)
    metrics: dict[str, float] = {}
    if weights is not None:
        if on_host:
            weight_stats = weight_stats_from_sums(*host_weight_sums(host["raw_weights"]))
        else:
            weight_stats = weight_stats_from_sums(host["weights"], host["extremes"])
        metrics.update({f"reweight/{k}": v for k, v in weight_stats.items()})
    metrics["reweight/nonfinite"] = host["nonfinite"][0]
    for name, value in values.items():  # a 0-d value is one key, a 1-D one a key per element
        got = host[f"value/{name}"]
        if value.ndim == 0:
            metrics[f"reweight/{name}"] = got[0]
        else:
            metrics.update({f"reweight/{name}/{i}": v for i, v in enumerate(got)})
    group_stats = None if groups is None else stats_from_taken(host["groups/pairs"], host["groups/losses"])
    class_stats = None if classes is None else stats_from_taken(host["classes/pairs"], host["classes/losses"])
    if group_stats is not None:
        for g, (acc, loss) in enumerate(zip(group_stats["acc"], group_stats["loss"])):
            metrics[f"reweight/group_acc/{g}"] = acc
            metrics[f"reweight/group_loss/{g}"] = loss
        metrics["reweight/worst_group_acc"] = group_stats["worst_acc"]
    return metrics, group_stats, class_stats


def host_weight_sums(weights: list[float]) -> tuple[list[float], list[float]]:
    """:func:`~lightning_losses.reweighting.metrics.weight_sums` of weights already on the host (Python floats).

    Example:
        >>> host_weight_sums([1.0, 1.0, 0.0, 0.0])
        ([2.0, 2.0, 0.0, 2, 4], [1.0, -0.0])
    """
    if not weights:
        return [0.0] * 5, [-sys.float_info.max] * 2
    xlogx = sum(w * math.log(w) for w in weights if w > 0)
    nonzero = sum(1 for w in weights if w != 0)
    return [math.fsum(weights), math.fsum(w * w for w in weights), xlogx, nonzero, len(weights)], [
        max(weights),
        -min(weights),
    ]
