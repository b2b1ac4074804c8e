"""Strategies with per-sample state keyed by the dataset ``index``: a running loss per sample and Just Train Twice.

Both gather ``index`` (and the per-sample value) at the sync point and write the
:class:`~lightning_losses.reweighting.store.PerSampleStore` from the global batch, so every rank holds the same
table; see that module for the duplicate / epoch rules and the bytes per sample. Masked samples (``sample_mask``)
are never written, and take no part in ``per_sample_ema``'s softmax.
"""

from __future__ import annotations

import torch

from lightning_losses._validation import check_int, check_number
from lightning_losses.functional import reweighting as F
from lightning_losses.reweighting.base import REWEIGHTERS, Reweighter
from lightning_losses.reweighting.store import PerSampleStore

__all__ = ["JTT", "PerSampleEMA"]


def _optional_int(name: str, value: int | None) -> int | None:
    return None if value is None else check_int(name, value, low=1)


@REWEIGHTERS.register("per_sample_ema", aliases=("sample_ema",))
class PerSampleEMA(Reweighter):
    r"""Running loss per sample, :math:`\bar\ell_i \leftarrow m \bar\ell_i + (1-m)\ell_i` (first visit:
    :math:`\bar\ell_i = \ell_i`), at most once per epoch per sample.

    Other strategies (and users) can read it with :meth:`read`. With ``temperature`` the weights are
    :math:`N\,\mathrm{softmax}(\bar\ell / T)` over the global batch (KL-DRO on smoothed losses, less noisy than
    ``loss_softmax``); without, the weights are 1 (pure tracking). Memory: 8 bytes per sample.

    Args:
        momentum: :math:`m \in [0, 1)`. Default 0.9.
        temperature: :math:`T > 0`, or ``None`` for uniform weights. Default ``None``.
        num_samples: dataset size (the table grows on demand otherwise).

    Example:
        >>> r = PerSampleEMA(momentum=0.5)
        >>> r(losses=torch.tensor([1.0, 3.0]), index=torch.tensor([4, 0]))
        tensor([1., 1.])
        >>> r.set_epoch(1)
        >>> _ = r(losses=torch.tensor([3.0]), index=torch.tensor([4]))
        >>> r.read(torch.tensor([0, 4]))
        tensor([3., 2.])
    """

    requires = ("index",)

    def __init__(self, momentum: float = 0.9, temperature: float | None = None, num_samples: int | None = None):
        super().__init__()
        self.momentum = check_number("momentum", momentum, low=0.0, high=1.0, high_open=True)
        self.temperature = (
            None if temperature is None else check_number("temperature", temperature, low=0.0, low_open=True)
        )
        self.hparams = self.capture_hparams(locals())
        self.statistics.update(index="cat", losses="cat")
        self.add_store(
            "store", PerSampleStore({"ema": (torch.float32, 0.0)}, _optional_int("num_samples", num_samples))
        )

    def read(self, index: torch.Tensor) -> torch.Tensor:
        """The running loss of the given samples (0 for samples never seen)."""
        return self.store.read("ema", index.to(self.store.stamp.device))

    def local_statistics(self, losses, inputs):
        return {"index": inputs["index"], "losses": losses}

    def compute(self, losses, synced, inputs):
        index, values, valid = synced["index"], synced["losses"], synced.get("sample_mask")
        fresh = self.store.fresh(index, self.epoch, valid)
        old = self.store.read("ema", index)
        new = torch.where(self.store.seen(index), self.momentum * old + (1.0 - self.momentum) * values, values)
        self.store.write(index, fresh, self.epoch, ema=new)
        if self.temperature is None:
            return torch.ones_like(losses)
        smoothed = self.store.read("ema", index).to(losses.dtype)
        return F.softmax_weights(smoothed, self.temperature, valid)[self.local_slice]


@REWEIGHTERS.register("jtt", aliases=("just_train_twice",))
class JTT(Reweighter):
    r"""Just Train Twice (Liu et al., ICML 2021), single-run loss-weight variant.

    Stage 1 (epochs ``< stage_epochs``): weights 1; each sample's training prediction is recorded per ``index``
    (the last record of the last stage-1 epoch wins), giving the error set :math:`E`. Stage 2: weight
    ``upweight`` (:math:`\lambda_{up}`) on :math:`E`, 1 elsewhere. Differences from the reference, which
    **retrains a new model** and **upsamples** :math:`E` by duplicating it: here the same model continues and
    :math:`E` is up-weighted in the loss (equal in expectation, not under SGD). Memory: 5 bytes per sample.

    Args:
        upweight: :math:`\lambda_{up} \ge 1` (reference commands: 4 to 100 by dataset).
        stage_epochs: :math:`T \ge 1` identification epochs (reference: 1 to 60 by dataset).
        num_samples: dataset size (the table grows on demand otherwise).

    Example:
        >>> r = JTT(upweight=5.0, stage_epochs=1)
        >>> logits, target, index = torch.tensor([[2.0, 0.0], [2.0, 0.0]]), torch.tensor([0, 1]), torch.tensor([0, 1])
        >>> r(losses=torch.zeros(2), logits=logits, target=target, index=index)
        tensor([1., 1.])
        >>> r.set_epoch(1)
        >>> r(losses=torch.zeros(2), logits=logits, target=target, index=index)
        tensor([1., 5.])
    """

    requires = ("index", "logits", "target")

    def __init__(self, upweight: float, stage_epochs: int, num_samples: int | None = None) -> None:
        super().__init__()
        self.upweight = check_number("upweight", upweight, low=1.0)
        self.stage_epochs = check_int("stage_epochs", stage_epochs, low=1)
        self.hparams = self.capture_hparams(locals())
        self.statistics.update(index="cat", error="cat")
        self.add_store(
            "store", PerSampleStore({"error": (torch.bool, False)}, _optional_int("num_samples", num_samples))
        )
        self._epoch = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._epoch = int(epoch)

    def load_state_dict(self, state) -> None:
        super().load_state_dict(state)
        self._epoch = int(self.epoch)

    @property
    def identifying(self) -> bool:
        """True in stage 1 (recording the error set)."""
        return self._epoch < self.stage_epochs

    def local_statistics(self, losses, inputs):
        if not self.identifying:
            return {}  # stage 2: the table is already identical on every rank, no collective
        logits, target = inputs["logits"].detach(), inputs["target"]
        pred = logits.argmax(-1) if logits.ndim == 2 else (logits > 0).long()
        return {"index": inputs["index"], "error": pred != target}

    def compute(self, losses, synced, inputs):
        if self.identifying:
            index = synced["index"]
            fresh = self.store.fresh(index, self.epoch, synced.get("sample_mask"))
            self.store.write(index, fresh, self.epoch, error=synced["error"])
            return torch.ones_like(losses)
        in_error_set = self.store.read("error", inputs["index"])
        return torch.where(in_error_set, self.upweight, 1.0).to(losses.dtype)

    def error_set_size(self) -> torch.Tensor:
        """Number of samples in the error set."""
        return self.store.tables["error"].sum()

    def log_values(self):
        return {"error_set_size": self.error_set_size().to(torch.float32)}
