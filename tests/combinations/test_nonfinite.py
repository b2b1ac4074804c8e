"""Non-finite values found by the combination matrix: a NaN seen once must not resurface later as a finite loss
with NaN gradients (DESIGN, "Non-finite values and skipped steps")."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

import lightning_losses as ll
from lightning_losses.functional.distillation import kd

from . import _matrix as M


def test_kd_with_a_non_finite_teacher_row_is_not_a_finite_loss_with_nan_gradient():
    logits = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[float("nan")] * 3, [0.1, 0.2, 0.3]], dtype=torch.float64)
    value = kd(logits, teacher, temperature=2.0)
    value.sum().backward()
    finite_value = torch.isfinite(value)
    finite_grad = torch.isfinite(logits.grad).all(dim=1)
    # either the row's loss shows the NaN (a guard on the loss catches it) or its gradient is finite
    assert not (finite_value & ~finite_grad).any(), f"loss {value.tolist()} but gradient {logits.grad.tolist()}"


class _CleanFromEpoch1(L.Callback):
    """The NaN samples are NaN in epoch 0 only."""

    def __init__(self, data: M.MatrixData) -> None:
        self.data = data

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            self.data.scale.fill_(1.0)


class _Losses(L.Callback):
    def __init__(self):
        self.losses = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append((trainer.current_epoch, batch_idx, float(outputs["loss"]) if outputs else None))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_saf_after_a_skipped_nan_batch_keeps_weights_finite():
    """Epoch 0: batch 1 has NaN logits for some samples and ``training_step`` returns ``None``. Epoch 1 (SAF's term
    on, ``epochs_ago=1``): every loss is finite, so every step is taken; the weights must stay finite."""
    data = M.MatrixData(nan="nan")
    saf = ll.SAF(coefficient=0.5, temperature=2.0, epochs_ago=1, start_epoch=1, num_samples=M.N)
    model, losses = M.MatrixNet(), _Losses()
    M.trainer_for([saf, _CleanFromEpoch1(data), losses], 1).fit(model, DataLoader(data, batch_size=M.CHUNK))
    assert [loss is None for _, _, loss in losses.losses] == [False, True, False, False], losses.losses
    bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
    assert not bad, f"non-finite weights after finite losses {losses.losses}: {bad}"
    assert bool(torch.isfinite(saf.logits).all()), "SAF recorded non-finite outputs in its trajectory table"
