"""A language model sharded with FSDP2, trained with the chunked linear cross entropy, SAM and sample reweighting,
on one machine or on a cluster. Runs on CPU (gloo) or GPUs (NCCL); the data are random tokens.

One machine, two processes (Lightning launches them)::

    python examples/sharded_lm.py --devices 2

Several nodes with ``torchrun`` (run on every node; ``--node-rank`` 0 .. N-1, the master's address on all)::

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 --master-addr node0 --master-port 29500 \\
        examples/sharded_lm.py --num-nodes 2 --devices 8

SLURM (Lightning reads ``SLURM_*``: one task per device, ``--ntasks-per-node`` equal to ``--devices``)::

    #SBATCH --nodes=2
    #SBATCH --ntasks-per-node=8
    #SBATCH --gpus-per-node=8
    srun python examples/sharded_lm.py --num-nodes 2 --devices 8

Every process runs the same script; ``data_parallel_size`` is the number of processes (``--num-nodes`` x
``--devices``), so the library's reductions (objective normalisation, reweighter, SAM's norms) span all nodes.
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll


class ShardedLM(ll.LossesMixin, L.LightningModule):
    """Embedding, two tanh layers and an output head read through its weight by ``linear_cross_entropy``."""

    def __init__(self, vocab: int = 64, hidden: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList([nn.Linear(hidden, hidden) for _ in range(2)])
        self.head = nn.Linear(hidden, vocab, bias=False)
        self.configure_objective({"lm": {"loss": "linear_cross_entropy", "inputs": {"weight": "lm_weight"}}})

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        mesh = self.device_mesh["data_parallel"]
        for unit in (self.embed, *self.layers, self.head):  # the head's weight reaches the loss sharded: the loss
            fully_shard(unit, mesh=mesh)  # gathers it once per call and reduce-scatters its gradient
        fully_shard(self, mesh=mesh)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        for layer in self.layers:
            h = torch.tanh(layer(h))
        return h

    def training_step(self, batch, batch_idx):
        tokens, index = batch
        hidden = self(tokens[:, :-1])
        return self.compute_loss(hidden=hidden, target=tokens[:, 1:], lm_weight=self.head.weight, index=index)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def main(argv: list[str] | None = None) -> L.Trainer:
    parser = argparse.ArgumentParser(description="FSDP2 language model with linear CE, SAM and reweighting")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=20)
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (256, 17), generator=g)
    data = DataLoader(TensorDataset(tokens, torch.arange(len(tokens))), batch_size=8)
    strategy = ModelParallelStrategy(data_parallel_size=args.num_nodes * args.devices, tensor_parallel_size=1)
    trainer = L.Trainer(
        accelerator="auto",
        devices=args.devices,
        num_nodes=args.num_nodes,
        strategy=strategy,
        max_steps=args.max_steps,
        callbacks=[ll.SampleReweighting("loss_softmax"), ll.SAM(rho=0.05, sync_ascent=True)],  # FSDP2: sync_ascent
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
    )
    trainer.fit(ShardedLM(), data)
    return trainer


if __name__ == "__main__":
    main()
