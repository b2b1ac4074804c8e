"""Group- and class-level strategies: Group DRO, class-balanced weights, classes weighted by their running loss (the
class-level ones live in :mod:`~lightning_losses.reweighting.classes` and are re-exported here).

Per-group / per-class loss sums and counts are summed over ranks at the sync point (one packed collective), so the
group weights ``q`` and the running class losses are identical on every rank. When the number of groups / classes
is not given (and, for classes, no ``logits [N, C]`` are passed), it is taken from the first global batch with one
extra ``max`` collective on that step only; a larger (or negative) id later raises an error naming the argument to
set, on every rank alike (the ids' extremes travel in the step's packed buffer). Under
:class:`~lightning_losses.reweighting.SampleReweighting`, ``group_dro`` refuses to start training without a known
number of groups (a rare group can miss the first batch).

Masked samples (``sample_mask``) count in no sum or count. ``group_dro`` and ``ema_class_loss`` update their state
once per optimizer step from the sums and counts of all its micro-batches (see :mod:`~.base`, "Optimizer steps").
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_losses._validation import check_int, check_number, check_probability_vector
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional import reweighting as F
from lightning_losses.reweighting.base import REWEIGHTERS, Reweighter
from lightning_losses.reweighting.classes import ClassBalanced, EMAClassLoss, global_num_ids, id_counts

__all__ = ["ClassBalanced", "EMAClassLoss", "GroupDRO"]


@REWEIGHTERS.register("group_dro", aliases=("groupdro",))
class GroupDRO(Reweighter):
    r"""Group DRO (Sagawa et al., ICLR 2020): :math:`\min_\theta \max_{q \in \Delta_G} \sum_g q_g L_g(\theta)`.

    Each step: per-group mean losses :math:`\hat L_g` of the global batch (sums and counts summed over ranks; 0 for
    absent groups, as in the reference code), :math:`q_g \leftarrow q_g \exp(\eta(\hat L_g + C/\sqrt{n_g}))`,
    renormalise, then weight sample :math:`i` by :math:`N q_{g_i} / n_{g_i}` so the weighted mean is
    :math:`\sum_g q_g \hat L_g` (divided by :math:`\sum_{g \text{ present}} q_g`: the objective normalises by the
    global weight sum). Pair it with strong L2 / early stopping and group-balanced sampling, as the paper does.

    Args:
        step_size: :math:`\eta > 0`. Default 0.01 (reference and DomainBed default).
        adjustment: generalisation adjustment :math:`C \ge 0`. Default 0. Needs ``group_counts``.
        num_groups: number of groups; default: from ``group_counts``, the datamodule's ``num_groups`` (under
            :class:`~lightning_losses.reweighting.SampleReweighting`) or else the first global batch (which may
            miss a rare group: a later, larger id then raises an error naming this argument; under
            :class:`~lightning_losses.reweighting.SampleReweighting` training does not start without it).
        group_counts: training-set size of each group (for the adjustment).

    Example:
        >>> r = GroupDRO(step_size=1.0, num_groups=2)
        >>> r(losses=torch.tensor([0.0, 0.0, 1.0]), group=torch.tensor([0, 0, 1])).round(decimals=4)
        tensor([0.4034, 0.4034, 2.1932])
        >>> r.q.float().round(decimals=4)
        tensor([0.2689, 0.7311])
    """

    requires = ("group",)
    hparams_exclude = ("group_counts",)  # shown through `num_groups` (its length)

    def __init__(
        self,
        step_size: float = 0.01,
        adjustment: float = 0.0,
        num_groups: int | None = None,
        group_counts: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.step_size = check_number("step_size", step_size, low=0.0, low_open=True)
        self.adjustment = check_number("adjustment", adjustment, low=0.0)
        counts = check_probability_vector("group_counts", group_counts)
        if num_groups is not None:
            num_groups = check_int("num_groups", num_groups, low=1)
        if counts is not None:
            if (counts <= 0).any():
                raise ConfigurationError(f"`group_counts` must be positive, got {list(group_counts)!r}")
            if num_groups is not None and num_groups != counts.numel():
                raise ConfigurationError(
                    f"`num_groups` ({num_groups}) must equal the length of `group_counts` ({counts.numel()})"
                )
            num_groups = counts.numel()
        if self.adjustment > 0 and counts is None:
            raise ConfigurationError("`adjustment` > 0 needs `group_counts` (the training-set size of each group)")
        self.group_counts = counts
        self.hparams = self.capture_hparams(locals())
        self.statistics.update(group_loss="sum", group_count="sum")
        q = torch.full((num_groups,), 1.0 / num_groups) if num_groups else torch.zeros(0)
        self.add_state("q", q.to(torch.float64))
        # group loss sums / counts of the micro-batches of the current optimizer step (zero between steps)
        self.add_state("pending_loss", torch.zeros(num_groups or 0, dtype=torch.float64))
        self.add_state("pending_count", torch.zeros(num_groups or 0, dtype=torch.float64))
        self.group_loss = torch.zeros(0)

    @property
    def num_groups(self) -> int:
        return int(self.q.numel())

    def size_groups(self, num_groups: int) -> None:
        if self.num_groups == 0:  # not given, not yet taken from a batch: uniform q over the data's groups
            g = check_int("num_groups", num_groups, low=1)
            self.q = torch.full((g,), 1.0 / g, dtype=torch.float64, device=self.q.device)
            self.pending_loss, self.pending_count = torch.zeros_like(self.q), torch.zeros_like(self.q)

    def unsized(self) -> str | None:
        return "num_groups" if self.num_groups == 0 else None

    def id_sizes(self, inputs):
        return {"group": ("num_groups", self.num_groups)}

    def local_statistics(self, losses, inputs):
        group, mask = inputs["group"], inputs.get("sample_mask")
        if self.num_groups == 0:  # first step without num_groups: one extra collective
            g = global_num_ids(group, mask)
            self.q = torch.full((g,), 1.0 / g, dtype=torch.float64, device=losses.device)
            self.pending_loss, self.pending_count = torch.zeros_like(self.q), torch.zeros_like(self.q)
        size = self.num_groups
        return {
            "group_loss": id_counts(group, size, losses, mask),
            "group_count": id_counts(group, size, mask=mask),
        }

    def compute(self, losses, synced, inputs):
        loss_sum = self.pending_loss + synced["group_loss"]
        count_sum = self.pending_count + synced["group_count"]
        self.group_loss = loss_sum / count_sum.clamp_min(1.0)  # mean over the step's micro-batches so far
        adjustment = None
        if self.adjustment > 0:
            adjustment = self.adjustment / self.group_counts.to(self.q.device, torch.float64).sqrt()
        q = F.group_dro_update(self.q, self.group_loss, self.step_size, adjustment)
        self.pending_loss, self.pending_count = loss_sum, count_sum
        self.stage(q=q, pending_loss=torch.zeros_like(loss_sum), pending_count=torch.zeros_like(count_sum))
        group = self.masked_ids(inputs["group"], inputs)
        return F.group_dro_weights(group, q, synced["group_count"]).to(losses.dtype)

    def log_values(self):
        return {"q": self.q, "batch_group_loss": self.group_loss}

    def _extra_snapshot(self):
        return {"group_loss": self.group_loss}  # a skipped micro-batch's must not show in the logs
