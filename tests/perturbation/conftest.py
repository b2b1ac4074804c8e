"""Shared fixtures of the perturbation tests."""

import pytest

import lightning_losses.mixin as mixin


@pytest.fixture(autouse=True)
def _step_logs_counted(monkeypatch):
    """``Tiny.logged`` lists every training-step log of the mixin once per call: after a name's first call in a hook,
    the mixin's ``log_on_step`` skips ``LightningModule.log`` (which ``Tiny.log`` records)."""
    original = mixin.log_on_step

    def counted(module, trainer, metrics, batch_size):
        logged = module.__dict__.get("logged")
        if logged is None:
            return original(module, trainer, metrics, batch_size)
        before = len(logged)
        original(module, trainer, metrics, batch_size)
        del logged[before:]  # the calls that went through `log`
        logged.extend(metrics)

    monkeypatch.setattr(mixin, "log_on_step", counted)
