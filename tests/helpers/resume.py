"""A callback for crash-and-resume tests: the batches each epoch saw, and a crash at a chosen batch."""

from __future__ import annotations

import collections

import lightning as L


class BatchSpy(L.Callback):
    """Records ``batch["index"]`` per epoch (:attr:`seen`) and raises ``RuntimeError("simulated crash")`` at the
    batch ``crash_at = (epoch, batch_idx)`` before it runs."""

    def __init__(self, crash_at: tuple[int, int] | None = None) -> None:
        self.seen, self.crash_at = collections.defaultdict(list), crash_at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.crash_at == (trainer.current_epoch, batch_idx):
            raise RuntimeError("simulated crash")
        self.seen[trainer.current_epoch].append(batch["index"].clone())
