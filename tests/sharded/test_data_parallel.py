"""The library's reductions go over the registered data-parallel group, not the world (2-D meshes: the ranks of a
tensor-parallel group share a batch). Checked on the 2-process pool with one-process groups, and under FSDP2
(``ModelParallelStrategy``), where the callbacks register the mesh's ``data_parallel`` group for the fit."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.distributed as dist

import lightning_losses as ll
from lightning_losses import distributed
from lightning_losses.sync import sync_statistics

from . import _fsdp2

pytestmark = pytest.mark.ddp


def _reductions_in_own_group():
    """Each rank alone in its data-parallel group: every helper reduces over that group only."""
    groups = [dist.new_group([0]), dist.new_group([1])]  # every rank creates every group
    me = dist.get_rank()
    x = torch.tensor([float(me + 1)])
    world = (float(distributed.global_sum(x)), distributed.world_size())
    distributed.set_data_parallel_group(groups[me])
    try:
        alone = {
            "sum": float(distributed.global_sum(x)),
            "size": distributed.world_size(),
            "rank": distributed.rank(),
            "distributed": distributed.is_distributed(),
            "cat": sync_statistics({"v": x}, {"v": "cat"})[0]["v"].tolist(),
            "gather": distributed.all_gather_with_grad(x).tolist(),
        }
    finally:
        distributed.set_data_parallel_group(None)
    return world, alone, float(distributed.global_sum(x))


def test_helpers_reduce_over_the_registered_group(ddp):
    for r, (world, alone, after) in enumerate(ddp.run(_reductions_in_own_group)):
        assert world == (3.0, 2) and after == 3.0
        mine = float(r + 1)
        assert alone == {"sum": mine, "size": 1, "rank": 0, "distributed": False, "cat": [mine], "gather": [mine]}


class _Seen(L.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        group = distributed.data_parallel_group()
        self.same = group is trainer.strategy.device_mesh["data_parallel"].get_group()
        self.ranks = dist.get_process_group_ranks(group)


def _registered_under_fsdp2():
    seen = _Seen()
    _fsdp2.fit("fsdp2", [ll.SampleReweighting("loss_softmax"), seen], steps=1, indexed=True)
    return seen.same, seen.ranks, distributed.data_parallel_group()


def test_callbacks_register_the_mesh_data_parallel_group_for_the_fit(ddp):
    for same, ranks, after in ddp.run(_registered_under_fsdp2):
        assert same and ranks == [0, 1]
        assert after is None  # dropped at teardown
