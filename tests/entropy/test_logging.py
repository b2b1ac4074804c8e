"""EntropyControl logs through Lightning: monitorable, in ``callback_metrics``, on the steps of ``train/*``."""

import lightning as L
import pytest
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.loggers import Logger

import lightning_losses as ll
from lightning_losses.demo import DigitsClassifier, DigitsDataModule


class _MemoryLogger(Logger):
    name, version = "memory", 0

    def __init__(self):
        super().__init__()
        self.rows = []

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs):
        pass


def _fit(callbacks, logger=None, **kwargs):
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        callbacks=callbacks, logger=logger if logger is not None else False, accelerator="cpu", limit_val_batches=0,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, **kwargs,
    )  # fmt: skip
    trainer.fit(DigitsClassifier(dropout=0.0, cosine_schedule=False), DigitsDataModule(batch_size=64))
    return trainer


def _steps(rows, key):
    return [step for step, metrics in rows if key in metrics]


def test_entropy_follows_the_trainer_cadence_and_steps_of_train_metrics():
    logger = _MemoryLogger()
    trainer = _fit([ll.EntropyControl(target=1.0)], logger, max_steps=9, log_every_n_steps=3)
    assert _steps(logger.rows, "entropy/mean") == _steps(logger.rows, "train/loss") == [2, 5, 8]
    assert {"entropy/mean", "entropy/beta", "entropy/target", "entropy/nonfinite"} <= set(trainer.callback_metrics)


def test_entropy_own_interval_is_monitorable_and_on_the_train_step_scale():
    """``log_every_n_steps=2`` (its own period): logged after optimizer steps 2, 4, 6, 8, at the step numbers the
    Trainer writes ``train/*`` at for those steps (1, 3, 5, 7)."""
    logger = _MemoryLogger()
    trainer = _fit([ll.EntropyControl(beta=0.1, log_every_n_steps=2)], logger, max_steps=8, log_every_n_steps=1)
    assert _steps(logger.rows, "entropy/mean") == [1, 3, 5, 7]
    assert set(_steps(logger.rows, "entropy/mean")) <= set(_steps(logger.rows, "train/loss"))
    assert "entropy/mean" in trainer.callback_metrics


@pytest.mark.parametrize("own_interval", [None, 1])
def test_early_stopping_on_entropy_mean(own_interval):
    """The entropy falls epoch after epoch with a negative beta: `mode="max"` with `patience=0` stops at epoch 1."""
    cb = ll.EntropyControl(beta=-0.5, log_every_n_steps=own_interval)
    stop = EarlyStopping(monitor="entropy/mean", mode="max", patience=0, check_on_train_epoch_end=True)
    trainer = _fit([cb, stop], max_epochs=5, limit_train_batches=4, log_every_n_steps=1)
    assert stop.stopped_epoch == 1 and trainer.current_epoch == 2
    assert float(trainer.callback_metrics["entropy/mean"]) == pytest.approx(cb.last_metrics["entropy/mean"])
