"""What ``SampleReweighting`` draws for the media loggers (W&B) on its media steps: histograms of the global batch's
weights and losses and a per-group (or per-class) table over time (:class:`GroupTable`); loggers without media get
none of it (:mod:`lightning_losses.diagnostics`)."""

from __future__ import annotations

from typing import Any

import torch

from lightning_losses._compat import log_step
from lightning_losses.diagnostics import log_histograms, log_table

__all__ = ["GroupTable", "class_labels", "group_weights", "log_group_table", "log_media"]


class GroupTable:
    """Per-group (or per-class: ``label="class"``) rows over time, for a W&B table: ``step, group, count, loss, acc,
    weight``.

    W&B tables are immutable once logged, so the rows accumulate here and the whole table is logged each time (one
    row per group present per media step: a few hundred rows over a run). ``weight`` is the group's ``q`` for
    strategies that keep one per group (``group_dro``), else the mean per-sample weight of the group's samples in the
    logged batch (rank 0's), NaN for a group absent from it.

    Example:
        >>> t = GroupTable()
        >>> stats = {"count": torch.tensor([2.0, 0.0]), "loss": torch.tensor([0.5, 0.0])}
        >>> stats["acc"] = torch.tensor([1.0, 0.0])
        >>> t.add(3, stats, torch.tensor([0.7, 0.3]))
        >>> t.rows
        [[3, 0, 2, 0.5, 1.0, 0.699999988079071]]
    """

    def __init__(self, label: str = "group") -> None:
        self.columns = ("step", label, "count", "loss", "acc", "weight")
        self.rows: list[list[Any]] = []
        self.logged_rows = 0  # rows in the last table logged

    def publish(self, trainer: Any, key: str) -> None:
        """Log the whole table to the media loggers when it has rows not logged yet."""
        if len(self.rows) > self.logged_rows:
            log_table(trainer, key, self.columns, self.rows)
            self.logged_rows = len(self.rows)

    def add(self, step: int, stats: dict[str, torch.Tensor], weight: torch.Tensor) -> None:
        """Append the groups with samples (``stats`` from :meth:`GroupAccuracy.compute`; ``weight`` per group)."""
        count, loss, acc = (_floats(stats[k]) for k in ("count", "loss", "acc"))
        w = weight.detach().float().cpu().tolist()
        for g, n in enumerate(count):
            if n > 0:
                self.rows.append([int(step), g, int(n), loss[g], acc[g], w[g]])


def _floats(values: Any) -> list[float]:
    return values.detach().double().cpu().tolist() if isinstance(values, torch.Tensor) else [float(v) for v in values]


def group_weights(reweighter: Any, weights: torch.Tensor, group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """The weight column of :class:`GroupTable`: the reweighter's per-group ``q`` when it has one of this size, else
    the mean of ``weights`` per group (NaN for a group without samples)."""
    q = getattr(reweighter, "q", None)
    if isinstance(q, torch.Tensor) and q.numel() == num_groups:
        return q.detach().float()
    g = group.long().flatten()
    sums = torch.zeros(num_groups, dtype=torch.float64, device=weights.device).index_add_(0, g, weights.double())
    counts = torch.zeros_like(sums).index_add_(0, g, torch.ones_like(sums[g]))
    return torch.where(counts > 0, sums / counts.clamp_min(1.0), float("nan")).float()


def class_labels(logits: Any, target: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(labels, valid)`` for integer class targets ``[N]`` of ``[N, C]`` logits (an out-of-range label, e.g.
    ``ignore_index``, reads 0 and is not valid); ``None`` for other inputs."""
    if not (isinstance(logits, torch.Tensor) and isinstance(target, torch.Tensor)):
        return None
    if logits.ndim != 2 or target.ndim != 1 or target.is_floating_point():
        return None
    valid = (target >= 0) & (target < logits.shape[-1])
    return torch.where(valid, target, torch.zeros_like(target)).long(), valid


def log_group_table(
    trainer: Any,
    key: str,
    table: GroupTable,
    stats: dict[str, torch.Tensor],
    output: Any,
    labels: Any,
    reweighter: Any,
    publish: bool = True,
) -> None:
    """Add the rows of ``stats`` (:meth:`GroupAccuracy.compute`) to ``table`` and, with ``publish``, log it whole to
    the media loggers; the weight column from the objective's per-sample ``output.weights`` (or ``q``, see
    :func:`group_weights`)."""
    size = len(stats["acc"])
    weights = None if output is None else output.weights
    if not isinstance(weights, torch.Tensor) or weights.shape != labels.shape:
        weights = torch.ones_like(labels, dtype=torch.float32)
    valid = (labels >= 0) & (labels < size)  # an `ignore_index` target is no class (host sync: media steps only)
    table.add(log_step(trainer), stats, group_weights(reweighter, weights[valid], labels[valid], size))
    if publish:
        table.publish(trainer, key)


def log_media(
    trainer: Any,
    table: GroupTable,
    reweighter: Any,
    output: Any,
    last: dict[str, Any],
    stats: dict[str, Any] | None,
    publish: bool,
) -> None:
    """A media step of ``SampleReweighting``: histograms of the global batch's weights and losses and, with groups,
    a row of the group table (logged when ``publish``)."""
    weights = None if output is None else output.weights
    histograms = {}
    if isinstance(weights, torch.Tensor):  # gathered over ranks: every rank calls, an empty batch too
        histograms["reweight/weights"] = weights
    if isinstance(last.get("losses"), torch.Tensor):
        histograms["reweight/losses"] = last["losses"]
    if histograms:
        log_histograms(trainer, histograms)  # one logger call for both
    group = last.get("group")
    if stats is not None and isinstance(group, torch.Tensor):
        log_group_table(trainer, "reweight/groups", table, stats, output, group, reweighter, publish)
