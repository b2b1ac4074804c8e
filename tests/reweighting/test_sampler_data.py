"""The balanced sampler in the demo DigitsDataModule: arguments, balance, DDP shards, per-epoch reseeding, and that
Lightning keeps it (no DistributedSampler wrapped around it) and reseeds it."""

from types import SimpleNamespace

import lightning as L
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from lightning.pytorch.trainer.states import RunningStage

from lightning_losses.demo import DigitsDataModule
from lightning_losses.distributed import rank
from lightning_losses.errors import ConfigurationError
from lightning_losses.reweighting import BalancedSampler


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"sampler": "balanced"},
            r"`sampler` must be one of `none`, `balanced_groups`, `balanced_classes`, `upsample`, got "
            r"'balanced'; did you mean `balanced_groups`\?",
        ),
        (
            {"sampler": "balanced_classes", "sampler_mode": "subsampling"},
            r"`sampler_mode` must be one of "
            r"`oversample`, `subsample`, got 'subsampling'; did you mean `subsample`\?",
        ),
        ({"sampler": "balanced_groups"}, r"`sampler='balanced_groups'` needs spurious groups: set `spurious` > 0"),
        (
            {"sampler": "balanced_classes", "shuffle": False},
            r"`shuffle=False` cannot be combined with "
            r"`sampler='balanced_classes'`",
        ),
    ],
)
def test_invalid_sampler_arguments(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        DigitsDataModule(**kwargs)


def _epoch(dm, world=1, r=0, epoch=0):
    dm.trainer = SimpleNamespace(world_size=world, global_rank=r)
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(epoch)
    return torch.cat([b["index"] for b in loader])


def test_balanced_groups_and_classes():
    dm = DigitsDataModule(spurious=0.95, sampler="balanced_groups", sampler_mode="subsample", batch_size=32)
    index = _epoch(dm)
    groups = dm.datasets["train"].tensors["group"]
    n_min = int(torch.bincount(groups).min())
    assert index.unique().numel() == index.numel() == 2 * n_min  # without replacement
    assert torch.bincount(groups[index]).tolist() == [n_min, n_min]
    over = DigitsDataModule(imbalance=10.0, sampler="balanced_classes", batch_size=128)
    index = _epoch(over)
    target = over.datasets["train"].tensors["target"]
    assert index.numel() == len(over.datasets["train"])  # oversampling keeps the epoch length
    freq = torch.bincount(target[index], minlength=10).double() / index.numel()
    raw = torch.bincount(target, minlength=10).double() / target.numel()
    assert float((freq - 0.1).abs().max()) < 0.035 < float((raw - 0.1).abs().max())  # balanced; the data is not


@pytest.mark.parametrize("mode", ["oversample", "subsample"])
def test_two_ranks_shard_the_balanced_epoch_without_overlap(mode):
    dm = DigitsDataModule(spurious=0.9, sampler="balanced_groups", sampler_mode=mode, batch_size=16)
    for epoch in (0, 1):
        shards = [_epoch(dm, world=2, r=r, epoch=epoch) for r in (0, 1)]
        full = BalancedSampler(dm.datasets["train"].tensors["group"], mode=mode, num_replicas=1, rank=0, seed=0)
        full.set_epoch(epoch)
        balanced = full.epoch_indices()
        assert shards[0].numel() == shards[1].numel() == -(-balanced.numel() // 2)
        # rank r holds positions r, r+2, ... of the (padded) balanced epoch: disjoint positions that cover it
        padded = torch.cat([balanced, balanced[: 2 * shards[0].numel() - balanced.numel()]])
        assert torch.equal(torch.stack(shards, dim=1).reshape(-1), padded)
        if mode == "subsample":  # no sample drawn twice within the epoch, across both ranks
            assert set(shards[0].tolist()).isdisjoint(shards[1].tolist())
    assert not torch.equal(_epoch(dm, 2, 0, epoch=0), _epoch(dm, 2, 0, epoch=1))  # reseeded per epoch


def test_lightning_keeps_and_reseeds_the_sampler():
    dm = DigitsDataModule(spurious=0.9, sampler="balanced_groups")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False)
    dm.trainer = trainer  # Trainer is built, not launched: rank 0 of 2
    loader = dm.train_dataloader()
    assert isinstance(loader.sampler, BalancedSampler) and (loader.sampler.num_replicas, loader.sampler.rank) == (2, 0)
    prepared = trainer._data_connector._prepare_dataloader(loader, shuffle=True, mode=RunningStage.TRAINING)
    assert prepared is loader  # a DistributedSampler subclass: Lightning does not wrap or replace it
    _set_sampler_epoch(prepared, 4)  # what the fit loop calls at every epoch start
    assert loader.sampler.epoch == 4


def _ddp_shard():
    dm = DigitsDataModule(spurious=0.9, sampler="balanced_groups", sampler_mode="subsample", batch_size=8)
    loader = dm.train_dataloader()  # no Trainer: world size and rank from the process group
    loader.sampler.set_epoch(2)
    return rank(), torch.cat([b["index"] for b in loader]).tolist(), loader.sampler.epoch_indices().tolist()


def test_ddp_process_group_shards(ddp):
    (r0, i0, full0), (r1, i1, full1) = ddp.run(_ddp_shard)
    assert (r0, r1) == (0, 1) and full0 == full1
    assert len(i0) == len(i1) and not set(i0) & set(i1)
    assert sorted(i0 + i1) == sorted(full0 + full0[: len(i0) + len(i1) - len(full0)])
