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


class _Normalisation(L.Callback):
    """Records, at the first training batch's end, the registered group and what the objective reduced over."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if batch_idx == 0:
            out = pl_module.objective_output
            self.same = distributed.data_parallel_group() is trainer.strategy.device_mesh["data_parallel"].get_group()
            self.size = distributed.world_size()
            # the logged value is the mean over the whole data-parallel batch: gather every rank's per-sample losses
            losses = [torch.zeros_like(out.per_sample) for _ in range(2)]
            dist.all_gather(losses, out.per_sample.detach(), group=distributed.data_parallel_group())
            self.value, self.expected = float(out.value), float(torch.cat(losses).mean())


def _mixin_only_under_fsdp2():
    seen = _Normalisation()  # a plain Lightning callback: no library callback registers the group
    _fsdp2.fit("fsdp2", [seen], steps=1)
    return seen.same, seen.size, seen.value, seen.expected, distributed.data_parallel_group()


def test_the_mixin_alone_registers_the_mesh_data_parallel_group(ddp):
    """Without any library callback, ``LossesMixin`` itself registers the strategy's data-parallel group in ``setup``
    (the objective's global normalisation reduces over it) and drops it in ``teardown``."""
    for same, size, value, expected, after in ddp.run(_mixin_only_under_fsdp2):
        assert same and size == 2
        assert value == pytest.approx(expected, rel=1e-6)
        assert after is None
