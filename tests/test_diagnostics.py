"""Diagnostics without W&B: the helper's validation and rendering, a CSV-only run with every diagnostic on."""

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

import lightning_losses as ll
from lightning_losses.demo import DigitsClassifier, DigitsDataModule
from lightning_losses.diagnostics import MediaCadence, calibration_bins, log_histogram, reliability_diagram


def test_media_every_n_steps_is_validated():
    for build in (MediaCadence, lambda v: ll.SampleReweighting(media_every_n_steps=v)):
        with pytest.raises(ll.ConfigurationError, match=r"`media_every_n_steps` must be an integer >= 0, got -1"):
            build(-1)
    with pytest.raises(ll.ConfigurationError, match=r"`media_every_n_steps` must be an integer >= 0, got 'x'"):
        ll.EntropyControl(media_every_n_steps="x")
    assert [MediaCadence(0).due(s, 0) for s in (1, 2)] == [False, False]


def test_reliability_diagram_is_an_rgb_image_of_the_bins():
    conf = torch.tensor([0.05, 0.35, 0.36, 0.95])
    counts, conf_sum, acc_sum = calibration_bins(conf, torch.tensor([0.0, 1.0, 0.0, 1.0]), n_bins=10)
    assert counts.tolist() == [1, 0, 0, 2, 0, 0, 0, 0, 0, 1] and acc_sum[3] == 1.0
    image = reliability_diagram(counts, conf_sum, acc_sum, title="val")
    assert image.shape == (320, 320, 3) and str(image.dtype) == "uint8" and image.std() > 0


def _fit_all_diagnostics(logger, tmp_path, **kwargs):
    L.seed_everything(0, verbose=False)
    callbacks = [
        ll.SampleReweighting("group_dro", step_size=0.01, media_every_n_steps=1),
        ll.EntropyControl(beta=0.1, media_every_n_steps=1),
        ll.SAM(rho=0.05, every_n_steps=2),
        ll.CalibrationMonitor(),
        ll.TemperatureScaling(),
    ]
    trainer = L.Trainer(
        callbacks=callbacks, logger=logger, accelerator="cpu", default_root_dir=tmp_path, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=2, **kwargs,
    )  # fmt: skip
    model = DigitsClassifier(num_features=74, dropout=0.0, cosine_schedule=False)
    trainer.fit(model, DigitsDataModule(batch_size=64, spurious=0.9))
    return trainer


def test_csv_only_run_with_every_diagnostic_on_does_not_fail(tmp_path):
    logger = CSVLogger(tmp_path)
    trainer = _fit_all_diagnostics(logger, tmp_path, max_epochs=2, limit_train_batches=2, log_every_n_steps=1)
    assert not log_histogram(trainer, "x", torch.ones(3))  # no media logger: nothing logged, no error
    with open(f"{logger.log_dir}/metrics.csv") as f:
        columns = set(next(csv.reader(f)))
    expected = {"entropy/mean", "reweight/ess", "reweight/worst_group_acc", "perturbation/perturbed_fraction"}
    expected |= {"perturbation/cos_delta_grad", "perturbation/sharpness", "perturbation/skipped"}
    assert expected | {"val/ece", "calibration/temperature"} <= columns
    assert float(trainer.callback_metrics["perturbation/perturbed_fraction"]) == 0.5  # every 2nd step perturbed
    assert not any("reliability" in c or "per_sample" in c or c == "reweight/weights" for c in columns)


def test_sam_logs_the_cosine_between_the_gradients_at_w_and_w_plus_delta():
    """On L(w) = w^T A w / 2 the gradients are A w and A (w + delta), delta = rho A w / |A w| (SAM)."""
    from lightning_losses.perturbation.manual import perturbed_backward
    from lightning_losses.perturbation.presets import build_perturbation

    a = torch.tensor([1.0, 10.0])
    w = torch.nn.Parameter(torch.tensor([10.0, 1.0]))
    module = torch.nn.Module()
    module.w = w
    engine = build_perturbation("sam", rho=1.0)
    perturbed_backward(engine, module, lambda: 0.5 * (a * w * w).sum())
    g0 = a * w.detach()
    g1 = a * (w.detach() + g0 / g0.norm())
    expected = torch.dot(g0, g1) / (g0.norm() * g1.norm())
    assert float(expected) < 0.98  # a cosine that tells
    torch.testing.assert_close(engine.last_stats["cos_delta_grad"], expected)
    torch.testing.assert_close(w.grad, g1)


def test_perturbation_logs_its_step_time_against_the_unperturbed_pass(tmp_path):
    """SAM every second step: a perturbed step's closure runs two forward-backward passes (ratio near 2), an
    unperturbed one runs one (ratio 1); both timed on the logging steps only."""
    L.seed_everything(0, verbose=False)
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(
        callbacks=[ll.SAM(rho=0.05, every_n_steps=2)], logger=logger, accelerator="cpu", default_root_dir=tmp_path,
        max_steps=8, log_every_n_steps=1, limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(DigitsClassifier(dropout=0.0, cosine_schedule=False), DigitsDataModule(batch_size=64))
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perturbation/time_ratio")]
    assert [int(r["step"]) for r in rows] == list(range(8))
    ratios = [float(r["perturbation/time_ratio"]) for r in rows]
    assert all(float(r["perturbation/step_time"]) > 0 for r in rows)
    perturbed, plain = ratios[0::2], ratios[1::2]  # steps 0, 2, ... are perturbed
    assert all(1.0 <= r < 1.05 for r in plain), ratios
    assert min(perturbed) > 1.3, ratios
