"""What reweighting logs: weight statistics of the global batch and per-group loss / accuracy (torchmetrics).

* :func:`global_weight_stats`: relative effective sample size :math:`(\\sum w)^2 / (N \\sum w^2)`, min, max, the
  normalised entropy of :math:`w / \\sum w` and the fraction of zero weights, over the **global** batch, from
  one collective of seven numbers per rank (only on logging steps); its halves :func:`weight_sums` (device) and
  :func:`weight_stats_from_sums` (Python floats) serve the callback's packed logging step
  (:mod:`~lightning_losses.reweighting.step_logs`).
* :func:`group_pair_sums` (counts per group and correctness, loss sums: two ``bincount`` passes),
  :func:`sums_from_pairs` (per-group count, correct and loss sums) and :func:`group_stats_from_sums` (what they give).
* :class:`GroupAccuracy`: a ``torchmetrics.Metric`` with per-group correct / total / loss sums
  (``dist_reduce_fx="sum"``), whose ``compute`` gives per-group accuracy, loss and sample count and the worst-group
  accuracy (over the groups with samples: a batch, or a rank, without some group is normal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchmetrics

from lightning_losses.sync import sync_statistics

__all__ = [
    "GroupAccuracy",
    "global_weight_stats",
    "group_pair_sums",
    "group_stats_from_sums",
    "sums_from_pairs",
    "weight_stats_from_sums",
    "weight_sums",
]


def weight_sums(weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's sums behind :func:`global_weight_stats`: ``[sum w, sum w^2, sum w log w, nonzero, n]`` (float64, to
    be summed over ranks) and ``[max w, -min w]`` (to be maxed over ranks), on the weights' device, in a few tensor
    operations and no host read."""
    w = weights.detach() if weights.requires_grad else weights
    w = w if w.ndim == 1 else w.reshape(-1)
    w = w if w.dtype == torch.float64 else w.to(torch.float64)
    if not w.numel():
        return w.new_zeros(5), w.new_full((2,), -torch.finfo(torch.float64).max)
    low, high = torch.aminmax(w)
    # the count rides along as a number (a shape, known on the host)
    count = w.new_tensor(w.numel())
    parts = [w.sum(), torch.linalg.vecdot(w, w), torch.xlogy(w, w).sum(), torch.count_nonzero(w), count]
    return torch.stack(parts), torch.stack([high, -low])


def weight_stats_from_sums(sums: Sequence[float], extremes: Sequence[float]) -> dict[str, float]:
    """The statistics of :func:`global_weight_stats` from the (global) values of :func:`weight_sums`, in Python floats.

    Example:
        >>> sums, extremes = weight_sums(torch.tensor([1.0, 1.0, 0.0, 0.0]))
        >>> {k: round(v, 3) for k, v in weight_stats_from_sums(sums.tolist(), extremes.tolist()).items()}
        {'ess': 0.5, 'entropy': 0.5, 'max': 1.0, 'min': 0.0, 'zero_fraction': 0.5}
    """
    total, squares, wlogw, nonzero, n = (float(v) for v in sums[:5])
    if n == 0:  # no sample in the global batch: nothing to describe
        return dict.fromkeys(("ess", "entropy", "max", "min", "zero_fraction"), math.nan)
    n_safe, total_safe = max(n, 1.0), max(total, 1e-300)
    return {
        "ess": total * total / max(n_safe * squares, 1e-300),
        # H(p) with p = w / S: log S - sum(w log w) / S, normalised by log N
        "entropy": (math.log(total_safe) - wlogw / total_safe) / math.log(max(n, 2.0)),
        "max": float(extremes[0]),
        "min": -float(extremes[1]),
        "zero_fraction": (n - nonzero) / n_safe,
    }


def global_weight_stats(
    weights: torch.Tensor, extra: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Statistics of the global batch's weights (identical on every rank; one collective under DDP, one host read).

    Relative effective sample size :math:`(\\sum w)^2 / (N \\sum w^2)`, the normalised entropy of
    :math:`w / \\sum w`, ``max``, ``min`` and the fraction of zero weights, as float32 0-d tensors on the weights'
    device. ``extra``: scalars summed over ranks in the same collective, returned under their names (e.g. a
    reweighter's ``nonfinite`` count of steps that synced nothing).

    Example:
        >>> stats = global_weight_stats(torch.tensor([1.0, 1.0, 0.0, 0.0]))
        >>> {k: round(float(v), 3) for k, v in stats.items()}
        {'ess': 0.5, 'entropy': 0.5, 'max': 1.0, 'min': 0.0, 'zero_fraction': 0.5}
    """
    sums, extremes = weight_sums(weights)
    names = sorted(extra or {})
    if names:
        sums = torch.cat([sums, torch.stack([extra[k].detach().to(sums) for k in names])])  # type: ignore[index]
    synced, _ = sync_statistics({"sums": sums, "extremes": extremes}, {"sums": "sum", "extremes": "max"})
    host = torch.cat([synced["sums"], synced["extremes"]]).tolist()
    stats = weight_stats_from_sums(host[:5], host[-2:])
    values = torch.tensor([*stats.values(), *host[5:-2]], dtype=torch.float32, device=weights.device)
    return dict(zip([*stats, *names], values.unbind(0)))


def group_pair_sums(
    preds: torch.Tensor,
    target: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    losses: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per group, in two ``bincount`` passes: the sample count per ``(group, correct)`` pair (int64
    ``[2 * num_groups]``, at ``2 * group + correct``) and the loss sum (float64 ``[num_groups]``; ``None`` without
    ``losses``). ``preds``: labels ``[N]`` or logits ``[N, C]``; ``mask`` leaves out the ``False`` samples (their group
    id may be anything, e.g. an ignore_index, and their loss NaN).

    Example:
        >>> preds, target, group = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1])
        >>> pairs, losses = group_pair_sums(preds, target, group, 2)
        >>> pairs.tolist(), losses
        ([0, 2, 1, 0], None)
    """
    if preds.is_floating_point() and preds.ndim == 2:
        preds = preds.argmax(-1)
    g = group if group.dtype == torch.int64 else group.long()
    lead = 0
    if mask is not None:  # a left-out sample goes to a bin of its own (group -1), cut off below
        g, lead = (g + 1).mul_(mask), 1
    pairs = torch.bincount(torch.add(preds == target, g, alpha=2), minlength=2 * (num_groups + lead))
    if pairs.numel() > 2 * (num_groups + lead):  # a shape, known on the host: no extra sync
        raise ValueError(
            f"GroupAccuracy got group id {(pairs.numel() - 1) // 2 - lead} but `num_groups` is {num_groups}; "
            "set `num_groups` to the true number of groups"
        )
    pairs = pairs[2:] if lead else pairs  # (no slice, a call of its own, when nothing is left out)
    if losses is None:
        return pairs, None
    losses = losses.detach() if losses.requires_grad else losses
    sums = torch.bincount(g, losses.to(torch.float64), num_groups + lead)
    return pairs, sums[1:] if lead else sums


def sums_from_pairs(pairs: torch.Tensor, losses: torch.Tensor | None) -> torch.Tensor:
    """:func:`group_pair_sums`' values as count, correct and loss sum per group, float64 ``[num_groups, 3]`` (loss 0
    without ``losses``).

    Example:
        >>> preds, target, group = torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1])
        >>> sums_from_pairs(*group_pair_sums(preds, target, group, 2))
        tensor([[2., 2., 0.],
                [1., 0., 0.]], dtype=torch.float64)
    """
    by_pair = pairs.view(-1, 2)
    loss = torch.zeros(by_pair.shape[0], dtype=torch.float64, device=pairs.device) if losses is None else losses
    return torch.stack([by_pair.sum(1), by_pair[:, 1], loss], 1).to(torch.float64)


def group_stats_from_sums(sums: Sequence[float]) -> dict[str, Any]:
    """Per-group accuracy, mean loss and count, and the worst-group accuracy (over the groups with samples; NaN when
    none has any), in Python floats, from the (global) values of :func:`sums_from_pairs` flattened.

    Example:
        >>> group_stats_from_sums([2.0, 2.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 3.0])
        {'acc': [1.0, 0.0, 0.0], 'loss': [0.5, 0.0, 3.0], 'count': [2.0, 0.0, 1.0], 'worst_acc': 0.0}
    """
    count, correct, loss = sums[0::3], sums[1::3], sums[2::3]
    acc = [c / max(n, 1.0) for c, n in zip(correct, count)]
    present = [a for a, n in zip(acc, count) if n > 0]
    return {
        "acc": acc,
        "loss": [v / max(n, 1.0) for v, n in zip(loss, count)],
        "count": list(count),
        "worst_acc": min(present) if present else math.nan,
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
        sums = sums_from_pairs(*group_pair_sums(preds, target, group, self.num_groups, losses, mask))
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
