"""What reweighting logs: weight statistics of the global batch and per-group loss / accuracy (torchmetrics).

* :func:`global_weight_stats`: relative effective sample size :math:`(\\sum w)^2 / (N \\sum w^2)`, min, max, the
  normalised entropy of :math:`w / \\sum w` and the fraction of zero weights, over the **global** batch, from
  one gather of six numbers per rank (only on logging steps).
* :class:`GroupAccuracy`: a ``torchmetrics.Metric`` with per-group correct / total / loss sums
  (``dist_reduce_fx="sum"``), whose ``compute`` gives per-group accuracy, loss and sample count and the worst-group
  accuracy (over the groups with samples: a batch, or a rank, without some group is normal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torchmetrics

from lightning_losses._compat import log_step
from lightning_losses.diagnostics import log_histogram, log_table
from lightning_losses.sync import sync_statistics

__all__ = [
    "GroupAccuracy",
    "GroupTable",
    "class_labels",
    "global_weight_stats",
    "group_weights",
    "log_group_table",
    "log_media",
]


def global_weight_stats(
    weights: torch.Tensor, extra: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Statistics of the global batch's weights (identical on every rank; one collective under DDP).

    ``extra``: scalars summed over ranks in the same collective, returned under their names (e.g. a reweighter's
    ``nonfinite`` count of steps that synced nothing).

    Example:
        >>> stats = global_weight_stats(torch.tensor([1.0, 1.0, 0.0, 0.0]))
        >>> {k: round(float(v), 3) for k, v in stats.items()}
        {'ess': 0.5, 'entropy': 0.5, 'max': 1.0, 'min': 0.0, 'zero_fraction': 0.5}
    """
    w = weights.detach().to(torch.float64)
    # per sample: w, w^2, w log w (0 at w = 0) and w == 0, summed in one reduction; the count rides along
    columns = torch.stack([w, w * w, torch.xlogy(w, w), (w == 0).to(torch.float64)])
    names = sorted(extra or {})
    tail = [float(w.numel())] + [0.0] * len(names)
    sums = torch.cat([columns.sum(1), w.new_tensor(tail)])
    if names:
        sums[5:] = torch.stack([extra[k].to(sums) for k in names])  # type: ignore[index]
    if w.numel():
        low, high = torch.aminmax(w)
        extremes = torch.stack([high, -low])
    else:
        extremes = w.new_full((2,), -torch.finfo(torch.float64).max)
    synced, _ = sync_statistics({"sums": sums, "extremes": extremes}, {"sums": "sum", "extremes": "max"})
    total, squares, wlogw, zeros, n = synced["sums"][:5].unbind(0)
    summed = dict(zip(names, synced["sums"][5:].unbind(0)))
    n_safe = n.clamp_min(1.0)
    ess = total.square() / (n_safe * squares).clamp_min(1e-300)
    # H(p) with p = w / S: log S - sum(w log w) / S, normalised by log N
    entropy = (total.clamp_min(1e-300).log() - wlogw / total.clamp_min(1e-300)) / math.log(max(float(n), 2.0))
    return {
        "ess": ess.float(),
        "entropy": entropy.float(),
        "max": synced["extremes"][0].float(),
        "min": (-synced["extremes"][1]).float(),
        "zero_fraction": (zeros / n_safe).float(),
        **summed,
    }


class GroupAccuracy(torchmetrics.Metric):
    """Per-group accuracy and mean loss, and the worst-group accuracy.

    A group without samples (in a batch, on a rank, or in all the data seen) adds nothing: ``count`` is 0 for it,
    its ``acc`` / ``loss`` read 0 and ``worst_acc`` leaves it out.

    Args:
        num_groups: number of groups.

    Example:
        >>> m = GroupAccuracy(num_groups=2)
        >>> m.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1]))
        >>> out = m.compute()
        >>> out["acc"], out["worst_acc"]
        (tensor([1., 0.]), tensor(0.))
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, num_groups: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.num_groups = int(num_groups)
        for name in ("correct", "total", "loss"):
            self.add_state(name, torch.zeros(self.num_groups, dtype=torch.float64), dist_reduce_fx="sum")

    def update(
        self,
        preds: torch.Tensor,
        target: torch.Tensor,
        group: torch.Tensor,
        losses: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
    ) -> None:
        """Add a batch; ``mask`` (boolean ``[N]``) leaves out the ``False`` samples (e.g. ``ignore_index``)."""
        if preds.is_floating_point() and preds.ndim == 2:
            preds = preds.argmax(-1)
        g = group.long()
        columns = [torch.ones_like(g, dtype=torch.float64), (preds == target).to(torch.float64)]
        if losses is not None:
            columns.append(losses.detach().to(torch.float64))
        values = torch.stack(columns, 1)  # [N, K]: count, correct, loss
        if mask is not None:
            values = values * mask.unsqueeze(1)
            g = g.masked_fill(~mask, 0)
        k = values.shape[1]
        # one bincount for every column: sample i adds values[i, j] at g_i * K + j
        index = (g.unsqueeze(1) * k + torch.arange(k, device=g.device)).reshape(-1)
        sums = torch.bincount(index, weights=values.reshape(-1), minlength=self.num_groups * k)
        if sums.numel() > self.num_groups * k:  # a shape, known on the host: no extra sync
            raise ValueError(
                f"GroupAccuracy got group id {(sums.numel() - 1) // k} but `num_groups` is {self.num_groups}; "
                "set `num_groups` to the true number of groups"
            )
        sums = sums.view(self.num_groups, k)
        # in place: the states keep their tensors (no `Metric.__setattr__` per update)
        self.total.add_(sums[:, 0])
        self.correct.add_(sums[:, 1])
        if losses is not None:
            self.loss.add_(sums[:, 2])

    def compute(self) -> dict[str, torch.Tensor]:
        counted = self.total.clamp_min(1.0)
        acc = (self.correct / counted).float()
        loss = (self.loss / counted).float()
        present = self.total > 0
        # the lowest accuracy of the groups present, NaN when none is: no host read
        worst = torch.where(present, acc, torch.inf).amin()
        worst = torch.where(present.any(), worst, torch.nan)
        return {"acc": acc, "loss": loss, "count": self.total.clone(), "worst_acc": worst}


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
        count, loss, acc = (stats[k].detach().double().cpu().tolist() for k in ("count", "loss", "acc"))
        w = weight.detach().float().cpu().tolist()
        for g, n in enumerate(count):
            if n > 0:
                self.rows.append([int(step), g, int(n), loss[g], acc[g], w[g]])


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
    size = stats["acc"].numel()
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
    if isinstance(weights, torch.Tensor):  # gathered over ranks: every rank calls, an empty batch too
        log_histogram(trainer, "reweight/weights", weights)
    if isinstance(last.get("losses"), torch.Tensor):
        log_histogram(trainer, "reweight/losses", last["losses"])
    group = last.get("group")
    if stats is not None and isinstance(group, torch.Tensor):
        log_group_table(trainer, "reweight/groups", table, stats, output, group, reweighter, publish)
