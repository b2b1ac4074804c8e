"""What reweighting logs, against loop references: weight statistics (ESS, entropy, min, max, zero fraction),
per-group accuracy / loss and the worst-group accuracy (a torchmetrics Metric, synced over 2 ranks), written every
N optimizer steps by the callback (read back from a CSV logger)."""

import csv
import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

import lightning_losses as ll
from lightning_losses.demo import DigitsClassifier, DigitsDataModule
from lightning_losses.distributed import rank
from lightning_losses.errors import ConfigurationError
from lightning_losses.reweighting import GroupAccuracy, global_weight_stats


def _weight_stats_reference(weights):
    w = [float(x) for x in weights]
    n, total = len(w), sum(w)
    h = -sum(x / total * math.log(x / total) for x in w if x > 0)
    return {
        "ess": total**2 / (n * sum(x * x for x in w)),
        "entropy": h / math.log(n),
        "max": max(w),
        "min": min(w),
        "zero_fraction": sum(1 for x in w if x == 0) / n,
    }


@pytest.mark.parametrize("weights", [[0.5, 1.0, 2.0, 0.0, 0.5], [1.0] * 4, [0.0, 0.0, 3.0]])
def test_global_weight_stats_matches_loop(weights):
    got = global_weight_stats(torch.tensor(weights, dtype=torch.float64))
    for key, value in _weight_stats_reference(weights).items():
        assert float(got[key]) == pytest.approx(value, abs=1e-6), key


def _group_reference(pred, target, group, losses, mask, num_groups):
    correct, total, loss = [0.0] * num_groups, [0] * num_groups, [0.0] * num_groups
    for p, t, g, v, m in zip(pred, target, group, losses, mask):
        if m:
            total[g] += 1
            correct[g] += float(p == t)
            loss[g] += v
    acc = [c / n if n else 0.0 for c, n in zip(correct, total)]
    mean_loss = [v / n if n else 0.0 for v, n in zip(loss, total)]
    return acc, mean_loss, min(a for a, n in zip(acc, total) if n)


def _group_batch(seed=0, n=40, num_groups=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 3, generator=g)
    target = torch.randint(0, 3, (n,), generator=g)
    group = torch.randint(0, num_groups - 1, (n,), generator=g)  # the last group never occurs
    losses = torch.rand(n, generator=g, dtype=torch.float64)
    mask = torch.rand(n, generator=g) > 0.2
    return logits, target, group, losses, mask


def test_group_accuracy_matches_loop():
    logits, target, group, losses, mask = _group_batch()
    metric = GroupAccuracy(num_groups=4)
    metric.update(logits[:15], target[:15], group[:15], losses[:15], mask=mask[:15])  # two batches accumulate
    metric.update(logits[15:], target[15:], group[15:], losses[15:], mask=mask[15:])
    out = metric.compute()
    acc, loss, worst = _group_reference(
        logits.argmax(-1).tolist(), target.tolist(), group.tolist(), losses.tolist(), mask.tolist(), 4
    )
    torch.testing.assert_close(out["acc"], torch.tensor(acc))
    torch.testing.assert_close(out["loss"], torch.tensor(loss))
    assert float(out["worst_acc"]) == pytest.approx(worst)  # over groups present only (group 3 never occurs)


def test_group_accuracy_rejects_unknown_group():
    with pytest.raises(ValueError, match=r"GroupAccuracy got group id 2 but `num_groups` is 2; set `num_groups`"):
        GroupAccuracy(num_groups=2).update(torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([0, 2]))


@pytest.mark.parametrize("masked", [False, True])
def test_group_sums_accumulate_the_loop_reference(masked):
    """The interval accumulator (pair counts and loss sums, two bincounts a fold) over two batches: the loop's count,
    correct and loss per group; a left-out sample's NaN loss and out-of-range id leave no trace."""
    from lightning_losses.reweighting.step_logs import GroupSums, stats_from_taken

    logits, target, group, losses, mask = _group_batch()
    mask = mask if masked else torch.ones_like(mask)
    if masked:
        losses, group = losses.masked_fill(~mask, float("nan")), group.masked_fill(~mask, 99)
    sums = GroupSums(4)
    sums.add(logits[:15], target[:15], group[:15], losses[:15], mask[:15] if masked else None)
    sums.add(logits[15:].argmax(-1), target[15:], group[15:].int(), losses[15:], mask[15:] if masked else None)
    pred = logits.argmax(-1)
    expected = [[0.0, 0.0, 0.0] for _ in range(4)]
    for i in range(40):
        if mask[i]:
            row = expected[int(group[i])]
            row[0] += 1
            row[1] += float(pred[i] == target[i])
            row[2] += float(losses[i])
    torch.testing.assert_close(sums.sums, torch.tensor(expected, dtype=torch.float64))
    pairs, taken = sums.take()
    acc, loss, worst = _group_reference(pred, target, group, losses.tolist(), mask, 4)
    stats = stats_from_taken(pairs.tolist(), taken.tolist())
    assert stats["acc"] == pytest.approx(acc) and stats["loss"] == pytest.approx(loss)
    assert stats["worst_acc"] == pytest.approx(worst) and float(sums.sums.abs().sum()) == 0.0
    back = GroupSums(4)
    back.sums = torch.tensor(expected)  # a checkpoint's [size, 3] layout
    torch.testing.assert_close(back.sums, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("correct", [False, True])
def test_group_sums_reject_unknown_group(masked, correct):
    from lightning_losses.reweighting.step_logs import GroupSums

    mask = torch.tensor([True, True]) if masked else None
    pred = torch.tensor([0, 1 if correct else 0])
    with pytest.raises(ValueError, match=r"GroupAccuracy got group id 2 but `num_groups` is 2; set `num_groups`"):
        GroupSums(2).add(pred, torch.tensor([0, 1]), torch.tensor([0, 2]), mask=mask)


def _group_accuracy_on_rank():
    logits, target, group, losses, mask = _group_batch()
    part = slice(0, 13) if rank() == 0 else slice(13, None)
    metric = GroupAccuracy(num_groups=4)
    metric.update(logits[part], target[part], group[part], losses[part], mask=mask[part])
    return {k: v.clone() for k, v in metric.compute().items()}  # torchmetrics sums the states over ranks


def test_group_accuracy_is_global_under_ddp(ddp):
    out0, out1 = ddp.run(_group_accuracy_on_rank)
    single = GroupAccuracy(num_groups=4)
    single.update(*_group_batch()[:4], mask=_group_batch()[4])
    expected = single.compute()
    for key in expected:
        torch.testing.assert_close(out0[key], expected[key])
        torch.testing.assert_close(out1[key], expected[key])


def _row_on_rank(whole: bool):
    """The callback's logging-step values (``reweighting_row``) of the same 40 samples: all on this rank, or split
    13 / 27 between two ranks."""
    from lightning_losses.reweighting import build_reweighter
    from lightning_losses.reweighting.step_logs import GroupSums, reweighting_row

    logits, target, group, losses, mask = _group_batch()
    weights = torch.rand(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64).masked_fill(~mask, 0)
    part = slice(None) if whole else (slice(0, 13) if rank() == 0 else slice(13, None))
    sums = GroupSums(4)
    sums.add(logits[part], target[part], group[part], losses[part], mask[part])
    reweighter = build_reweighter("group_dro", num_groups=4, step_size=0.1)
    metrics, stats, _ = reweighting_row(reweighter, weights[part], sums, None)
    assert float(sums.sums.abs().sum()) == 0.0  # taken: the next interval starts from 0
    return metrics, stats


def test_logging_step_values_equal_loop_references_in_one_process_and_under_ddp(ddp):
    """Weight statistics, per-group accuracy / loss / worst group and the strategy's values, from one collective and
    one host read: equal over 1 process and 2 ranks, and to the loop references."""
    whole, stats = _row_on_rank(True)
    logits, target, group, losses, mask = _group_batch()
    weights = torch.rand(40, generator=torch.Generator().manual_seed(3), dtype=torch.float64).masked_fill(~mask, 0)
    for key, value in _weight_stats_reference(weights.tolist()).items():
        assert whole[f"reweight/{key}"] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    acc, loss, worst = _group_reference(logits.argmax(-1), target, group, losses.tolist(), mask, 4)
    for g in range(4):
        assert whole[f"reweight/group_acc/{g}"] == pytest.approx(acc[g], abs=1e-12)
        assert whole[f"reweight/group_loss/{g}"] == pytest.approx(loss[g], abs=1e-12)
        assert whole[f"reweight/q/{g}"] == pytest.approx(0.25)  # a 1-D value: one key per element
    assert stats["count"][3] == 0 and whole["reweight/worst_group_acc"] == pytest.approx(worst)  # group 3 is absent
    assert whole["reweight/nonfinite"] == 0.0
    for ranked, _ in ddp.run(_row_on_rank, False):
        assert ranked.keys() == whole.keys()
        for key, value in whole.items():
            assert ranked[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


@pytest.mark.parametrize("n", [5, 512, 513, 2000])
def test_weight_statistics_from_the_host_read_and_from_device_sums_agree(n):
    """In one process up to ``HOST_WEIGHTS`` weights are described from the host read itself, more from device sums:
    both equal the loop reference."""
    from lightning_losses.reweighting import build_reweighter
    from lightning_losses.reweighting.step_logs import HOST_WEIGHTS, reweighting_row

    assert HOST_WEIGHTS == 512
    weights = torch.rand(n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    weights[::3] = 0.0
    metrics, _, _ = reweighting_row(build_reweighter("group_dro", num_groups=2), weights, None, None)
    for key, value in _weight_stats_reference(weights.tolist()).items():
        assert metrics[f"reweight/{key}"] == pytest.approx(value, rel=1e-12, abs=1e-15), key


def _pending_count_on_rank():
    """A strategy step that synced nothing left a local non-finite count (rank 0: 2, rank 1: 3): the logging step sums
    it over ranks in its one collective and adds it to the state."""
    from lightning_losses.reweighting import build_reweighter
    from lightning_losses.reweighting.step_logs import reweighting_row

    reweighter = build_reweighter("group_dro", num_groups=4, step_size=0.1)
    reweighter._unsynced_nonfinite = torch.tensor(2 + rank())
    assert reweighter.unsynced_nonfinite_pending
    metrics, _, _ = reweighting_row(reweighter, torch.ones(3), None, None)
    return metrics["reweight/nonfinite"], int(reweighter.nonfinite), reweighter.unsynced_nonfinite_pending


def test_pending_nonfinite_counts_are_summed_over_ranks_in_the_logging_collective(ddp):
    assert ddp.run(_pending_count_on_rank) == [(5.0, 5, False), (5.0, 5, False)]
    reweighter = ll.reweighting.build_reweighter("group_dro", num_groups=4, step_size=0.1)
    assert not reweighter.unsynced_nonfinite_pending and int(reweighter.take_unsynced_nonfinite()) == 0


def _row_with_an_empty_rank():
    """Rank 1's batch is empty: it still joins the collective, and both ranks log rank 0's weight statistics."""
    from lightning_losses.reweighting import build_reweighter
    from lightning_losses.reweighting.step_logs import reweighting_row

    weights = torch.tensor([0.5, 1.0, 2.0, 0.0, 0.5]) if rank() == 0 else torch.zeros(0)
    metrics, _, _ = reweighting_row(build_reweighter("group_dro", num_groups=2), weights, None, None)
    return {k: v for k, v in metrics.items() if not k.startswith("reweight/q")}


def test_a_rank_with_an_empty_batch_joins_the_logging_collective(ddp):
    expected = _weight_stats_reference([0.5, 1.0, 2.0, 0.0, 0.5])
    for metrics in ddp.run(_row_with_an_empty_rank):
        for key, value in expected.items():
            assert metrics[f"reweight/{key}"] == pytest.approx(value, rel=1e-12), key
    from lightning_losses.reweighting import build_reweighter
    from lightning_losses.reweighting.step_logs import reweighting_row

    empty, _, _ = reweighting_row(build_reweighter("group_dro", num_groups=2), torch.zeros(0), None, None)
    assert all(math.isnan(empty[f"reweight/{key}"]) for key in expected)  # no sample at all: nothing to describe


class _Recorder(Callback):
    """Records, after every training batch, what the reweighting callback saw (placed after it)."""

    def __init__(self, reweighting):
        self.reweighting, self.rows = reweighting, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        last = self.reweighting.reweighter.last
        self.rows.append(
            {
                "step": trainer.global_step,
                "weights": pl_module.objective_output.weights.detach().clone(),
                "correct": (last["logits"].argmax(-1) == last["target"]).tolist(),
                "group": last["group"].tolist(),
                "losses": last["losses"].tolist(),
                "q": self.reweighting.reweighter.q.clone(),
            }
        )


def _fit_and_read(tmp_path, every, trainer_every=3, batches=7):
    L.seed_everything(0)
    dm = DigitsDataModule(batch_size=32, spurious=0.9)
    model = DigitsClassifier(num_features=dm.num_features, dropout=0.0)
    cb = ll.SampleReweighting("group_dro", step_size=0.5, log_every_n_steps=every)
    recorder = _Recorder(cb)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=batches, accelerator="cpu", logger=CSVLogger(tmp_path),
        log_every_n_steps=trainer_every, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, limit_val_batches=0, callbacks=[cb, recorder],
    )  # fmt: skip
    trainer.fit(model, datamodule=dm)
    with open(trainer.logger.experiment.metrics_file_path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("reweight/ess")]
    return rows, recorder.rows


def test_logged_every_n_steps_with_loop_values(tmp_path):
    logged, seen = _fit_and_read(tmp_path, every=None)  # follows Trainer(log_every_n_steps=3)
    assert [int(r["step"]) for r in logged] == [2, 5]  # after optimizer steps 3 and 6 (CSV rows are 0-based)
    window_start = 0
    for row in logged:
        end = int(row["step"]) + 1  # batches seen[0:end] ran; this log covers those since the previous one
        at = seen[end - 1]
        for key, value in _weight_stats_reference(at["weights"].tolist()).items():
            assert float(row[f"reweight/{key}"]) == pytest.approx(value, rel=1e-5, abs=1e-6), key
        for g in (0, 1):
            assert float(row[f"reweight/q/{g}"]) == pytest.approx(float(at["q"][g]), rel=1e-6)
        correct, group, losses = (
            [x for b in seen[window_start:end] for x in b[k]] for k in ("correct", "group", "losses")
        )
        ones = [True] * len(correct)  # correct == True <=> prediction == target
        acc, loss, worst = _group_reference(correct, ones, group, losses, ones, 2)
        for g in (0, 1):
            assert float(row[f"reweight/group_acc/{g}"]) == pytest.approx(acc[g], abs=1e-6)
            assert float(row[f"reweight/group_loss/{g}"]) == pytest.approx(loss[g], rel=1e-5)
        assert float(row["reweight/worst_group_acc"]) == pytest.approx(worst, abs=1e-6)
        window_start = end


def test_explicit_interval_and_zero_turns_logging_off(tmp_path):
    for trainer_every in (1, 3, 50):  # neither repeated on the Trainer's other logging steps nor dropped
        logged, seen = _fit_and_read(tmp_path / str(trainer_every), every=2, trainer_every=trainer_every, batches=5)
        assert [int(r["step"]) for r in logged] == [1, 3]
        for row in logged:
            q = seen[int(row["step"])]["q"]
            assert float(row["reweight/q/0"]) == pytest.approx(float(q[0]), rel=1e-6)
    off, _ = _fit_and_read(tmp_path / "off", every=0, trainer_every=1, batches=3)
    assert off == []
    with pytest.raises(ConfigurationError, match=r"`log_every_n_steps` must be an integer >= 0, got -1"):
        ll.SampleReweighting("cvar", alpha=0.5, log_every_n_steps=-1)


def test_host_read_of_the_row_pieces_is_the_same_separately_and_concatenated():
    """On the CPU each piece is read as it is; elsewhere they are concatenated in float64 and read once: the same
    Python floats either way (0-d int, float32, 2-D, a tensor in a graph)."""
    from lightning_losses._log_rows import read_values

    graph = torch.tensor([0.1, 0.2], requires_grad=True) * 3
    pieces = {"n": torch.tensor(7), "q": torch.tensor([0.1, 0.9]), "m": torch.arange(6.0).view(2, 3), "g": graph}
    separate, together = read_values(pieces, separate=True), read_values(pieces, separate=False)
    assert separate == together == read_values(pieces)
    assert separate["n"] == [7.0] and separate["m"] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert separate["q"] == [float(v) for v in torch.tensor([0.1, 0.9]).tolist()]
