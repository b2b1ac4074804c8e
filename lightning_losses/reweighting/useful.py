r"""USEFUL: upsample the slow-learnable examples found early in training (Nguyen, Haddad, Gan, Mirzasoleiman,
*Changing the Training Data Distribution to Reduce Simplicity Bias Improves In-distribution Generalization*,
NeurIPS 2024; arXiv 2404.17768, code "USEFUL" = UpSample Early For Uniform Learning).

Procedure (paper): train for :math:`t` epochs (about 5-10% of the run), cluster the examples of every class into two
groups by the network's output (k-means, :math:`k = 2`), upsample the cluster with the **higher average loss** once
(each of its examples appears twice), then retrain from scratch on that distribution; it combines with SGD, SAM and
SAM variants. Here, in one run: during epoch :math:`t - 1` (0-based; the :math:`t`-th epoch) every sample's output and
cross-entropy from its training forward pass are recorded by ``index``; at the start of epoch :math:`t` the clusters
are computed (:func:`~lightning_losses.functional.clustering.slow_cluster`) and the training
:class:`~lightning_losses.reweighting.UpsampleSampler` draws the slow clusters ``factor`` times as often from then
on. Differences from the reference, stated: the same model continues (no restart from scratch: restart yourself by
training a fresh model with the checkpointed split, ``state_dict()["upsampled"]``); the outputs are those of the
epoch's training passes (each sample's last), not a separate evaluation pass; k-means starts from each class's
lowest- and highest-loss samples (deterministic) instead of random restarts; the epoch keeps the dataset's length
(see :class:`~lightning_losses.reweighting.UpsampleSampler`).

Under DDP the outputs are all-gathered at every recording step (every rank holds the whole table), the split is
computed on every rank and rank 0's is broadcast, so the decision is identical everywhere; each rank then takes its
shard of the same upsampled index list. Memory during the separating epoch: ``num_samples x (D + 2)`` floats
(freed after the split); afterwards one bool per sample.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from typing_extensions import override

from lightning_losses import distributed
from lightning_losses._compat import restart_train_iterator
from lightning_losses._state import representative, step_skipped
from lightning_losses._validation import check_int, check_state_keys
from lightning_losses.callbacks import CALLBACKS, MixinCallback
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.clustering import slow_cluster
from lightning_losses.reweighting.upsample import UpsampleSampler
from lightning_losses.sync import sync_statistics

__all__ = ["USEFUL"]

_STATE_KEYS = ("outputs", "losses", "targets", "stamp", "upsampled", "decided")


@CALLBACKS.register("useful", aliases=("upsample_early",))
class USEFUL(MixinCallback):
    r"""UpSample Early For Uniform Learning: per-class two-means on early outputs, the higher-loss cluster upsampled.

    Needs ``compute_loss(logits=..., target=..., index=...)`` (``index``: the sample's position in the training set)
    and a training DataLoader whose sampler is an :class:`~lightning_losses.reweighting.UpsampleSampler` (the demo:
    ``data: {sampler: upsample}``). Pair it with ``SAM`` as the paper does, or use it alone.

    Args:
        separating_epoch: :math:`t \ge 1`; outputs are recorded during the :math:`t`-th epoch (0-based ``t - 1``) and
            the upsampling applies from epoch ``t`` on. The paper picks :math:`t` at about 5-10% of the training
            epochs. Default 1.
        factor: how many times a slow-cluster sample appears (``>= 2``). Default 2 (the paper upsamples once).
        input: name of the ``compute_loss`` tensor ``[N, D]`` to cluster (the paper: the network output). Default
            ``"logits"``; the loss that picks the slow cluster is always the cross-entropy of ``logits``.
        num_samples: training-set size; default: the length of the training DataLoader's dataset.
        iterations: at most this many k-means rounds per class. Default 100.

    Example:
        >>> cb = USEFUL(separating_epoch=2)
        >>> cb.state_key
        "USEFUL{'separating_epoch': 2, 'factor': 2}"
    """

    slot = "terms"

    def __init__(
        self,
        separating_epoch: int = 1,
        factor: int = 2,
        input: str = "logits",
        num_samples: int | None = None,
        iterations: int = 100,
    ) -> None:
        self.separating_epoch = check_int("separating_epoch", separating_epoch, low=1)
        self.factor = check_int("factor", factor, low=2)
        if not isinstance(input, str) or not input:
            raise ConfigurationError(f"`input` must be a non-empty string, got {input!r}")
        self.input = input
        self.num_samples = None if num_samples is None else check_int("num_samples", num_samples, low=1)
        self.iterations = check_int("iterations", iterations, low=1)
        self.outputs: torch.Tensor | None = None  #: ``[num_samples, D]`` outputs of the separating epoch
        self.losses: torch.Tensor | None = None  #: ``[num_samples]`` their cross-entropy
        self.targets: torch.Tensor | None = None  #: ``[num_samples]`` labels
        self.stamp: torch.Tensor | None = None  #: ``[num_samples]`` 1 where recorded
        self.upsampled: torch.Tensor | None = None  #: ``[num_samples]`` bool: the slow clusters (after the split)
        self.decided = False
        self.nonfinite: torch.Tensor | int = 0  #: samples not recorded (non-finite outputs; skipped steps not counted)
        self._journal: list[tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None
        self._nonfinite_before: torch.Tensor | int = 0  # the count at the micro-batch's start (undone if skipped)

    @override
    def state_key_fields(self) -> dict[str, Any]:
        return {"separating_epoch": self.separating_epoch, "factor": self.factor}

    # ------------------------------------------------------------------ lifecycle
    @staticmethod
    def _sampler(trainer: Any) -> UpsampleSampler:
        loader = getattr(trainer, "train_dataloader", None)
        sampler = getattr(loader, "sampler", None)
        if not isinstance(sampler, UpsampleSampler):
            raise ConfigurationError(
                "USEFUL needs a training DataLoader whose `sampler` is `lightning_losses.UpsampleSampler("
                f"len(train_set))` (the demo: `data: {{sampler: upsample}}`); got {type(sampler).__name__}"
            )
        return sampler

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        sampler = self._sampler(trainer)
        if self.num_samples is None:
            self.num_samples = sampler.size
        if sampler.size != self.num_samples:
            raise ConfigurationError(
                f"USEFUL: `num_samples`={self.num_samples} but the training UpsampleSampler covers {sampler.size} "
                "samples; they must both be the training set's length"
            )
        self._first_epoch_of_fit = True

    @override
    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        epoch = int(trainer.current_epoch)
        if not self.decided and epoch >= self.separating_epoch:
            self.decide(device=pl_module.device)
            count = self.upsampled.sum().float()  # type: ignore[union-attr]
            pl_module.log("useful/upsampled", count, on_step=False, on_epoch=True, sync_dist=False)
        sampler = self._sampler(trainer)
        if self.decided:  # also after a resume: the sampler is rebuilt bare
            sampler.set_upsampled(self.upsampled.cpu(), self.factor)  # type: ignore[union-attr]
        # the fit's first iterator exists before this hook (later ones are made after it): a loader with workers has
        # drawn from the sampler as it was (a resume at an epoch boundary: epoch 0's order, nothing upsampled)
        if self.__dict__.pop("_first_epoch_of_fit", False) and sampler.stale():
            restart_train_iterator(trainer)

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._journal, self._nonfinite_before = [], self.nonfinite

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if step_skipped(pl_module, outputs) and self._journal:
            for index, rows in reversed(self._journal):  # the skipped step recorded nothing
                for name, old in rows.items():
                    getattr(self, name)[index] = old
            self.nonfinite = self._nonfinite_before  # nor counted anything
        self._journal = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _STATE_KEYS}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_keys("USEFUL", state_dict, _STATE_KEYS)
        for name in _STATE_KEYS:
            setattr(self, name, state_dict[name])
        self.decided = bool(self.decided)

    # ------------------------------------------------------------------ recording and the split
    def extra_terms(self, module: Any, tensors: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """The mixin's ``"terms"`` hook: records in the separating epoch, adds no term."""
        recording = not self.decided and int(module.current_epoch) == self.separating_epoch - 1
        if recording and not getattr(module, "objective_logging_suppressed", False):  # perturbed passes: no record
            for key in {self.input, "logits", "target", "index"}:
                if key not in tensors:
                    raise ValueError(f"USEFUL needs `{key}` in compute_loss(...); got {sorted(tensors)}")
            self.record(tensors["index"], tensors[self.input], tensors["logits"], tensors["target"])
        return {}

    def _tables(self, width: int, device: torch.device) -> None:
        if self.num_samples is None:
            raise ConfigurationError("USEFUL needs `num_samples` (the training-set size) outside a Trainer")
        n = self.num_samples
        if self.outputs is None or self.outputs.shape != (n, width):
            self.outputs = torch.zeros(n, width, dtype=torch.float32, device=device)
            self.losses = torch.zeros(n, dtype=torch.float32, device=device)
            self.targets = torch.full((n,), -1, dtype=torch.int64, device=device)
            self.stamp = torch.zeros(n, dtype=torch.bool, device=device)
        elif self.outputs.device != device:
            for name in ("outputs", "losses", "targets", "stamp"):
                setattr(self, name, getattr(self, name).to(device))

    def record(self, index: torch.Tensor, outputs: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
        """Store this batch's detached outputs, cross-entropy and labels by ``index`` (from every rank under DDP)."""
        values = outputs.detach().float().reshape(outputs.shape[0], -1)
        target = target.long()
        valid = target >= 0  # ignore_index labels are never clustered
        loss = F.cross_entropy(logits.detach().float(), target.clamp_min(0), reduction="none")
        self._tables(values.shape[1], values.device)
        index = index.long()
        if distributed.is_distributed():
            stats = {"index": index, "values": values, "loss": loss, "target": target, "valid": valid}
            synced, _ = sync_statistics(stats, dict.fromkeys(stats, "cat"))
            index, values, loss = synced["index"].long(), synced["values"], synced["loss"]
            target, valid = synced["target"].long(), synced["valid"].bool()
        n = self.num_samples
        torch._assert_async(((index >= 0) & (index < n)).all(), f"USEFUL: `index` must be in [0, {n})")
        finite = torch.isfinite(values).all(-1) & torch.isfinite(loss) & valid
        self.nonfinite = self.nonfinite + (valid & ~finite).sum()
        rep = representative(index, finite)  # duplicates (sampler padding) all write the first finite copy's row
        keep = finite[rep]
        rows = {"outputs": values, "losses": loss, "targets": target, "stamp": torch.ones_like(valid)}
        old = {name: getattr(self, name)[index] for name in rows}
        if self._journal is not None:
            self._journal.append((index, old))
        for name, value in rows.items():
            mask = keep if value.ndim == 1 else keep[:, None]
            getattr(self, name)[index] = torch.where(mask, value[rep].to(old[name].dtype), old[name])

    def decide(self, device: torch.device | None = None) -> torch.Tensor:
        """Compute the slow clusters from the recorded table (rank 0's result on every rank) and free the table.

        ``device``: where the broadcast runs (the module's device: NCCL needs a GPU tensor, while a table restored
        from a checkpoint may sit on the CPU); default the table's device."""
        if self.outputs is None:
            raise ConfigurationError(
                f"USEFUL recorded no outputs before epoch {self.separating_epoch}: it needs `compute_loss(logits=..., "
                f"target=..., index=...)` in training during epoch {self.separating_epoch - 1} (0-based)"
            )
        mask = slow_cluster(self.outputs, self.targets, self.losses, self.stamp, self.iterations)  # type: ignore
        if distributed.is_distributed():  # the same decision on every rank, whatever the floating-point path
            group = distributed.data_parallel_group()
            flags = mask.to(device=device or mask.device, dtype=torch.uint8)
            src = dist.get_global_rank(group, 0) if group is not None else 0
            dist.broadcast(flags, src=src, group=group)
            mask = flags.bool().to(mask.device)
        self.upsampled, self.decided = mask, True
        self.outputs = self.losses = self.targets = self.stamp = None
        return mask
