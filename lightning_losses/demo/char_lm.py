r"""A tiny character-level language model (embedding, GRU, linear head) on :class:`~lightning_losses.LossesMixin`.

Training calls ``compute_loss(logits=[B, T, V], target=[B, T], index=[B], cost_embedding=head.weight)`` (the last one
only matters for ``emo``), so any token loss of the registry and the :class:`~lightning_losses.EntropyControl`
callback (token entropies, ``ignore_index`` tokens left out) work unchanged. Validation accumulates, whatever the
training objective, the summed cross entropy, the summed token entropy and the valid-token count of the whole
validation set (globally reduced under DDP) and logs

* ``val/bpc``: bits per character :math:`\bar\ell/\ln 2`; ``val/ppl``: per-character perplexity :math:`e^{\bar\ell}`;
* ``val/entropy``: mean predictive token entropy (nats).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from lightning_losses._compat import attached_trainer
from lightning_losses._validation import check_int, check_number
from lightning_losses.distributed import global_sum
from lightning_losses.functional.entropy import entropy
from lightning_losses.functional.token import token_cross_entropy
from lightning_losses.mixin import LossesMixin

__all__ = ["CharLM"]


class CharLM(LossesMixin, L.LightningModule):
    """Character-level GRU language model; the loss comes from the objective spec.

    Args:
        vocab_size: number of symbols ``V``. Default 97 (:data:`lightning_losses.demo.text.VOCAB`).
        embed_dim: character embedding width. Default 32.
        hidden_dim: GRU width. Default 128.
        num_layers: GRU layers. Default 1.
        lr: AdamW learning rate (cosine-annealed over ``trainer.max_steps`` when set). Default 3e-3.
        weight_decay: decoupled weight decay. Default 0.
        ignore_index: label that does not count. Default -100.
        objective: objective spec. Default ``{"token_cross_entropy": {}}``.

    Example:
        >>> model = CharLM(vocab_size=10, hidden_dim=8, embed_dim=4)
        >>> model(torch.zeros(2, 5, dtype=torch.long)).shape
        torch.Size([2, 5, 10])
    """

    def __init__(
        self,
        vocab_size: int = 97,
        embed_dim: int = 32,
        hidden_dim: int = 128,
        num_layers: int = 1,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        ignore_index: int = -100,
        objective: Any = None,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, low=2)
        self.lr = check_number("lr", lr, low=0.0, low_open=True)
        self.weight_decay = check_number("weight_decay", weight_decay, low=0.0)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.save_hyperparameters()
        self.embed = nn.Embedding(vocab_size, check_int("embed_dim", embed_dim, low=1))
        self.rnn = nn.GRU(
            embed_dim,
            check_int("hidden_dim", hidden_dim, low=1),
            check_int("num_layers", num_layers, low=1),
            batch_first=True,
        )
        self.head = nn.Linear(hidden_dim, vocab_size)
        self.configure_objective(objective if objective is not None else {"token_cross_entropy": {}})
        self._val = torch.zeros(3, dtype=torch.float64)  # [sum of CE, sum of entropy, valid tokens]
        self.val_metrics: dict[str, float] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(x))
        return self.head(out)

    def _tensors(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        logits = self(batch["x"])
        return {
            "logits": logits,
            "target": batch["target"],
            "index": batch["index"],
            "cost_embedding": self.head.weight,
        }

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self.compute_loss(**self._tensors(batch))

    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        tensors = self._tensors(batch)
        self.compute_loss(**tensors)
        logits, target = tensors["logits"].float(), tensors["target"]
        valid = target != self.ignore_index
        ce = token_cross_entropy(logits, target, ignore_index=self.ignore_index, reduction="none")
        h = entropy(logits) * valid
        self._val += torch.stack([ce.sum(), h.sum(), valid.sum()]).to(self._val)

    def on_validation_epoch_end(self) -> None:
        total = global_sum(self._val)
        nll, ent = (total[:2] / total[2].clamp_min(1.0)).tolist()
        self.val_metrics = {"val/bpc": nll / math.log(2.0), "val/ppl": math.exp(nll), "val/entropy": ent}
        self.log_dict(self.val_metrics, sync_dist=False)  # already global

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        trainer = attached_trainer(self)
        max_steps = trainer.max_steps if trainer is not None else -1
        if not max_steps or max_steps < 0:
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max_steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
