"""Calibration: ECE against an explicit loop, the fitted temperature against scipy, and the callbacks."""

import lightning as L
import numpy as np
import pytest
import scipy.optimize
import torch

import lightning_losses as ll
from lightning_losses.demo import DigitsClassifier, DigitsDataModule
from lightning_losses.entropy import expected_calibration_error, fit_temperature
from lightning_losses.errors import ConfigurationError


def _ece_loop(probs, target, n_bins):
    conf, pred = probs.max(-1)
    ece, n = 0.0, len(target)
    edges = np.linspace(0, 1, n_bins + 1)
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = [(c > lo) and (c <= hi) for c in conf.tolist()]
        idx = [i for i, b in enumerate(in_bin) if b]
        if idx:
            acc = sum(int(pred[i] == target[i]) for i in idx) / len(idx)
            avg_conf = sum(float(conf[i]) for i in idx) / len(idx)
            ece += len(idx) / n * abs(acc - avg_conf)
    return ece


def _data(n=400, c=4, scale=3.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    z = torch.nn.functional.one_hot(y, c).float() * 1.5 + torch.randn(n, c, generator=g)
    return z * scale, y


def test_ece_matches_loop():
    z, y = _data()
    got = float(expected_calibration_error(z, y, n_bins=10))
    assert got == pytest.approx(_ece_loop(torch.softmax(z, -1), y, 10), abs=1e-5)


def test_fit_temperature_matches_scipy():
    z, y = _data(scale=3.0)
    zd = z.double()

    def nll(t):
        return float(torch.nn.functional.cross_entropy(zd / t, y))

    ref = scipy.optimize.minimize_scalar(nll, bounds=(0.05, 20.0), method="bounded", options={"xatol": 1e-8}).x
    t = fit_temperature(z, y)
    assert t == pytest.approx(ref, rel=1e-4)
    assert t > 1.5  # logits scaled up by 3: overconfident, T > 1
    assert expected_calibration_error(z / t, y) < expected_calibration_error(z, y)


class _Overconfident(DigitsClassifier):
    """The demo model whose evaluation logits are multiplied by 5: same accuracy, far too confident."""

    def forward(self, x):
        return self.net(x) * (1.0 if self.training else 5.0)


def test_temperature_scaling_callback_reduces_ece_and_resumes(tmp_path):
    L.seed_everything(0, verbose=False)
    model, dm = _Overconfident(dropout=0.0), DigitsDataModule(batch_size=128)
    ts, monitor = ll.TemperatureScaling(), ll.CalibrationMonitor()
    trainer = L.Trainer(
        max_epochs=4,
        callbacks=[ts, monitor],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(model, dm)
    assert ts.temperature > 1.5 and ts.ece_after < ts.ece_before, (ts.temperature, ts.ece_before, ts.ece_after)
    logged = {k: float(trainer.callback_metrics[f"calibration/{k}"]) for k in ("temperature", "val_ece_after")}
    assert logged == pytest.approx({"temperature": ts.temperature, "val_ece_after": ts.ece_after})  # monitorable
    x = dm.datasets["test"].tensors["x"][:8]
    model.eval()
    torch.testing.assert_close(model(x), model.net(x) * 5.0 / ts.temperature)  # the hook divides by T
    scaled = trainer.test(model, dm, verbose=False)[0]
    ts.remove()
    raw = trainer.test(model, dm, verbose=False)[0]
    assert scaled["test/acc"] == raw["test/acc"]
    assert scaled["test/ece"] < raw["test/ece"]
    assert monitor.last["val"] > 0  # logged during fit too
    # checkpoint round trip: a fresh callback re-installs the hook when testing
    fresh = ll.TemperatureScaling()
    fresh.load_state_dict(ts.state_dict())
    fresh.on_test_start(trainer, model)
    model.eval()
    torch.testing.assert_close(model(x), model.net(x) * 5.0 / ts.temperature)
    fresh.remove()


def test_errors():
    with pytest.raises(ConfigurationError, match="`n_bins` must be an integer >= 1, got 0"):
        ll.TemperatureScaling(n_bins=0)
    with pytest.raises(ConfigurationError, match="`target_key` must be the batch key of the labels"):
        ll.TemperatureScaling(target_key="")
    with pytest.raises(ConfigurationError, match="`input_key` must be the batch key of the model input"):
        ll.CalibrationMonitor(input_key=None)
    with pytest.raises(ConfigurationError, match="`stages` must be a non-empty list from 'val', 'test'"):
        ll.CalibrationMonitor(stages=["train"])
    with pytest.raises(ConfigurationError, match="`max_iter` must be an integer >= 1, got 0"):
        ll.TemperatureScaling(max_iter=0)
    with pytest.raises(ConfigurationError, match="`target_key` must be the batch key of the labels, got None"):
        ll.CalibrationMonitor(target_key=None)
    with pytest.raises(ConfigurationError, match="`forward_fn` must be callable as forward_fn"):
        ll.TemperatureScaling(forward_fn="self")
    with pytest.raises(ConfigurationError, match="checkpointed `temperature` must be a positive float"):
        ll.TemperatureScaling().load_state_dict({"temperature": -1.0})


def test_tent_recipe_builds():
    from pathlib import Path

    from lightning_losses.config import build_run, load_recipe

    path = Path(__file__).resolve().parents[2] / "configs" / "tent_digits.yaml"
    run = build_run(load_recipe(path, ["logger=none", "trainer.max_steps=1"]))
    kinds = {type(c) for c in run.callbacks}
    assert {ll.Tent, ll.TemperatureScaling, ll.CalibrationMonitor} <= kinds
    assert run.model.hparams.batch_norm and not run.trainer.test_loop.inference_mode


# ---------------------------------------------------------------- DDP


def _ddp_temperature(shards):
    from types import SimpleNamespace

    from torch.utils.data import DataLoader

    from lightning_losses.demo import DictDataset
    from lightning_losses.distributed import rank

    torch.manual_seed(0)
    model = _Overconfident(num_features=4, num_classes=4, dropout=0.0)
    x, y = shards[rank()]
    loader = DataLoader(DictDataset(x=x, target=y), batch_size=7)
    ts = ll.TemperatureScaling()
    trainer = SimpleNamespace(val_dataloaders=loader, datamodule=None, loggers=[], global_step=0)
    ts.on_fit_end(trainer, model)
    ts.remove()
    with torch.no_grad():
        model.eval()
        logits = model(torch.cat([s[0] for s in shards]))
    return ts.temperature, ts.ece_before, logits


def test_ddp_temperature_is_fitted_on_the_global_validation_set(ddp):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(50, 4, generator=g), torch.randint(0, 4, (50,), generator=g)
    shards = [(x[:30], y[:30]), (x[30:], y[30:])]  # unequal shard sizes
    (t0, e0, z), (t1, e1, _) = ddp.run(_ddp_temperature, shards)
    assert t0 == t1 and e0 == e1
    assert t0 == pytest.approx(fit_temperature(z, y), rel=1e-6)  # one process on the concatenated set
    assert e0 == pytest.approx(float(expected_calibration_error(z, y)), rel=1e-6)
