"""A digits-sized LossesMixin model (optional BatchNorm and a tied weight) and data for the combination tests."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll
from tests.helpers.trainers import quiet_trainer

FEATURES, CLASSES, GROUPS = 16, 4, 3


class Net(ll.LossesMixin, L.LightningModule):
    """16 -> 8 [-> BatchNorm] -> 8 -> 8 (tied to the previous layer) -> 4 classes; ``skip`` batch indices return
    ``None`` from ``training_step`` after ``compute_loss``, ``skip_early`` ones before it."""

    def __init__(
        self,
        bn: bool = False,
        tied: bool = False,
        skip: tuple[int, ...] = (),
        compute: bool = True,
        skip_early: tuple[int, ...] = (),
    ):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(FEATURES, 8)
        self.bn = nn.BatchNorm1d(8) if bn else nn.Identity()
        self.hidden = nn.Linear(8, 8)
        self.hidden2 = nn.Linear(8, 8)
        if tied:
            self.hidden2.weight = self.hidden.weight  # one Parameter under two state-dict keys
        self.out = nn.Linear(8, CLASSES)
        self.configure_objective({"cross_entropy": {}})
        self.skip, self.compute, self.skip_early = skip, compute, skip_early
        self.calls = 0

    def forward(self, x):
        h = torch.tanh(self.bn(self.inp(x)))
        return self.out(torch.tanh(self.hidden2(torch.tanh(self.hidden(h)))))

    def training_step(self, batch, batch_idx):
        self.calls += 1
        x, y, g, index = batch
        if batch_idx in self.skip_early:
            return None
        logits = self(x)
        if not self.compute:  # a loss computed without compute_loss: the plug-ins never run
            return nn.functional.cross_entropy(logits, y)
        loss = self.compute_loss(logits=logits, target=y, group=g, index=index)
        return None if batch_idx in self.skip else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


def dataset(n: int = 48, seed: int = 0, paired: int = 0) -> TensorDataset:
    """``n`` samples; ``paired=b``: every block of ``2b`` samples is ``b`` samples followed by a permutation of them
    (two micro-batches of ``b`` then hold the same samples in another order)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, FEATURES, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    grp = torch.randint(0, GROUPS, (n,), generator=g)
    if paired:
        idx = []
        for start in range(0, n, 2 * paired):
            block = torch.arange(start, start + paired)
            idx += [block, block[torch.randperm(paired, generator=g)]]
        idx = torch.cat(idx)
        x, y, grp = x[idx], y[idx], grp[idx]
    return TensorDataset(x, y, grp, torch.arange(n))


def fit(callbacks, model=None, batch_size=4, k=1, data=None, **kwargs):
    model = Net() if model is None else model
    trainer = quiet_trainer(callbacks, accumulate_grad_batches=k, **{"max_epochs": 1, **kwargs})
    trainer.fit(model, DataLoader(dataset() if data is None else data, batch_size=batch_size, shuffle=False))
    return model, trainer


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def weights(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The parameters of a :func:`params` snapshot of a :class:`Net` (no BatchNorm buffers)."""
    return {k: v for k, v in state.items() if not k.startswith("bn.") or k.endswith(("weight", "bias"))}
