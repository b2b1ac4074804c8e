"""The mixin's training-step logs (``train/loss``, ``train/{term}``): a name's later calls in a hook skip
``LightningModule.log``'s per-call work (``_compat.log_on_step``), and every logged value, row and monitored metric is
what ``LightningModule.log`` on every call gives."""

import csv

import lightning as L
import pytest
import torch

import lightning_losses as ll
import lightning_losses.mixin as mixin_module
from lightning_losses.demo import DigitsClassifier, DigitsDataModule


def _log_every_call(module, trainer, metrics, batch_size):
    for name, value in metrics.items():
        module.log(name, value, on_step=True, on_epoch=False, sync_dist=False, batch_size=batch_size)


def _fit(tmp_path, name, objective, callbacks, override_log=False):
    L.seed_everything(0, verbose=False)
    calls = []
    lightning_log = L.LightningModule.log

    def counted(self, name, *args, **kwargs):  # `log_dict` passes the name by keyword
        calls.append(name)
        lightning_log(self, name, *args, **kwargs)

    if override_log:  # a user's module with its own `log`: every call goes through it

        class Model(DigitsClassifier):
            def log(self, name, *args, **kwargs):
                counted(self, name, *args, **kwargs)

    else:  # Lightning's own `log`, counted where it is defined
        Model = DigitsClassifier
    model = Model(hidden_dim=16, dropout=0.0, objective=objective)
    trainer = L.Trainer(
        max_epochs=3, limit_train_batches=6, limit_val_batches=2, accumulate_grad_batches=2, log_every_n_steps=1,
        accelerator="cpu", devices=1, logger=L.pytorch.loggers.CSVLogger(tmp_path, name=name, version=0),
        callbacks=callbacks(), enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as patch:
        if not override_log:
            patch.setattr(L.LightningModule, "log", counted)
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32))
    with open(tmp_path / name / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return rows, dict(trainer.callback_metrics), calls


@pytest.mark.parametrize(
    ("objective", "callbacks", "keys"),
    [
        pytest.param({"cross_entropy": {}}, list, ["train/loss"], id="one-term"),
        pytest.param(
            {"cross_entropy": {}, "focal": {"coefficient": 0.5}},
            lambda: [ll.SAM(rho=0.05), ll.SampleReweighting("loss_softmax")],
            ["train/loss", "train/cross_entropy", "train/focal"],
            id="two-terms-sam-reweighted",
        ),
    ],
)
def test_rows_and_monitored_values_equal_logging_every_call(tmp_path, monkeypatch, objective, callbacks, keys):
    rows, monitored, calls = _fit(tmp_path, "once", objective, callbacks)
    with monkeypatch.context() as patch:
        patch.setattr(mixin_module, "log_on_step", _log_every_call)
        rows_ref, monitored_ref, calls_ref = _fit(tmp_path, "every", objective, callbacks)
    timing = {k for row in rows_ref for k in row if "time" in k}  # wall-clock statistics differ between fits
    strip = lambda table: [{k: v for k, v in row.items() if k not in timing} for row in table]  # noqa: E731
    assert strip(rows) == strip(rows_ref)  # every logger row: the same steps, keys and values
    assert [r["train/loss"] for r in rows if r["train/loss"]]  # the loss is in the rows
    assert monitored.keys() == monitored_ref.keys() and set(keys) <= monitored.keys()
    for key, value in monitored_ref.items():
        if key in timing:
            continue
        torch.testing.assert_close(monitored[key], value, rtol=0, atol=0, msg=key)
    # 3 epochs x 6 micro-batches: `LightningModule.log` ran for each name once per epoch, instead of on every call
    for key in keys:
        assert calls_ref.count(key) == 18 and calls.count(key) == 3, key


def test_a_module_that_overrides_log_gets_every_call(tmp_path):
    _, _, calls = _fit(tmp_path, "own", {"cross_entropy": {}}, list, override_log=True)
    assert calls.count("train/loss") == 18  # 3 epochs x 6 micro-batches, all through the module's own `log`
