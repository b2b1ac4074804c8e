"""A small MLP classifier for the digits demo that uses :class:`~lightning_losses.LossesMixin`."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn

from lightning_losses._compat import attached_trainer
from lightning_losses._validation import check_bool, check_choice, check_int, check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.mixin import LossesMixin
from lightning_losses.reweighting.metrics import GroupAccuracy

__all__ = ["DigitsClassifier"]

_OPTIMIZERS = ("adamw", "sgd", "bsam")
MAX_PARAMETERS = 2**28  # 1 GiB of float32 weights (4 GiB with AdamW's state and the gradients): a digits MLP


class DigitsClassifier(LossesMixin, L.LightningModule):
    """MLP on flattened digits; the loss comes from the objective spec.

    Args:
        num_features: input width (64, or 74 with spurious features). Default 64.
        num_classes: number of classes. Default 10.
        hidden_dim: hidden width; the model has at most ``MAX_PARAMETERS`` (2^28) parameters. Default 128.
        depth: number of hidden layers. Default 2.
        dropout: dropout rate in ``[0, 1)``. Default 0.1.
        batch_norm: add ``BatchNorm1d`` after each hidden layer. Default False.
        optimizer: ``"adamw"``, ``"sgd"`` (momentum 0.9) or ``"bsam"``
            (:class:`~lightning_losses.perturbation.BSAM` with ``num_data`` = the training split's size and
            ``prior_precision`` = ``weight_decay`` × ``num_data``; run it with ``WeightPerturbation("bsam")``, or alone
            for its own two-pass step). Default ``"adamw"``.
        lr: learning rate. Default 3e-3.
        weight_decay: decoupled weight decay. Default 1e-4.
        cosine_schedule: cosine-anneal the LR to 0 over ``trainer.max_epochs``. Default True.
        objective: objective spec (see :class:`~lightning_losses.objective.Objective`). Default cross entropy.
    """

    def __init__(
        self,
        num_features: int = 64,
        num_classes: int = 10,
        hidden_dim: int = 128,
        depth: int = 2,
        dropout: float = 0.1,
        batch_norm: bool = False,
        optimizer: str = "adamw",
        lr: float = 3e-3,
        weight_decay: float = 1e-4,
        cosine_schedule: bool = True,
        objective: Any = None,
    ) -> None:
        super().__init__()
        check_int("num_features", num_features, low=1)
        self.num_classes = check_int("num_classes", num_classes, low=2)
        check_int("hidden_dim", hidden_dim, low=1)
        check_int("depth", depth, low=0)
        widths = [num_features] + [hidden_dim] * depth + [num_classes]
        size = sum((a + 1) * b for a, b in zip(widths, widths[1:]))
        if size > MAX_PARAMETERS:  # before anything is allocated
            raise ConfigurationError(
                f"`hidden_dim` = {hidden_dim} with `depth` = {depth} makes a model of {size:,} parameters; the demo "
                f"model allows at most {MAX_PARAMETERS:,}, got hidden_dim={hidden_dim}"
            )
        check_number("dropout", dropout, low=0.0, high=1.0, high_open=True)
        self.optimizer_name = check_choice("optimizer", optimizer, _OPTIMIZERS)
        self.lr = check_number("lr", lr, low=0.0, low_open=True)
        self.weight_decay = check_number("weight_decay", weight_decay, low=0.0)
        self.cosine_schedule = check_bool("cosine_schedule", cosine_schedule)
        check_bool("batch_norm", batch_norm)
        self.save_hyperparameters()
        layers: list[nn.Module] = []
        width = num_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden_dim)]
            layers += [nn.BatchNorm1d(hidden_dim)] if batch_norm else []
            layers += [nn.ReLU(), nn.Dropout(dropout)]
            width = hidden_dim
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.configure_objective(objective if objective is not None else {"cross_entropy": {}})
        metric = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes)
        self.accuracy = nn.ModuleDict({s: metric.clone() for s in ("train_", "val_", "test_")})
        # cross entropy of the predictions whatever the training objective: comparable across recipes
        self.nll = nn.ModuleDict({s: torchmetrics.MeanMetric() for s in ("val_", "test_")})
        # evaluation only: balanced (macro) accuracy, and accuracy per spurious group (0 agrees, 1 conflicts)
        macro = torchmetrics.Accuracy(task="multiclass", num_classes=num_classes, average="macro")
        self.balanced_accuracy = nn.ModuleDict({s: macro.clone() for s in ("val", "test")})
        # (per-group sums, so a batch, or a rank's whole epoch, without some group adds zeros and syncs under DDP)
        self.group_accuracy = nn.ModuleDict({s: GroupAccuracy(num_groups=2) for s in ("val", "test")})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def _step(self, batch: dict[str, torch.Tensor], stage: str) -> torch.Tensor:
        embeddings = None
        if self.wants_embeddings():  # one pass: the penultimate features, then the last layer
            embeddings = self.net[:-1](batch["x"])
            logits = self.net[-1](embeddings)
        else:
            logits = self(batch["x"])
        # (subclasses may override `loss_from_batch(logits, batch)` without `embeddings`)
        loss = (
            self.loss_from_batch(logits, batch)
            if embeddings is None
            else self.loss_from_batch(logits, batch, embeddings)
        )
        if not self.objective_logging_suppressed:
            acc = self.accuracy[stage + "_"]
            acc(logits.detach(), batch["target"])
            self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "test")
            if stage != "train":
                nll = self.nll[stage + "_"]
                nll(F.cross_entropy(logits.detach().float(), batch["target"], reduction="none"))
                self.log(f"{stage}/nll", nll, on_step=False, on_epoch=True)
        if stage != "train":
            self.balanced_accuracy[stage](logits.detach(), batch["target"])
            self.log(f"{stage}/balanced_acc", self.balanced_accuracy[stage], on_step=False, on_epoch=True)
            if "group" in batch:
                self.group_accuracy[stage].update(logits.detach(), batch["target"], batch["group"])
        return loss

    def wants_embeddings(self) -> bool:
        """Whether a term of the objective reads ``embeddings`` (e.g. ``coral``), or the attached reweighter lists
        them in its ``optional_inputs`` (``storm``): then the penultimate features are passed under that name (the
        objective's answer cached per objective: checked once, not every step)."""
        objective = self.objective
        cached = self.__dict__.get("_wants_embeddings")
        if cached is None or cached[0] is not objective:
            wants = any(t.source(a) == "embeddings" for t in objective.terms for a in sum(t.loss.input_names(), ()))
            cached = self.__dict__["_wants_embeddings"] = (objective, wants)
        attached = (self.__dict__.get("_ll_plugin_slots") or {}).get("reweighter")
        return cached[1] or "embeddings" in getattr(getattr(attached, "reweighter", None), "optional_inputs", ())

    def objective_tensors(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor], embeddings: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """What the objective is given: ``logits`` plus the batch's ``target``, ``index`` and ``group``, the model
        input ``x`` as ``inputs`` (for :class:`~lightning_losses.MESA`'s EMA teacher), and the penultimate features
        ``embeddings`` when a term reads them (computed from ``batch["x"]`` if not given)."""
        out = {"logits": logits, **{k: v for k, v in batch.items() if k in ("target", "index", "group")}}
        if "x" in batch:
            out["inputs"] = batch["x"]
        if self.wants_embeddings():
            out["embeddings"] = self.net[:-1](batch["x"]) if embeddings is None else embeddings
        return out

    def loss_from_batch(
        self, logits: torch.Tensor, batch: dict[str, torch.Tensor], embeddings: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The objective on this batch (:meth:`objective_tensors`)."""
        return self.compute_loss(**self.objective_tensors(logits, batch, embeddings))

    def group_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        """This epoch's ``{stage}/acc_group{g}`` for every group seen (on any rank) and ``{stage}/worst_group_acc``;
        resets the group metric. Empty without ``group`` in the batches.

        Every rank runs the same number of evaluation batches (Lightning's distributed sampler pads the shards), so
        all of them reach ``compute`` (a collective under DDP) together; which groups appear follows the synced
        counts, identical on every rank. A group absent from the whole split is left out (its accuracy is undefined,
        not 0).
        """
        metric = self.group_accuracy[stage]
        if not metric.update_count:  # no `group` in the batches
            return {}
        stats = metric.compute()
        metric.reset()
        present = [g for g, n in enumerate(stats["count"].tolist()) if n > 0]  # epoch end: one host read
        if not present:
            return {}
        return {
            **{f"{stage}/acc_group{g}": stats["acc"][g] for g in present},
            f"{stage}/worst_group_acc": stats["worst_acc"],
        }

    def _log_worst_group(self, stage: str) -> None:
        values = self.group_metrics(stage)
        if values:
            self.log_dict(values)

    def on_validation_epoch_end(self) -> None:
        self._log_worst_group("val")

    def on_test_epoch_end(self) -> None:
        self._log_worst_group("test")

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def _bsam(self) -> torch.optim.Optimizer:
        from lightning_losses.perturbation.bsam import BSAM

        datamodule = getattr(attached_trainer(self), "datamodule", None)
        train = getattr(datamodule, "datasets", {}).get("train")
        if train is None:
            raise ConfigurationError(
                "`optimizer` = 'bsam' needs the training-set size: fit with a `DigitsDataModule` (or a datamodule "
                "with `datasets['train']`), got no such datamodule"
            )
        num_data = len(train)
        return BSAM(self.parameters(), num_data=num_data, lr=self.lr, prior_precision=self.weight_decay * num_data)

    def configure_optimizers(self) -> Any:
        if self.optimizer_name == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        elif self.optimizer_name == "bsam":
            opt = self._bsam()
        else:
            opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        trainer = attached_trainer(self)
        max_epochs = trainer.max_epochs if trainer is not None else None
        if not self.cosine_schedule or not max_epochs or max_epochs < 0:
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
