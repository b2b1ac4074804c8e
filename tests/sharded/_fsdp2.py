"""Runs inside the 2-process gloo pool: the same fit under FSDP2 (``ModelParallelStrategy``) and under DDP."""

from __future__ import annotations

import contextlib
import os
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll
from lightning_losses.distributed import rank
from tests.helpers.ddp import lightning_env
from tests.helpers.trainers import quiet_trainer


class Net(ll.LossesMixin, L.LightningModule):
    """Two linear layers (tanh between); ``tied``: the output layer shares the input embedding's weight."""

    def __init__(self, tied: bool = False, objective: Any = None, lr: float = 0.1) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.tied = tied
        if tied:
            self.embed = torch.nn.Linear(6, 6, bias=False)
            self.hidden = torch.nn.Linear(6, 6)
            self.out = torch.nn.Linear(6, 6, bias=False)
            self.out.weight = self.embed.weight
        else:
            self.embed = torch.nn.Linear(8, 8)
            self.hidden = torch.nn.Linear(8, 8)
            self.out = torch.nn.Linear(8, 3)
        self.configure_objective(objective or {"cross_entropy": {}})
        self.lr = lr

    def configure_model(self) -> None:
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        from torch.distributed.fsdp import fully_shard

        dp = mesh["data_parallel"]
        if not self.tied:
            for layer in (self.embed, self.hidden, self.out):
                fully_shard(layer, mesh=dp)
        fully_shard(self, mesh=dp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.hidden(torch.tanh(self.embed(x)))))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        kwargs = {"index": batch[2]} if len(batch) > 2 else {}
        return self.compute_loss(logits=self(x), target=y, **kwargs)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def data(n: int = 32, classes: int = 3, features: int = 8, indexed: bool = False) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)
    tensors = (x, y, torch.arange(n)) if indexed else (x, y)
    return DataLoader(TensorDataset(*tensors), batch_size=4, shuffle=False)


@contextlib.contextmanager
def _lightning_env():
    with lightning_env():
        yield


def full_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as a full float64 tensor (gathered from its shards under FSDP2; a collective)."""
    out = {}
    for name, p in model.named_parameters():
        t = p.detach()
        if hasattr(t, "full_tensor"):
            t = t.full_tensor()
        out[name] = t.double().clone()
    return out


def fit(
    strategy: str,
    callbacks: list[Any],
    steps: int = 3,
    tied: bool = False,
    indexed: bool = False,
    trainer_kw: dict | None = None,
    **model_kw: Any,
) -> dict:
    """One fit of :class:`Net` under ``"fsdp2"`` or ``"ddp"`` (``indexed``: batches carry the sample index;
    ``trainer_kw``: more ``Trainer`` arguments); returns the full weights afterwards."""
    with _lightning_env():
        if strategy == "fsdp2":
            strat: Any = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        else:
            strat = "ddp"
        features = 6 if tied else 8
        classes = 6 if tied else 3
        model = Net(tied=tied, **model_kw)
        t = quiet_trainer(callbacks, max_steps=steps, strategy=strat, devices=2, **(trainer_kw or {}))
        t.fit(model, data(classes=classes, features=features, indexed=indexed))
        return full_weights(model)


class SaveMidStep(L.Callback):
    """Writes one checkpoint from ``on_after_backward`` of a perturbed pass and records, as full tensors, the
    weights before the step and the state dict the checkpoint got (after the perturbation callback's hook)."""

    def __init__(self, path: str) -> None:
        self.path, self.before, self.saved = path, None, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.saved is None:
            self.before = full_weights(pl_module)

    def on_after_backward(self, trainer, pl_module):
        if pl_module.objective_logging_suppressed and self.saved is None:
            trainer.save_checkpoint(self.path)  # written while the weights are perturbed

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        state = checkpoint["state_dict"]
        self.saved = {
            k: (v.full_tensor() if hasattr(v, "full_tensor") else v).double().clone()
            for k, v in sorted(state.items())
            if k in self.before
        }


def mid_step_checkpoint(tmp: str, distributed_checkpoint: bool) -> tuple[dict, dict]:
    """``(weights before the step, checkpointed weights)`` of a SAM step under FSDP2 with a mid-step checkpoint."""
    import lightning_losses as ll

    saver = SaveMidStep(os.path.join(tmp, f"mid-{distributed_checkpoint}-{rank()}"))
    with _lightning_env():
        strat = ModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=distributed_checkpoint
        )
        t = quiet_trainer([ll.SAM(rho=0.5, sync_ascent=True), saver], max_steps=1, strategy=strat, devices=2)
        t.fit(Net(), data())
    return saver.before, saver.saved


def all_reduces_per_sam_step(collect_stats: bool) -> int:
    """``dist.all_reduce`` calls in one SAM step on a ``fully_shard``-ed model (no Lightning; FSDP2's own
    all-gathers and reduce-scatters are other collectives)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from lightning_losses.perturbation import build_perturbation, perturbed_backward

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    for layer in (model[0], model[2]):
        fully_shard(layer, mesh=init_device_mesh("cpu", (2,)))
    fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
    sam = build_perturbation("sam", rho=0.5, sync_ascent=True)
    sam.collect_stats = collect_stats
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(rank()))
    calls, original = [], dist.all_reduce

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(*args, **kwargs)

    dist.all_reduce = counting
    try:
        perturbed_backward(sam, model, lambda: model(x).square().mean())
    finally:
        dist.all_reduce = original
    return len(calls)
