"""A DDP sampler that upsamples a chosen set of samples (USEFUL's data distribution), reseeded per epoch.

Like :class:`~lightning_losses.reweighting.BalancedSampler` it is a ``DistributedSampler`` (Lightning keeps it): every
epoch all ranks build the same index list from ``seed + epoch`` and take disjoint shards ``rank::num_replicas``
(padded to a multiple of the world size, or the tail dropped). Before :meth:`UpsampleSampler.set_upsampled` it is a
plain shuffling sampler.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from lightning_losses._validation import check_int
from lightning_losses.reweighting.sampler import EpochListSampler

__all__ = ["UpsampleSampler"]


class UpsampleSampler(EpochListSampler):
    r"""Shuffled sampling of ``range(num_samples)`` in which an upsampled set appears ``factor`` times.

    The epoch's list is a random ordering of the multiset :math:`\{0..n-1\} \cup (\text{factor} - 1) \times S`, cut
    to ``num_samples`` entries: the epoch keeps the dataset's length (so the Trainer's batch count does not change
    and no dataloader reload is needed) while every draw follows the upsampled distribution (an entry of :math:`S` is
    ``factor`` times as likely as another sample).

    Args:
        num_samples: the dataset's length :math:`n`.
        num_replicas / rank: DDP world size and rank; default from the initialised process group (else 1 / 0).
        seed: base seed; epoch ``e`` uses ``seed + e``. Default 0.
        drop_last: drop the tail instead of padding to a multiple of ``num_replicas``. Default False.

    Example:
        >>> sampler = UpsampleSampler(4, seed=0)
        >>> sampler.set_upsampled(torch.tensor([False, False, False, True]), factor=3)
        >>> counts = torch.bincount(sampler.epoch_indices(), minlength=4)
        >>> int(counts.sum()), bool((counts <= torch.tensor([1, 1, 1, 3])).all())
        (4, True)
    """

    def __init__(
        self,
        num_samples: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.size = check_int("num_samples", num_samples, low=1)
        self._shard_over(self.size, num_replicas, rank, seed, drop_last)
        self.upsampled = torch.zeros(self.size, dtype=torch.bool)
        self.factor = 1
        self._drawn: tuple[int, int, torch.Tensor] | None = None  # (epoch, factor, upsampled) of the last draw

    def set_upsampled(self, upsampled: torch.Tensor, factor: int) -> None:
        """Upsample the samples where ``upsampled`` (boolean ``[num_samples]``) holds, ``factor`` (>= 1) times."""
        mask = torch.as_tensor(upsampled).detach().to("cpu")
        if mask.dtype != torch.bool or mask.shape != (self.size,):
            raise ValueError(
                f"`upsampled` must be a boolean tensor of shape [{self.size}] (the dataset's length), got "
                f"{mask.dtype} of shape {list(mask.shape)}"
            )
        self.upsampled, self.factor = mask.clone(), check_int("factor", factor, low=1)

    def stale(self) -> bool:
        """Whether the last :meth:`__iter__` drew from another epoch or upsampled set than the current one (``False``
        before any draw): the iterator that a ``DataLoader`` with workers created early then follows the old
        distribution (see :func:`~lightning_losses._compat.restart_train_iterator`)."""
        drawn = self._drawn
        if drawn is None:
            return False
        return drawn[0] != self.epoch or drawn[1] != self.factor or not torch.equal(drawn[2], self.upsampled)

    def epoch_indices(self) -> torch.Tensor:
        """The current epoch's index list (all ranks together, before sharding)."""
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        extra = torch.nonzero(self.upsampled).flatten().repeat(self.factor - 1)
        pool = torch.cat([torch.arange(self.size), extra])
        return pool[torch.randperm(pool.numel(), generator=g)[: self.size]]

    def __iter__(self) -> Iterator[int]:
        self._drawn = (self.epoch, self.factor, self.upsampled)  # `set_upsampled` replaces the tensor, never edits it
        return super().__iter__()
