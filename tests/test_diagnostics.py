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
    for build in (
        MediaCadence,
        lambda v: ll.SampleReweighting(media_every_n_steps=v),
        lambda v: ll.CalibrationMonitor(media_every_n_steps=v),
    ):
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


def test_perturbation_logs_its_step_time_against_the_unperturbed_pass(tmp_path, monkeypatch):
    """SAM every second step: a perturbed step's closure runs two forward-backward passes, an unperturbed one runs
    one. The clock is a fake that only a ``training_step`` advances (by 1 s), so the times are exact."""
    from lightning_losses.perturbation import timing

    clock = {"now": 0.0}
    monkeypatch.setattr(timing.time, "perf_counter", lambda: clock["now"])

    class Timed(DigitsClassifier):
        def training_step(self, batch, batch_idx):
            clock["now"] += 1.0
            return super().training_step(batch, batch_idx)

    L.seed_everything(0, verbose=False)
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(
        callbacks=[ll.SAM(rho=0.05, every_n_steps=2)], logger=logger, accelerator="cpu", default_root_dir=tmp_path,
        max_steps=8, log_every_n_steps=1, limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Timed(dropout=0.0, cosine_schedule=False), DigitsDataModule(batch_size=64))
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perturbation/time_ratio")]
    # steps 0, 2, 4, 6 are perturbed: two training_step passes in the closure; the others one
    expected = [(s, 2.0, 2.0) if s % 2 == 0 else (s, 1.0, 1.0) for s in range(8)]
    got = [(int(r["step"]), float(r["perturbation/step_time"]), float(r["perturbation/time_ratio"])) for r in rows]
    assert got == expected


def test_perturbation_step_time_is_measured_on_the_logging_steps_only(tmp_path):
    L.seed_everything(0, verbose=False)
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(
        callbacks=[ll.SAM(rho=0.05)], logger=logger, accelerator="cpu", default_root_dir=tmp_path, max_steps=6,
        log_every_n_steps=3, limit_val_batches=0, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(DigitsClassifier(dropout=0.0, cosine_schedule=False), DigitsDataModule(batch_size=64))
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perturbation/step_time")]
    assert [int(r["step"]) for r in rows] == [2, 5]
    assert all(float(r["perturbation/time_ratio"]) > 1.0 for r in rows)


def _histogram_on_rank():
    """Each rank logs a histogram of its own values (3 on rank 0; 4 and a NaN on rank 1) to a recording W&B logger."""
    from types import SimpleNamespace

    import torch.distributed as dist
    from lightning.pytorch.loggers import WandbLogger

    class Recorder(WandbLogger):
        def __init__(self):  # no W&B run: only the type matters to the helper
            self.logged = []

        def log_metrics(self, metrics, step=None):
            self.logged.append((step, metrics))

    rank = dist.get_rank()
    values = torch.arange(3.0) if rank == 0 else torch.tensor([3.0, 4.0, float("nan"), 5.0, 6.0])
    recorder = Recorder()
    assert log_histogram(SimpleNamespace(loggers=[recorder]), "h", values, step=5, bins=7)
    ((step, metrics),) = recorder.logged
    hist = metrics["h"]
    return step, list(hist.histogram), [float(b) for b in hist.bins]


def test_histograms_cover_the_global_batch_under_ddp(ddp):
    for step, counts, bins in ddp.run(_histogram_on_rank):
        assert step == 5 and counts == [1] * 7  # 0..6 from both ranks, the NaN left out
        assert bins[0] == 0.0 and bins[-1] == 6.0


def test_every_diagnostic_of_a_logging_step_is_in_the_trainers_own_row(tmp_path):
    """One logger row per logging step: ``train/*``, the objective's and every callback's step statistics together
    (one logger call a step, whatever the number of callbacks); an own interval between them gets rows of its own."""
    logger = CSVLogger(tmp_path)
    callbacks = [
        ll.SampleReweighting("group_dro", step_size=0.01, media_every_n_steps=0),
        ll.EntropyControl(beta=0.1, log_every_n_steps=3),  # its own interval: optimizer steps 3 and 6
        ll.SAM(rho=0.05),
    ]
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        callbacks=callbacks, logger=logger, accelerator="cpu", default_root_dir=tmp_path, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, max_steps=6, log_every_n_steps=2,
    )  # fmt: skip
    trainer.fit(DigitsClassifier(num_features=74, dropout=0.0), DigitsDataModule(batch_size=64, spurious=0.9))
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = [{k: v for k, v in r.items() if v != ""} for r in csv.DictReader(f)]
    steps = [int(r["step"]) for r in rows if "train/loss" in r]
    assert steps == [1, 3, 5]
    keys = {"reweight/ess", "perturbation/sharpness", "objective/nonfinite", "objective/coef/cross_entropy"}
    assert all(keys <= set(r) for r in rows if "train/loss" in r)
    # the entropy row of its step 2 on its own; at step 5 it falls on a logging step: in that row; last, the epoch's
    assert [(int(r["step"]), "train/loss" in r, "entropy/mean" in r) for r in rows] == [
        (1, True, False), (2, False, True), (3, True, False), (5, True, True), (5, False, False),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "values",
    [
        torch.randn(1000, generator=torch.Generator().manual_seed(0)),
        torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 7 - 2,
        torch.full((5,), 1.0),  # equal values: the range widened as numpy does
        torch.tensor([3.0, float("inf"), float("nan"), -1.0]),
        torch.tensor([2.0, float("-inf"), 0.5]),  # only the low extreme is not finite
        torch.tensor([float("nan"), 2.0, 4.0]),  # a NaN first
        torch.arange(8, dtype=torch.int64),
    ],
)
def test_device_histogram_equals_numpy(values):
    import numpy as np

    from lightning_losses.diagnostics import histogram

    finite = values[torch.isfinite(values)].double().numpy()
    counts, edges = np.histogram(finite, bins=16)
    got = histogram(values, bins=16)
    assert got[0] == counts.tolist()
    np.testing.assert_allclose(got[1], edges, rtol=1e-6, atol=1e-9)
    assert histogram(torch.tensor([float("nan")])) is None
    assert histogram(torch.tensor([float("inf"), float("-inf")])) is None and histogram(torch.ones(0)) is None


def test_histogram_bins_are_validated():
    from lightning_losses.diagnostics import histogram
    from lightning_losses.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"`bins` must be an integer >= 1, got 0"):
        histogram(torch.ones(3), bins=0)
