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


def _fit(model, tmp_path, ckpt_path=None, **kwargs):
    L.seed_everything(0, verbose=False)
    logger = CSVLogger(tmp_path)
    trainer = L.Trainer(
        logger=logger, accelerator="cpu", default_root_dir=tmp_path, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kwargs,
    )  # fmt: skip
    trainer.fit(model, DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
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
    import torch.distributed as dist

    from lightning_losses._objective_logging import log_objective_diagnostics

    bad = float("nan") if dist.get_rank() == 0 else float("inf")
    per_sample = torch.tensor([1.0, bad, 2.0] if dist.get_rank() == 0 else [bad, bad])
    rows = []
    out = _output(per_sample, ce=per_sample * 2)
    out.coefficients = {"ce": 0.5}
    log_objective_diagnostics(_Module(), _trainer(rows, 4, True), out)
    return rows


def test_nonfinite_count_is_summed_over_the_data_parallel_group(ddp):
    for logged in ddp.run(_count_on_rank):
        assert logged == [{"objective/coef/ce": 0.5, "objective/nonfinite": 3.0, "objective/nonfinite/ce": 3.0}]


class _NanAux(DigitsClassifier):
    """Two terms on two logit heads; the ``aux`` head gets a NaN in 2 samples of training batch 2 (that step is
    skipped)."""

    def __init__(self):
        super().__init__(dropout=0.0, cosine_schedule=False)
        self.configure_objective(
            {"ce": {"loss": "cross_entropy"}, "aux": {"loss": "cross_entropy", "inputs": {"logits": "aux_logits"}}}
        )
        self.seen = 0

    def training_step(self, batch, batch_idx):
        self.seen += 1
        logits = self(batch["x"])
        aux = logits.clone()
        if self.seen == 2:
            aux[:2, 0] = float("nan")
        loss = self.compute_loss(aux_logits=aux, **self.objective_tensors(logits, batch))
        return loss if torch.isfinite(loss) else None


def test_nonfinite_counts_per_term_name_the_term_that_went_nonfinite(tmp_path):
    trainer, rows = _fit(_NanAux(), tmp_path, max_steps=4, log_every_n_steps=2)
    logged = [r for r in rows if r.get("objective/nonfinite")]
    assert [int(r["step"]) for r in logged] == [1, 3]
    assert [float(r["objective/nonfinite"]) for r in logged] == [2.0, 0.0]
    assert [float(r["objective/nonfinite/aux"]) for r in logged] == [2.0, 0.0]
    assert [float(r["objective/nonfinite/ce"]) for r in logged] == [0.0, 0.0]
    assert float(trainer.callback_metrics["objective/nonfinite/aux"]) == 0.0


class _Module:
    """What the diagnostics use of a LightningModule: its ``__dict__``."""


class _Connector:
    """A logger connector that records the rows written."""

    def __init__(self, rows, logging):
        self.rows, self.should_update_logs = rows, logging

    def log_metrics(self, metrics, step=None):
        self.rows.append({k: float(v) for k, v in metrics.items()})


def _trainer(rows, step, logging, every=1):
    from types import SimpleNamespace

    connector = _Connector(rows, logging)
    return SimpleNamespace(global_step=step, log_every_n_steps=every, callback_metrics={}, _logger_connector=connector)


def _output(per_sample, **term_values):
    from types import SimpleNamespace

    return SimpleNamespace(per_sample=per_sample, coefficients=dict.fromkeys(term_values, 1.0), term_values=term_values)


def test_a_step_that_does_not_log_runs_no_tensor_operation():
    from torch.utils._python_dispatch import TorchDispatchMode

    from lightning_losses._objective_logging import log_objective_diagnostics

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    per_sample = torch.tensor([1.0, float("nan"), 2.0], requires_grad=True) * 1.0
    module, rows = _Module(), []
    with Ops() as mode:
        for step in range(3):
            log_objective_diagnostics(module, _trainer(rows, step, False, every=10), _output(per_sample, a=per_sample))
    assert set(mode.ops) <= {"aten.detach.default"}  # references kept, nothing computed, nothing read
    assert rows == []
    log_objective_diagnostics(module, _trainer(rows, 3, True, every=10), _output(per_sample, a=per_sample))
    assert rows == [{"objective/coef/a": 1.0, "objective/nonfinite": 4.0, "objective/nonfinite/a": 4.0}]


def test_values_kept_between_logging_steps_are_bounded_and_counted(monkeypatch):
    import lightning_losses._objective_logging as diagnostics

    monkeypatch.setattr(diagnostics, "FOLD_EVERY", 2)
    module, rows = _Module(), []
    total = torch.tensor([float("inf"), 1.0])
    term = torch.tensor([float("nan"), float("nan")])
    log = diagnostics.log_objective_diagnostics
    for step in range(5):
        log(module, _trainer(rows, step, False), _output(total, t=term, b=torch.tensor(1.0)))
        assert len(module.__dict__.get(diagnostics._PENDING, ())) < 2
    out = _output(total, t=term, b=torch.tensor(float("inf")))  # a batch-level term: counted per step
    log(module, _trainer(rows, 5, True), out)
    assert rows == [
        {
            "objective/coef/t": 1.0, "objective/coef/b": 1.0,
            "objective/nonfinite": 6.0, "objective/nonfinite/t": 12.0, "objective/nonfinite/b": 1.0,
        }
    ]  # fmt: skip
    log(module, _trainer(rows, 6, True), _output(total, t=term, b=torch.tensor(1.0)))
    assert rows[-1]["objective/nonfinite"] == 1.0  # a new interval


def test_nothing_is_kept_when_the_trainer_never_logs_a_step():
    from lightning_losses._objective_logging import log_objective_diagnostics

    module, rows = _Module(), []
    for step in range(3):
        log_objective_diagnostics(module, _trainer(rows, step, False, every=0), _output(torch.ones(4), a=torch.ones(4)))
    assert not any(k.startswith("_ll_nonfinite") for k in module.__dict__) and rows == []


def test_objective_statistics_off_logs_no_objective_keys_and_keeps_nothing(tmp_path):
    """``objective_statistics = False``: no ``objective/*`` key, no per-step references kept; ``train/loss`` stays."""
    model = _NanOnBatches({2})
    model.objective_statistics = False
    trainer, rows = _fit(model, tmp_path, max_steps=4, log_every_n_steps=2)
    assert not any(k.startswith("objective/") for r in rows for k, v in r.items() if v)
    assert not any(k.startswith("objective/") for k in trainer.callback_metrics)
    assert [int(r["step"]) for r in rows if r.get("train/loss")] == [1, 3]
    assert not any(k.startswith("_ll_nonfinite") for k in vars(model))


def test_resume_between_two_logs_keeps_the_intervals_counts(tmp_path):
    """Logs every 3 steps; NaN batches 4 and 5 (3 samples each); the checkpoint after step 4 falls between two logs:
    the resumed fit's log at step 5 counts both batches, as the uninterrupted fit's does."""

    def fit(name, max_steps, seen=0, ckpt=None):
        model = _NanOnBatches({4, 5})
        model.seen = seen  # the test model's batch counter (not part of the checkpoint)
        trainer, rows = _fit(model, tmp_path / name, max_steps=max_steps, log_every_n_steps=3, ckpt_path=ckpt)
        counts = [(int(r["step"]), float(r["objective/nonfinite"])) for r in rows if r.get("objective/nonfinite")]
        return trainer, counts

    _, straight = fit("a", 6)
    trainer, before = fit("b", 4)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")  # a collective under DDP: every rank saves its counts
    _, resumed = fit("c", 6, seen=4, ckpt=str(tmp_path / "mid.ckpt"))
    assert straight == [(2, 0.0), (5, 6.0)] and before == [(2, 0.0)]
    assert resumed == [(5, 6.0)]
