"""Class-level strategies: class-balanced weights (effective number of samples) and classes weighted by their
running loss; and the per-id counting that they share with :class:`~lightning_losses.reweighting.GroupDRO`.

Per-class loss sums and counts are summed over ranks at the sync point (one packed collective), so the running class
losses are identical on every rank; see :mod:`~lightning_losses.reweighting.groups` for how the number of classes is
found when it is not given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from lightning_losses._validation import check_int, check_number, check_probability_vector
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional import reweighting as F
from lightning_losses.reweighting.base import REWEIGHTERS, Reweighter
from lightning_losses.reweighting.store import PerSampleStore
from lightning_losses.sync import sync_statistics

__all__ = ["ClassBalanced", "EMAClassLoss", "global_num_ids", "id_counts"]


def global_num_ids(ids: torch.Tensor, mask: torch.Tensor | None = None) -> int:
    """Number of ids in the global batch (largest id over all ranks, plus one; ``False`` entries of ``mask`` left
    out): one ``max`` collective."""
    ids = ids.long()  # -1 below must not wrap in a narrow dtype
    if mask is not None:
        ids = ids.masked_fill(~mask, -1)
    local = ids.max().reshape(1) if ids.numel() else ids.new_full((1,), -1)
    synced, _ = sync_statistics({"max": local}, {"max": "max"})
    return int(synced["max"]) + 1


def id_counts(
    ids: torch.Tensor,
    size: int,
    weights: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-id sums of ``weights`` (counts without), ``float64 [size]``; ``False`` entries of ``mask`` and ids
    outside ``[0, size)`` add nothing (the base range-checks the ids on every rank alike; no host sync here)."""
    valid = (ids >= 0) & (ids < size)
    if mask is not None:
        valid = valid & mask
    w = valid.to(torch.float64) if weights is None else torch.where(valid, weights.to(torch.float64), 0.0)
    return torch.zeros(size, dtype=torch.float64, device=ids.device).index_add_(0, ids.masked_fill(~valid, 0), w)


def _num_classes(explicit: int | None, state: torch.Tensor, inputs: Mapping[str, Any]) -> int | None:
    if state.numel():
        return int(state.numel())
    if explicit is not None:
        return explicit
    logits = inputs.get("logits")
    if isinstance(logits, torch.Tensor) and logits.ndim == 2:
        return int(logits.shape[1])
    return None


@REWEIGHTERS.register("class_balanced", aliases=("cb", "effective_number"))
class ClassBalanced(Reweighter):
    r"""Class-balanced weights from the effective number of samples (Cui et al., CVPR 2019).

    :math:`w_c = (1-\beta)/(1-\beta^{n_c})`, normalised to :math:`\sum_c w_c = C`; sample :math:`i` gets
    :math:`w_{y_i}`. With ``samples_per_class`` the weights are fixed (no collective at all). Without it the class
    counts are counted online across ranks from the gathered ``target`` and ``index`` (required then: each sample
    counts once, whatever the epoch or the sampler's padding, so the counts are exact after one epoch instead of
    growing with every visit). Memory when counting: 4 bytes per sample (the table of counted indices).

    Args:
        beta: :math:`\beta \in [0, 1)`. Default 0.999 (the paper's grid: 0.9 ... 0.9999).
        samples_per_class: training-set class counts :math:`n_c`, if known.
        num_classes: number of classes when counting; default from ``logits [N, C]`` or the first global batch.
        num_samples: dataset size, for the table of counted indices (grows on demand otherwise).
        start_epoch: deferred re-weighting, DRW (Cao et al., NeurIPS 2019, with ``ldam``): every sample weighs 1
            before this training epoch (counting goes on), the class-balanced weights from it on. Default 0 (from
            the start); the paper uses 160 of 200 epochs with ``beta=0.9999``.

    Example:
        >>> r = ClassBalanced(beta=0.999, samples_per_class=[1, 3])
        >>> r(losses=torch.zeros(3), target=torch.tensor([0, 1, 1])).round(decimals=4)
        tensor([1.4996, 0.5004, 0.5004])
    """

    requires = ("target",)
    missing_hints = {"index": ", or give the training-set class counts as `samples_per_class`"}

    def __init__(
        self,
        beta: float = 0.999,
        samples_per_class: Sequence[float] | None = None,
        num_classes: int | None = None,
        num_samples: int | None = None,
        start_epoch: int = 0,
    ) -> None:
        super().__init__()
        self.beta = check_number("beta", beta, low=0.0, high=1.0, high_open=True)
        self.start_epoch = check_int("start_epoch", start_epoch, low=0)
        counts = check_probability_vector("samples_per_class", samples_per_class)
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, low=1)
        if counts is not None and self.num_classes is not None and counts.numel() != self.num_classes:
            raise ConfigurationError(
                f"`num_classes` ({self.num_classes}) must equal the length of `samples_per_class` ({counts.numel()})"
            )
        self.fixed = counts is not None
        self.hparams = self.capture_hparams(locals())
        self.add_state("class_count", counts.to(torch.float64) if counts is not None else torch.zeros(0))
        if not self.fixed:
            self.requires = ("target", "index")  # counting each sample once needs its dataset index
            self.statistics.update(target="cat", index="cat")
            if num_samples is not None:
                num_samples = check_int("num_samples", num_samples, low=1)
            self.add_store("seen", PerSampleStore({}, num_samples, once_per_epoch=False))

    def id_sizes(self, inputs):
        arg = "samples_per_class" if self.fixed else "num_classes"  # the argument that fixes the number of classes
        return {"target": (arg, _num_classes(self.num_classes, self.class_count, inputs))}

    def local_statistics(self, losses, inputs):
        if self.fixed:
            return {}
        return {"target": inputs["target"], "index": inputs["index"]}

    def compute(self, losses, synced, inputs):
        if not self.fixed:
            target, valid = synced["target"], synced.get("sample_mask")
            size = _num_classes(self.num_classes, self.class_count, inputs)
            if size is None:  # first step: from the global batch (one host sync, once)
                target = target.long()  # -1 must not wrap in a narrow dtype
                size = int((target if valid is None else target.masked_fill(~valid, -1)).max()) + 1
            if self.class_count.numel() == 0:
                self.class_count = torch.zeros(size, dtype=torch.float64, device=losses.device)
            index = synced["index"]
            new = self.seen.fresh(index, 0, valid) & ~self.seen.seen(index)
            self.seen.write(index, new, 0)
            self.class_count = self.class_count + id_counts(target, size, mask=new)
        weights = self.class_weights()[self.masked_ids(inputs["target"], inputs)].to(losses.dtype)
        if self.start_epoch:  # DRW: decided on the device from the epoch state (no host sync)
            weights = torch.where(self.epoch >= self.start_epoch, weights, torch.ones_like(weights))
        return weights

    def class_weights(self) -> torch.Tensor:
        """The ``[C]`` class-balanced weights of the current counts (whatever the epoch)."""
        return F.class_balanced_weights(self.class_count, self.beta)

    def log_values(self):
        return {"class_weight": self.class_weights()}


@REWEIGHTERS.register("ema_class_loss")
class EMAClassLoss(Reweighter):
    r"""Classes weighted by their running loss: :math:`w_c = C\,\mathrm{softmax}(\bar L / T)_c`, sample :math:`i` gets
    :math:`w_{y_i}`.

    :math:`\bar L_c \leftarrow m \bar L_c + (1-m) \hat L_c` for every class present in the global batch (class loss
    sums and counts summed over ranks); the first observation initialises :math:`\bar L_c = \hat L_c`. Classes the
    model currently fits worst get up-weighted (a class-level, smoothed version of KL-DRO).

    Args:
        momentum: :math:`m \in [0, 1)`. Default 0.9.
        temperature: :math:`T > 0`. Default 1.0.
        num_classes: number of classes; default from ``logits [N, C]`` or the first global batch.

    Example:
        >>> r = EMAClassLoss(momentum=0.9, temperature=1.0, num_classes=2)
        >>> r(losses=torch.tensor([0.0, 1.0]), target=torch.tensor([0, 1])).round(decimals=4)
        tensor([0.5379, 1.4621])
    """

    requires = ("target",)

    def __init__(self, momentum: float = 0.9, temperature: float = 1.0, num_classes: int | None = None) -> None:
        super().__init__()
        self.momentum = check_number("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes, low=1)
        self.hparams = self.capture_hparams(locals())
        self.statistics.update(class_loss="sum", class_count="sum")
        self.add_state("ema", torch.zeros(0, dtype=torch.float64))
        self.add_state("initialised", torch.zeros(0, dtype=torch.bool))
        # class loss sums / counts of the micro-batches of the current optimizer step (zero between steps)
        self.add_state("pending_loss", torch.zeros(0, dtype=torch.float64))
        self.add_state("pending_count", torch.zeros(0, dtype=torch.float64))

    def local_statistics(self, losses, inputs):
        target, mask = inputs["target"], inputs.get("sample_mask")
        if self.ema.numel() == 0:
            size = _num_classes(self.num_classes, self.ema, inputs) or global_num_ids(target, mask)
            self.ema = torch.zeros(size, dtype=torch.float64, device=losses.device)
            self.initialised = torch.zeros(size, dtype=torch.bool, device=losses.device)
            self.pending_loss, self.pending_count = torch.zeros_like(self.ema), torch.zeros_like(self.ema)
        size = self.ema.numel()
        return {"class_loss": id_counts(target, size, losses, mask), "class_count": id_counts(target, size, mask=mask)}

    def id_sizes(self, inputs):
        return {"target": ("num_classes", int(self.ema.numel()))}

    def compute(self, losses, synced, inputs):
        loss_sum = self.pending_loss + synced["class_loss"]
        count_sum = self.pending_count + synced["class_count"]
        present = count_sum > 0
        mean = loss_sum / count_sum.clamp_min(1.0)
        updated = torch.where(self.initialised, self.momentum * self.ema + (1.0 - self.momentum) * mean, mean)
        ema = torch.where(present, updated, self.ema)
        self.pending_loss, self.pending_count = loss_sum, count_sum
        zeros = torch.zeros_like(loss_sum)
        self.stage(ema=ema, initialised=self.initialised | present, pending_loss=zeros, pending_count=zeros)
        class_weights = F.softmax_weights(ema, self.temperature)
        return class_weights[self.masked_ids(inputs["target"], inputs)].to(losses.dtype)

    def class_weights(self) -> torch.Tensor:
        """Current ``[C]`` class weights (sum ``C``), from the state of the last optimizer step."""
        return F.softmax_weights(self.ema, self.temperature)

    def log_values(self):
        return {"class_weight": self.class_weights()}
