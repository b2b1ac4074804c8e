"""The objective's diagnostics: coefficients and non-finite counts through Lightning on the logging steps."""

import csv

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lightning_losses.demo import DigitsClassifier, DigitsDataModule


class _NanOnBatches(DigitsClassifier):
    """Training batches number ``bad_batches`` (counted from 1) get a NaN logit in 3 samples; that step is skipped."""

    def __init__(self, bad_batches):
        super().__init__(dropout=0.0, cosine_schedule=False)
        self.bad_batches, self.seen = set(bad_batches), 0

    def training_step(self, batch, batch_idx):
        self.seen += 1
        logits = self(batch["x"])
        if self.seen in self.bad_batches:
            logits = logits.clone()
            logits[:3, 0] = float("nan")
        loss = self.compute_loss(**self.objective_tensors(logits, batch))
        return loss if torch.isfinite(loss) else None  # skip the step, as a user would


def _fit(model, tmp_path, **kwargs):
    L.seed_everything(0, verbose=False)
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(
        logger=logger, accelerator="cpu", default_root_dir=tmp_path, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kwargs,
    )  # fmt: skip
    trainer.fit(model, DigitsDataModule(batch_size=32))
    with open(f"{logger.log_dir}/metrics.csv") as f:
        return trainer, list(csv.DictReader(f))


def test_coefficients_are_logged_on_the_trainers_logging_steps(tmp_path):
    model = DigitsClassifier(dropout=0.0, cosine_schedule=False)
    model.configure_objective(
        {"cross_entropy": {}, "focal": {"gamma": 1.0, "coefficient": {"name": "warmup", "value": 0.5, "steps": 4}}}
    )
    trainer, rows = _fit(model, tmp_path, max_steps=8, log_every_n_steps=2)
    logged = [(int(r["step"]), float(r["objective/coef/focal"])) for r in rows if r.get("objective/coef/focal")]
    schedule = model.objective.terms[1].coefficient
    assert [s for s, _ in logged] == [1, 3, 5, 7]  # the steps of train/loss
    assert [c for _, c in logged] == pytest.approx([schedule(s) for s, _ in logged])
    assert logged[0][1] < logged[-1][1] == pytest.approx(0.5)
    assert all(float(r["objective/coef/cross_entropy"]) == 1.0 for r in rows if r.get("objective/coef/cross_entropy"))
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [1, 3, 5, 7]
    assert float(trainer.callback_metrics["objective/nonfinite"]) == 0.0


def test_nonfinite_samples_are_counted_per_logging_interval(tmp_path):
    trainer, rows = _fit(_NanOnBatches({2, 5, 6}), tmp_path, max_steps=6, log_every_n_steps=2)
    counts = [(int(r["step"]), float(r["objective/nonfinite"])) for r in rows if r.get("objective/nonfinite")]
    # log steps count batches (skipped ones too): batches 1-2 log at step 1, 3-4 at 3, 5-6 at 5
    assert counts == [(1, 3.0), (3, 0.0), (5, 6.0)]
    assert trainer.global_step == 6


def test_single_term_objective_logs_its_coefficient_and_count(tmp_path):
    trainer, rows = _fit(
        DigitsClassifier(dropout=0.0, cosine_schedule=False), tmp_path, max_steps=4, log_every_n_steps=1
    )
    assert [float(r["objective/coef/cross_entropy"]) for r in rows if r.get("objective/coef/cross_entropy")] == [
        1.0
    ] * 4
    assert [float(r["objective/nonfinite"]) for r in rows if r.get("objective/nonfinite")] == [0.0] * 4


def _count_on_rank():
    """Rank 0 has one NaN sample, rank 1 two inf ones; the logged count is the group's."""
    from types import SimpleNamespace

    import torch.distributed as dist

    from lightning_losses._objective_logging import log_objective_diagnostics

    class Module:
        def __init__(self):
            self.logged = []

        def log_dict(self, metrics, **kwargs):
            self.logged.append({k: float(v) for k, v in metrics.items()})

    bad = float("nan") if dist.get_rank() == 0 else float("inf")
    per_sample = torch.tensor([1.0, bad, 2.0] if dist.get_rank() == 0 else [bad, bad])
    connector = SimpleNamespace(should_update_logs=True)
    trainer = SimpleNamespace(global_step=4, log_every_n_steps=1, _logger_connector=connector)
    module = Module()
    log_objective_diagnostics(module, trainer, SimpleNamespace(per_sample=per_sample, coefficients={"ce": 0.5}))
    return module.logged


def test_nonfinite_count_is_summed_over_the_data_parallel_group(ddp):
    for logged in ddp.run(_count_on_rank):
        assert logged == [{"objective/coef/ce": 0.5, "objective/nonfinite": 3.0}]
