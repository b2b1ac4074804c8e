r"""SAF: sharpness-aware training at the cost of a plain step (Du, Zhou, Feng, Tan, Zhou, *Sharpness-Aware Training
for Free*, NeurIPS 2022).

Instead of SAM's second forward-backward pass, SAF adds a *trajectory loss*: the KL divergence between the outputs
recorded for the same sample :math:`\tilde E` epochs ago and the current outputs, both softened by a temperature
:math:`\tau`,

.. math::
    \ell_i = \ell^{task}_i + \lambda\,\tau^2\,\mathrm{KL}\big(\mathrm{softmax}(z_i^{(e-\tilde E)}/\tau)\,\|\,
             \mathrm{softmax}(z_i^{(e)}/\tau)\big),

applied from epoch ``start_epoch`` on. The per-sample term is :func:`lightning_losses.functional.kd` with the past
logits as the teacher. Cost: one forward-backward per step plus a table lookup; memory: ``num_samples x
(epochs_ago + 1) x C`` float32 logits (the reference keeps the same ring buffer).

Reference (AngusDujw/SAF ``SAF_train.py``, README): ``--reinforce`` :math:`\lambda` = 0.3 (SAF), ``--temperature``
5, ``--minus_epoch`` :math:`\tilde E` = 2 (README: 2 or 3), ``--kl_start_epoch`` 5 applied when ``epoch >
kl_start_epoch``, i.e. ``start_epoch=6`` here (``start_epoch`` is the first epoch with the term, 0-based).
Differences: a sample that was not seen :math:`\tilde E` epochs ago (``drop_last``, an odd sampler) gets no term
instead of a stale row; under DDP the table is written from the all-gathered batch, so every rank holds every
sample's past outputs (the reference's per-rank table misses the samples another rank saw).

Non-finite outputs never enter the table: a sample whose logits hold a NaN / inf keeps its old row (so it gets no
term :math:`\tilde E` epochs later), counted in :attr:`SAF.nonfinite` (from the gathered batch: identical on every
rank). A ``training_step`` that returns ``None`` skips the step here too: the rows it wrote are put back.
"""

from __future__ import annotations

from typing import Any

import torch
from typing_extensions import override

from lightning_losses import distributed
from lightning_losses._state import representative, step_skipped
from lightning_losses._validation import check_int, check_number, check_state_keys
from lightning_losses.callbacks import CALLBACKS, MixinCallback
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.distillation import kd
from lightning_losses.schedules import Schedule, build_schedule
from lightning_losses.sync import sync_statistics

__all__ = ["SAF"]


class SAF(MixinCallback):
    r"""Sharpness-Aware Training for Free: the trajectory loss as an extra per-sample objective term.

    Needs ``compute_loss(logits=..., index=...)`` with ``index`` the sample's position in the training set (the
    demo's ``DigitsDataModule`` provides it).

    Args:
        coefficient: :math:`\lambda`, a number or a schedule mapping over optimizer steps. Default 0.3 (the
            reference's SAF value; it uses 0.8 for MESA).
        temperature: :math:`\tau`. Default 5.
        epochs_ago: :math:`\tilde E`, how many epochs back the reference outputs were recorded. Default 2.
        start_epoch: first (0-based) epoch with the term. Default 6 (the reference's ``epoch > 5``).
        num_samples: training-set size; default: the length of the training DataLoader's dataset.
        input / index: names of the logits and index tensors passed to ``compute_loss``. Default ``"logits"``,
            ``"index"``.
        name: the term's name in the objective (logged as ``train/{name}``). Default ``"saf"``.

    Example:
        >>> import lightning as L
        >>> from lightning_losses.demo import DigitsClassifier, DigitsDataModule
        >>> trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0, logger=False,
        ...                     callbacks=[SAF(epochs_ago=1, start_epoch=1)], enable_progress_bar=False,
        ...                     enable_checkpointing=False, enable_model_summary=False)
        >>> trainer.fit(DigitsClassifier(), DigitsDataModule())
        >>> trainer.global_step
        4
    """

    def __init__(
        self,
        coefficient: Any = 0.3,
        temperature: float = 5.0,
        epochs_ago: int = 2,
        start_epoch: int = 6,
        num_samples: int | None = None,
        input: str = "logits",
        index: str = "index",
        name: str = "saf",
    ) -> None:
        self.coefficient: Schedule = build_schedule(coefficient)
        check_number("coefficient", self.coefficient(0), low=0.0)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        self.epochs_ago = check_int("epochs_ago", epochs_ago, low=1)
        self.start_epoch = check_int("start_epoch", start_epoch, low=0)
        self.num_samples = None if num_samples is None else check_int("num_samples", num_samples, low=1)
        for key, value in (("input", input), ("index", index), ("name", name)):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"`{key}` must be a non-empty string, got {value!r}")
        self.input, self.index, self.name = input, index, name
        self.logits: torch.Tensor | None = None  #: ``[num_samples, epochs_ago + 1, C]`` recorded outputs
        self.stamp: torch.Tensor | None = None  #: ``[num_samples, epochs_ago + 1]`` epoch of each row (-1: empty)
        self.nonfinite: torch.Tensor | int = 0  #: samples whose outputs were not recorded (not finite)
        self._journal: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] | None = None  # rows overwritten

    slot = "terms"

    @override
    def state_key_fields(self) -> dict[str, Any]:
        return {"name": self.name}

    # ------------------------------------------------------------------ lifecycle
    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.num_samples is None:
            loader = getattr(trainer, "train_dataloader", None)
            try:
                self.num_samples = len(loader.dataset)  # type: ignore[union-attr, arg-type]
            except (AttributeError, TypeError):
                raise ConfigurationError(
                    "SAF needs `num_samples` (the training-set size) when the training DataLoader's dataset has no "
                    "length"
                ) from None

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._journal = []

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if step_skipped(pl_module, outputs) and self._journal and self.logits is not None and self.stamp is not None:
            for index, slot, rows, stamps in reversed(self._journal):  # the skipped step recorded nothing
                self.logits[index, slot] = rows
                self.stamp[index, slot] = stamps
        self._journal = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"logits": self.logits, "stamp": self.stamp}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_keys(f"SAF `{self.name}`", state_dict, ("logits", "stamp"))
        self.logits, self.stamp = state_dict["logits"], state_dict["stamp"]
        self._restored = self.logits is not None  # a table of another shape must not be replaced silently

    # ------------------------------------------------------------------ the term
    def _tables(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.num_samples is None:
            raise ConfigurationError("SAF needs `num_samples` (the training-set size) outside a Trainer")
        shape = (self.num_samples, self.epochs_ago + 1, logits.shape[-1])
        if self.logits is not None and self.logits.shape != shape and self.__dict__.get("_restored"):
            raise ConfigurationError(
                f"SAF `{self.name}`: the checkpointed trajectory table has shape {list(self.logits.shape)} but this "
                f"run needs {list(shape)} (samples, `epochs_ago` + 1, classes); resume with the same data and "
                "`epochs_ago`"
            )
        self._restored = False
        if self.logits is None or self.logits.shape != shape:
            self.logits = torch.zeros(shape, dtype=torch.float32, device=logits.device)
            self.stamp = torch.full(shape[:2], -1, dtype=torch.int32, device=logits.device)
        elif self.logits.device != logits.device:
            self.logits, self.stamp = self.logits.to(logits.device), self.stamp.to(logits.device)  # type: ignore
        return self.logits, self.stamp  # type: ignore[return-value]

    def record(self, index: torch.Tensor, logits: torch.Tensor, epoch: int) -> None:
        """Store this batch's detached outputs as epoch ``epoch``'s (from every rank under DDP)."""
        table, stamp = self._tables(logits)
        values = logits.detach().float()
        if distributed.is_distributed():
            synced, _ = sync_statistics({"index": index, "logits": values}, {"index": "cat", "logits": "cat"})
            index, values = synced["index"].long(), synced["logits"]
        finite = torch.isfinite(values).all(-1)
        rep = representative(index, finite)  # duplicates (sampler padding) all write the first finite copy's row
        keep = finite[rep]
        slot = epoch % (self.epochs_ago + 1)
        old_rows, old_stamps = table[index, slot], stamp[index, slot]
        if self._journal is not None:  # inside a training batch: keep what a skipped step must put back
            self._journal.append((index, slot, old_rows, old_stamps))
        table[index, slot] = torch.where(keep[:, None], values[rep], old_rows)
        stamp[index, slot] = torch.where(keep, torch.full_like(old_stamps, epoch), old_stamps)
        self.nonfinite = self.nonfinite + (~finite).sum()  # a tensor: no host sync

    def extra_terms(self, module: Any, tensors: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """The mixin's ``"terms"`` hook: ``{name: lambda * tau^2 KL(past || now)}`` per sample."""
        for key in (self.input, self.index):
            if key not in tensors:
                given = sorted(tensors)
                raise ValueError(f"SAF needs `{key}` in compute_loss(...) (see `input` / `index`); got {given}")
        logits, index = tensors[self.input], tensors[self.index].long()
        if logits.ndim != 2:
            raise ValueError(f"`{self.input}` must have shape [N, C] for SAF, got {list(logits.shape)}")
        epoch = int(module.current_epoch)
        table, stamp = self._tables(logits)
        term = logits.new_zeros(logits.shape[0], dtype=torch.float32)
        if epoch >= self.start_epoch:
            past_epoch = epoch - self.epochs_ago
            slot = past_epoch % (self.epochs_ago + 1)
            valid = stamp[index, slot] == past_epoch
            past = table[index, slot].to(torch.promote_types(logits.dtype, torch.float32))
            kl = kd(logits, past, temperature=self.temperature)
            coef = self.coefficient(step)
            term = coef * torch.where(valid, kl, torch.zeros_like(kl))
        if not getattr(module, "objective_logging_suppressed", False):  # perturbed passes do not record
            self.record(index, logits, epoch)
        return {self.name: term}


CALLBACKS.register("saf")(SAF)
