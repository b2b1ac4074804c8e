"""A user's own model and data, outside the package, for the CLI tests (``class_path: tests.helpers.own_model...``)."""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader

import lightning_losses as ll
from lightning_losses.demo import DictDataset


class TinyData(L.LightningDataModule):
    """Three Gaussian blobs in ``num_features`` dimensions; fixed order (no shuffling), so a resumed run is exact."""

    num_classes = 3

    def __init__(self, num_samples: int = 96, num_features: int = 8, batch_size: int = 16, seed: int = 0) -> None:
        super().__init__()
        self.num_features, self.batch_size = num_features, batch_size
        gen = torch.Generator().manual_seed(seed)
        centers = 2.0 * torch.randn(self.num_classes, num_features, generator=gen)
        target = torch.arange(num_samples) % self.num_classes
        x = centers[target] + torch.randn(num_samples, num_features, generator=gen)
        cut = [num_samples // 2, 3 * num_samples // 4]
        self.splits = {
            "train": DictDataset(x=x[: cut[0]], target=target[: cut[0]]),
            "val": DictDataset(x=x[cut[0] : cut[1]], target=target[cut[0] : cut[1]]),
            "test": DictDataset(x=x[cut[1] :], target=target[cut[1] :]),
        }

    def _loader(self, split: str) -> DataLoader:
        return DataLoader(self.splits[split], batch_size=self.batch_size, shuffle=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")


class OwnNet(ll.LossesMixin, L.LightningModule):
    """An MLP that uses the mixin without taking ``objective``: cross entropy unless a recipe's ``objective`` says
    otherwise (the CLI then calls ``configure_objective``)."""

    def __init__(self, num_features: int = 8, num_classes: int = 3, hidden: int = 16, lr: float = 0.1) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(num_features, hidden), nn.Tanh(), nn.Linear(hidden, num_classes))
        self.lr = lr
        self.configure_objective({"cross_entropy": {}})

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.compute_loss(logits=self.net(batch["x"]), target=batch["target"], index=batch["index"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._loss(batch)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._loss(batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._loss(batch)
        acc = (self.net(batch["x"]).argmax(-1) == batch["target"]).float().mean()
        self.log("test/acc", acc)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.net(batch["x"]).argmax(-1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9)  # momentum: state a resume must restore


class ShardedNet(OwnNet):
    """:class:`OwnNet` that shards itself with FSDP2 (``fully_shard`` per layer, then the root) under Lightning's
    ``ModelParallelStrategy``; a plain model under any other strategy. Idempotent, as Lightning asks: the hook runs
    again for the ``test`` after ``fit``."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import FSDPModule, fully_shard

        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or isinstance(self, FSDPModule):
            return

        dp = mesh["data_parallel"]
        for layer in self.net:
            if isinstance(layer, nn.Linear):
                fully_shard(layer, mesh=dp)
        fully_shard(self, mesh=dp)
