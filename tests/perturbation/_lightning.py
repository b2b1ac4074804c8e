"""A tiny LossesMixin model and data for the Trainer tests."""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll
from tests.helpers.trainers import quiet_trainer

from ._reference import tiny_model


class Tiny(ll.LossesMixin, L.LightningModule):
    def __init__(self, optimizer: str = "sgd", lr: float = 0.1, bn: bool = False, fail_in_perturbed: bool = False):
        super().__init__()
        self.net = tiny_model(dtype=torch.float32, bn=bn)
        self.configure_objective({"cross_entropy": {}})
        self.optimizer_name, self.lr, self.fail_in_perturbed = optimizer, lr, fail_in_perturbed
        self.training_step_calls = 0
        self.logged: list[str] = []

    def log(self, name, *args, **kwargs):
        self.logged.append(name)  # log_dict goes through log too
        return super().log(name, *args, **kwargs)

    def training_step(self, batch, batch_idx):
        self.training_step_calls += 1
        if self.fail_in_perturbed and self.objective_logging_suppressed:
            raise RuntimeError("failure in the perturbed pass")
        x, y = batch
        loss = self.compute_loss(logits=self.net(x), target=y)
        self.log("user/loss", loss)  # a user's own log: must be applied once per step
        return loss

    def configure_optimizers(self):
        if self.optimizer_name == "adamw":
            return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.01)
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)


def data(n: int = 16, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g))


def data_batches(n: int, batch_size: int, indices=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The samples of :func:`data` (float64 inputs), optionally only ``indices``, in batches of ``batch_size``: what
    the float64 references step through."""
    d = data(n)
    xs, ys = d.tensors[0].double(), d.tensors[1]
    if indices is not None:
        xs, ys = xs[indices], ys[indices]
    return [(xs[i : i + batch_size], ys[i : i + batch_size]) for i in range(0, len(xs), batch_size)]


def loader(batch_size: int = 8, n: int = 16) -> DataLoader:
    return DataLoader(data(n), batch_size=batch_size, shuffle=False)


def trainer(callbacks, **kwargs) -> L.Trainer:
    # log_every_n_steps=1: the callbacks log their statistics on the Trainer's logging steps only
    return quiet_trainer(callbacks, **{"log_every_n_steps": 1, **kwargs})
