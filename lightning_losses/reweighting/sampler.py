"""A class- or group-balanced sampler that works under DDP (subsampling or oversampling, reseeded per epoch).

It is a ``DistributedSampler`` (so Lightning keeps it instead of wrapping it): every epoch all ranks build the same
resampled index list from ``seed + epoch``, pad it to a multiple of the world size (or drop the tail) and take
disjoint shards ``rank::num_replicas``. Lightning calls :meth:`set_epoch` every epoch; call it yourself otherwise.

* ``"oversample"``: draw ``num_samples`` indices with replacement, probability of sample ``i`` proportional to
  ``1 / n_{g_i}`` (every group equally likely; Group DRO's ``--reweight_groups``).
* ``"subsample"``: keep ``min_g n_g`` random samples of every group, without replacement (SUBG / SUBY of
  Chaudhuri et al., ICML 2023), then shuffle; an epoch has ``G * min_g n_g`` samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler

from lightning_losses._validation import check_choice, check_int
from lightning_losses.distributed import rank as current_rank
from lightning_losses.distributed import world_size
from lightning_losses.errors import ConfigurationError

__all__ = ["BalancedSampler", "EpochListSampler"]

_MODES = ("oversample", "subsample")


class EpochListSampler(DistributedSampler):
    """A ``DistributedSampler`` whose epoch is one index list built identically on every rank from ``seed + epoch``
    (:meth:`epoch_indices`), padded to a multiple of ``num_replicas`` (or its tail dropped) and sharded
    ``rank::num_replicas``. Subclasses call :meth:`_shard_over` with the epoch's length and implement
    :meth:`epoch_indices`.

    A ``DataModule`` that builds one should ``set_epoch`` it to the epoch the Trainer runs next
    (``trainer.fit_loop.epoch_progress.current.processed``) when it builds the loader: when a fit resumes, Lightning
    calls ``set_epoch`` only after it has created the epoch's iterator (Lightning issue #21938), and a loader with
    workers draws its first indices then. The demo's ``DigitsDataModule`` does this."""

    def _shard_over(self, total: int, num_replicas: int | None, rank: int | None, seed: int, drop_last: bool) -> None:
        self.total = total
        self.num_replicas = world_size() if num_replicas is None else check_int("num_replicas", num_replicas, low=1)
        self.rank = current_rank() if rank is None else check_int("rank", rank, low=0, high=self.num_replicas - 1)
        self.seed = check_int("seed", seed)
        self.drop_last = bool(drop_last)
        self.shuffle = True
        self.epoch = 0
        self.num_samples = total // self.num_replicas if self.drop_last else math.ceil(total / self.num_replicas)
        self.total_size = self.num_samples * self.num_replicas

    def epoch_indices(self) -> torch.Tensor:
        """The current epoch's index list (all ranks together, before sharding)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        if self.drop_last:
            indices = indices[: self.total_size]
        elif self.total_size > indices.numel():
            indices = indices.repeat(math.ceil(self.total_size / indices.numel()))[: self.total_size]
        return iter(indices[self.rank : self.total_size : self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.num_samples


class BalancedSampler(EpochListSampler):
    """Balanced sampling over groups (or classes) of a map-style dataset.

    Args:
        groups: group (or class) id of every dataset sample, in dataset order.
        mode: ``"oversample"`` or ``"subsample"``. Default ``"oversample"``.
        num_samples: indices per epoch (all ranks together) for ``"oversample"``; default ``len(groups)``. Not
            allowed with ``"subsample"``.
        num_replicas / rank: DDP world size and rank; default from the initialised process group (else 1 / 0).
        seed: base seed; epoch ``e`` uses ``seed + e``. Default 0.
        drop_last: drop the tail instead of padding to a multiple of ``num_replicas``. Default False.

    Example:
        >>> sampler = BalancedSampler([0, 0, 0, 1], mode="subsample", seed=0)
        >>> sorted(torch.tensor([[0, 0, 0, 1][i] for i in sampler]).tolist())
        [0, 1]
    """

    def __init__(
        self,
        groups: Sequence[int] | torch.Tensor,
        mode: str = "oversample",
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        ids = torch.as_tensor(groups)
        if ids.ndim != 1 or ids.numel() == 0 or ids.is_floating_point() or bool((ids < 0).any()):
            raise ValueError(f"`groups` must be a non-empty 1-D sequence of non-negative integer ids, got {groups!r}")
        self.groups = ids.long()
        self.mode = check_choice("mode", mode, _MODES)
        if num_samples is not None and self.mode == "subsample":
            raise ConfigurationError(
                f"`num_samples` applies to mode='oversample' only (a subsampled epoch has G * min_g n_g samples), "
                f"got num_samples={num_samples!r} with mode='subsample'"
            )
        total = len(ids) if num_samples is None else check_int("num_samples", num_samples, low=1)
        self.counts = counts = torch.bincount(self.groups)
        if self.mode == "subsample":
            total = int(counts[counts > 0].min()) * int((counts > 0).sum())
        self._shard_over(total, num_replicas, rank, seed, drop_last)

    def epoch_indices(self) -> torch.Tensor:
        """The resampled index list of the current epoch (all ranks together, before sharding)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.mode == "oversample":
            probs = 1.0 / self.counts[self.groups].double()
            return torch.multinomial(probs, self.total, replacement=True, generator=g)
        n_min = int(self.counts[self.counts > 0].min())
        kept = []
        for gid in torch.nonzero(self.counts).flatten().tolist():  # loop over groups, not samples
            members = torch.nonzero(self.groups == gid).flatten()
            kept.append(members[torch.randperm(members.numel(), generator=g)[:n_min]])
        chosen = torch.cat(kept)
        return chosen[torch.randperm(chosen.numel(), generator=g)]
