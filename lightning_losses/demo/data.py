"""Offline demo data: scikit-learn's bundled digits (1,797 8x8 images, 10 classes), with optional corruption.

Batches are dicts: ``x [B, F]`` float32, ``target [B]`` int64, ``index [B]`` int64 (position in the training set)
and, when spurious groups are on, ``group [B]`` int64. ``sampler="balanced_groups"`` / ``"balanced_classes"`` draws
the training batches with :class:`~lightning_losses.reweighting.BalancedSampler` (group- / class-balanced, under DDP
too).
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from lightning_losses._compat import epoch_to_run
from lightning_losses._validation import check_bool, check_choice, check_int, check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.reweighting.sampler import BalancedSampler
from lightning_losses.reweighting.upsample import UpsampleSampler

__all__ = ["DictDataset", "DigitsDataModule", "make_digits_splits"]

SAMPLERS = ("none", "balanced_groups", "balanced_classes", "upsample")
SAMPLER_MODES = ("oversample", "subsample")


class DictDataset(Dataset):
    """In-memory dataset returning one dict of tensors per sample (``index`` is the sample's position)."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        lengths = {len(t) for t in tensors.values()}
        if len(lengths) != 1:
            raise ValueError(f"all tensors must have the same length, got {sorted(lengths)}")
        self.tensors = tensors
        self.tensors["index"] = torch.arange(lengths.pop())

    def __len__(self) -> int:
        return len(self.tensors["index"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def _stratified_split(y: np.ndarray, fractions: tuple[float, float], rng: np.random.Generator):
    train, val, test = [], [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val, n_test = round(len(idx) * fractions[0]), round(len(idx) * fractions[1])
        val.append(idx[:n_val])
        test.append(idx[n_val : n_val + n_test])
        train.append(idx[n_val + n_test :])
    return [np.sort(np.concatenate(s)) for s in (train, val, test)]


def make_digits_splits(
    *,
    label_noise: float = 0.0,
    imbalance: float = 1.0,
    spurious: float = 0.0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> dict[str, dict[str, torch.Tensor]]:
    r"""Build the train / val / test tensors (a pure function of its arguments and ``seed``).

    * ``imbalance = ρ >= 1``: training class ``c`` keeps :math:`n_c = n_{\max}\,\rho^{-c/(C-1)}` samples (the
      exponential long-tail profile of Cao et al. 2019); val / test stay balanced.
    * ``label_noise = η``: each training label is replaced, with probability η, by a different class drawn
      uniformly (symmetric noise); val / test labels stay clean. ``noisy`` marks the corrupted samples.
    * ``spurious = p``: 10 extra features, a one-hot code of an attribute ``s`` that equals the label with
      probability ``p`` in training (uniform otherwise) and is uniform in val / test. ``group = 0`` where ``s``
      agrees with the (observed) label, 1 where it conflicts.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    x_all = (data.data / 16.0).astype(np.float32)
    y_all = data.target.astype(np.int64)
    num_classes = 10
    rng = np.random.default_rng(seed)
    train, val, test = _stratified_split(y_all, (val_fraction, test_fraction), rng)
    if imbalance > 1.0:
        keep = []
        n_max = min((y_all[train] == c).sum() for c in range(num_classes))
        for c in range(num_classes):
            idx = train[y_all[train] == c]
            n_c = max(1, int(round(n_max * imbalance ** (-c / (num_classes - 1)))))
            keep.append(rng.permutation(idx)[:n_c])
        train = np.sort(np.concatenate(keep))
    splits = {}
    for name, idx in (("train", train), ("val", val), ("test", test)):
        x, y = x_all[idx], y_all[idx].copy()
        out: dict[str, torch.Tensor] = {}
        if name == "train":
            flip = rng.random(len(y)) < label_noise
            shift = rng.integers(1, num_classes, size=len(y))
            y = np.where(flip, (y + shift) % num_classes, y)
            out["noisy"] = torch.from_numpy(flip)
        if spurious > 0:
            if name == "train":
                s = np.where(rng.random(len(y)) < spurious, y, rng.integers(0, num_classes, size=len(y)))
            else:
                s = rng.integers(0, num_classes, size=len(y))
            x = np.concatenate([x, np.eye(num_classes, dtype=np.float32)[s]], axis=1)
            out["group"] = torch.from_numpy((s != y).astype(np.int64))
        out["x"] = torch.from_numpy(x)
        out["target"] = torch.from_numpy(y)
        splits[name] = out
    return splits


class DigitsDataModule(L.LightningDataModule):
    """The digits demo as a ``LightningDataModule`` (offline; loads in milliseconds).

    Args:
        batch_size: per-device batch size, at most the training split's size (checked in ``setup``). Default 64.
        label_noise: symmetric label-noise rate in ``[0, 1)`` on the training split. Default 0.
        imbalance: long-tail ratio ``n_max / n_min >= 1`` on the training split. Default 1 (balanced).
        spurious: probability in ``[0, 1]`` that the spurious attribute equals the label in training; 0 turns
            spurious features and ``group`` off. Default 0.
        val_fraction / test_fraction: stratified split sizes, each in ``(0, 0.5]``, with a training split left.
            Defaults 0.1 / 0.2.
        seed: seed of splits, noise and attributes. Default 0.
        num_workers: ``DataLoader`` workers. Default 0.
        shuffle: shuffle the training set each epoch, in an order set by ``seed`` and the epoch (a resumed run sees
            the batches an uninterrupted one would). Default True. ``False`` keeps the dataset order under DDP too
            (rank ``r`` of ``k`` gets samples ``r, r+k, ...``), so ``k`` ranks at batch ``B`` see the same samples per
            step as one process at batch ``k*B``.
        sampler: how training batches are drawn: ``"none"`` (plain shuffling), ``"balanced_groups"`` (every
            spurious group equally likely, as Group DRO's ``--reweight_groups``; needs ``spurious > 0``) or
            ``"balanced_classes"`` (every class equally likely). Default ``"none"``. A balanced sampler is a
            ``DistributedSampler``: under DDP each rank gets a disjoint shard of the same balanced epoch, and
            Lightning reseeds it every epoch (``seed + epoch``). ``"upsample"``: an
            :class:`~lightning_losses.reweighting.UpsampleSampler` (plain shuffling until the ``useful`` callback
            chooses the samples to upsample).
        sampler_mode: ``"oversample"`` (draw ``len(train)`` samples with replacement, probability ``1 / n_g``) or
            ``"subsample"`` (keep ``min_g n_g`` samples of every group / class, without replacement). Default
            ``"oversample"``.

    Example:
        >>> dm = DigitsDataModule(label_noise=0.4)
        >>> dm.setup("fit")
        >>> sorted(next(iter(dm.train_dataloader())).keys())
        ['index', 'noisy', 'target', 'x']
    """

    num_classes = 10

    @property
    def num_groups(self) -> int:
        """Number of spurious groups (0: attribute agrees with the label, 1: conflicts), 0 without them; read by
        :class:`~lightning_losses.reweighting.SampleReweighting` to size group strategies."""
        return 2 if self.spurious > 0 else 0

    def __init__(
        self,
        batch_size: int = 64,
        label_noise: float = 0.0,
        imbalance: float = 1.0,
        spurious: float = 0.0,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        num_workers: int = 0,
        shuffle: bool = True,
        sampler: str = "none",
        sampler_mode: str = "oversample",
    ) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, low=1)
        self.label_noise = check_number("label_noise", label_noise, low=0.0, high=1.0, high_open=True)
        self.imbalance = check_number("imbalance", imbalance, low=1.0)
        self.spurious = check_number("spurious", spurious, low=0.0, high=1.0)
        self.val_fraction = check_number("val_fraction", val_fraction, low=0.0, high=0.5, low_open=True)
        self.test_fraction = check_number("test_fraction", test_fraction, low=0.0, high=0.5, low_open=True)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigurationError(
                f"`val_fraction` must be < 1 - `test_fraction` = {1.0 - self.test_fraction} (the rest is the "
                f"training split), got {self.val_fraction}"
            )
        self.seed = check_int("seed", seed)
        self.num_workers = check_int("num_workers", num_workers, low=0)
        self.shuffle = check_bool("shuffle", shuffle)
        self.sampler = check_choice("sampler", sampler, SAMPLERS)
        self.sampler_mode = check_choice("sampler_mode", sampler_mode, SAMPLER_MODES)
        if self.sampler == "balanced_groups" and self.spurious == 0:
            raise ConfigurationError(
                "`sampler='balanced_groups'` needs spurious groups: set `spurious` > 0 (got 0.0), "
                "or use `sampler='balanced_classes'`"
            )
        if self.sampler != "none" and not shuffle:
            raise ConfigurationError(
                f"`shuffle=False` cannot be combined with `sampler={self.sampler!r}` (a balanced sampler draws a new "
                "random order every epoch); leave `shuffle` at True or set `sampler='none'`"
            )
        self.num_features = 64 + (self.num_classes if self.spurious > 0 else 0)
        self.datasets: dict[str, DictDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        splits = make_digits_splits(
            label_noise=self.label_noise,
            imbalance=self.imbalance,
            spurious=self.spurious,
            val_fraction=self.val_fraction,
            test_fraction=self.test_fraction,
            seed=self.seed,
        )
        datasets = {name: DictDataset(**tensors) for name, tensors in splits.items()}
        num_train = len(datasets["train"])
        if not 1 <= self.batch_size <= num_train:  # a shape known on the host: before any loader exists
            raise ConfigurationError(
                f"`batch_size` must be an integer in [1, {num_train}] (the size of the training split), got "
                f"{self.batch_size}"
            )
        self.datasets = datasets

    def balanced_sampler(self) -> BalancedSampler | UpsampleSampler | None:
        """The training :class:`~lightning_losses.reweighting.BalancedSampler` (``None`` when ``sampler="none"``).

        Sharded over the attached Trainer's data-parallel ranks (by the initialised process group without a Trainer).
        """
        if self.sampler == "none":
            return None
        self.setup()
        replicas, rank = _data_parallel_shard(self.trainer, (None, None))
        if self.sampler == "upsample":
            return UpsampleSampler(len(self.datasets["train"]), num_replicas=replicas, rank=rank, seed=self.seed)
        ids = self.datasets["train"].tensors["group" if self.sampler == "balanced_groups" else "target"]
        return BalancedSampler(ids, mode=self.sampler_mode, num_replicas=replicas, rank=rank, seed=self.seed)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        self.setup()
        sampler = self.balanced_sampler() if split == "train" else None
        trainer = self.trainer
        if split == "train" and sampler is None:
            # the training order is a function of (seed, epoch) — Lightning calls `set_epoch` — so a run resumed from
            # a checkpoint sees the batches an uninterrupted one would (a DataLoader's `shuffle=True` draws from the
            # global generator, which checkpoints do not hold); under DDP each rank takes its share, in order when
            # `shuffle=False` (Lightning would otherwise install a shuffling sampler)
            replicas, rank = _data_parallel_shard(trainer, (1, 0))
            sampler = DistributedSampler(
                self.datasets[split], num_replicas=replicas, rank=rank, shuffle=shuffle, seed=self.seed
            )
        if split == "train" and trainer is not None:
            # the order of the epoch the Trainer is in: Lightning calls `set_epoch` only after creating an epoch's
            # iterator when a fit resumes (Lightning issue #21938), and a loader with workers draws its first indices
            # then: without this, the first resumed epoch would repeat epoch 0's order
            sampler.set_epoch(epoch_to_run(trainer))
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle if sampler is None else False,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _data_parallel_shard(trainer: Any, default: tuple[Any, Any]) -> tuple[Any, Any]:
    """``(num_replicas, rank)`` of the data-parallel dimension: the strategy's ``distributed_sampler_kwargs`` (under
    ``ModelParallelStrategy`` the data-parallel size and rank, so the tensor-parallel ranks of one replica read the
    same batches), else the Trainer's world size and rank; ``default`` without a Trainer."""
    if trainer is None:
        return default
    try:
        kwargs = getattr(getattr(trainer, "strategy", None), "distributed_sampler_kwargs", None)
    except AssertionError:  # ModelParallelStrategy before its device mesh exists
        kwargs = None
    if isinstance(kwargs, dict) and "num_replicas" in kwargs and "rank" in kwargs:
        return int(kwargs["num_replicas"]), int(kwargs["rank"])
    return trainer.world_size, trainer.global_rank
