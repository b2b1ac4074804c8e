"""One process of a multi-node check, launched by ``torchrun`` (see ``test_multinode.py``): fits :class:`Net` with
the objective, a reweighter and SAM under DDP and then under FSDP2 (``ModelParallelStrategy``) on
``--num-nodes`` x ``--devices`` processes, and saves the full weights and the reweighter's state of each fit to
``<out>/<strategy>-rank<r>.pt``; :func:`one_node_in_pool` is the one-node baseline.

Run as ``torchrun --nnodes 2 --nproc-per-node 1 --node-rank {0,1} --master-addr 127.0.0.1 --master-port P
-m tests.sharded.multinode_fit --num-nodes 2 --devices 1 --out DIR`` (two "nodes" on one machine).
"""

from __future__ import annotations

import argparse
import os

import torch


def fits(num_nodes: int, devices: int) -> dict[str, dict]:
    """``strategy -> {"weights", "reweighter", "node_rank", "global_rank", "world_size"}`` of the DDP and FSDP2 fits."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    import lightning_losses as ll
    from tests.helpers.trainers import quiet_trainer
    from tests.sharded import _fsdp2

    out = {}
    for name in ("ddp", "fsdp2"):
        if name == "fsdp2":
            strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        else:
            strategy = "ddp"
        reweighting = ll.SampleReweighting("loss_softmax")
        callbacks = [reweighting, ll.SAM(rho=0.5, sync_ascent=True)]
        trainer = quiet_trainer(callbacks, max_steps=3, strategy=strategy, devices=devices, num_nodes=num_nodes)
        model = _fsdp2.Net()
        trainer.fit(model, _fsdp2.data(indexed=True))
        out[name] = {
            "weights": _fsdp2.full_weights(model),
            "reweighter": reweighting.state_dict()["reweighter"],
            "node_rank": trainer.node_rank,
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
        }
    return out


def one_node_in_pool() -> dict[str, dict]:
    """:func:`fits` on one node of two processes, inside the test session's 2-process pool."""
    from tests.sharded import _fsdp2

    with _fsdp2._lightning_env():
        return fits(1, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-nodes", type=int, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, result in fits(args.num_nodes, args.devices).items():
        torch.save(result, os.path.join(args.out, f"{name}-rank{result['global_rank']}.pt"))


if __name__ == "__main__":
    main()
