"""The Reweighter base contract: a new strategy is a short class (declared accumulators with their reduction), one
sync point per step (counted collectives), state round trip, other strategies reading ``per_sample_ema``; the sync
point itself (``sync_statistics``) on 2 processes; per-sample memory as stated."""

import io
import math

import pytest
import torch
import torch.distributed as dist

import lightning_losses as ll
from lightning_losses.distributed import rank
from lightning_losses.reweighting import PerSampleEMA, Reweighter, sync_statistics
from tests.reweighting.helpers import NUM_CLASSES, SIZED, STRATEGIES, make_steps

SIZES = (3, 5)  # uneven per-rank slices of the 8-sample global batch


class RunningRange(Reweighter):
    """A new strategy in a few lines: running sum / count / max / min of every loss seen, merged by the base."""

    strategy = "running_range"

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = temperature
        f64 = torch.float64
        self.add_state("loss_sum", torch.zeros((), dtype=f64), reduction="sum")
        self.add_state("count", torch.zeros((), dtype=f64), reduction="sum")
        self.add_state("loss_max", torch.tensor(-math.inf, dtype=f64), reduction="max")
        self.add_state("loss_min", torch.tensor(math.inf, dtype=f64), reduction="min")

    def local_statistics(self, losses, inputs):
        x = losses.to(torch.float64)
        return {"loss_sum": x.sum(), "count": x.new_tensor(float(x.numel())), "loss_max": x.max(), "loss_min": x.min()}

    def compute(self, losses, synced, inputs):
        mean, span = self.loss_sum / self.count, (self.loss_max - self.loss_min).clamp_min(1e-12)
        return torch.exp((losses.to(torch.float64) - mean) / span / self.temperature).to(losses.dtype)


class LossOverRunning(PerSampleEMA):
    """A strategy that reads ``per_sample_ema``'s table: weight = current loss / the sample's running loss."""

    strategy = "loss_over_running"

    def compute(self, losses, synced, inputs):
        super().compute(losses, synced, inputs)  # writes the running losses of the global batch
        return losses / self.read(inputs["index"]).to(losses.dtype).clamp_min(1e-6)


def _running_range_reference(steps, temperature):
    total, count, hi, lo, out = 0.0, 0, -math.inf, math.inf, []
    for _, inputs in steps:
        values = inputs["losses"].tolist()
        total, count, hi, lo = total + sum(values), count + len(values), max(hi, *values), min(lo, *values)
        out.append(torch.tensor([math.exp((v - total / count) / (hi - lo) / temperature) for v in values]))
    return out, {"loss_sum": total, "count": float(count), "loss_max": hi, "loss_min": lo}


def _loss_over_running_reference(steps, momentum):
    ema, out = {}, []
    for _, inputs in steps:
        index, values = inputs["index"].tolist(), inputs["losses"].tolist()
        for i, v in zip(index, values):
            ema[i] = momentum * ema[i] + (1 - momentum) * v if i in ema else v
        out.append(torch.tensor([v / ema[i] for i, v in zip(index, values)]))
    return out


def _run(reweighter, steps, start=0, stop=None):
    weights = []
    for epoch, inputs in steps:
        reweighter.set_epoch(epoch)
        weights.append(reweighter(**{k: v[start:stop] for k, v in inputs.items()}))
    return weights


def test_short_subclass_merges_declared_accumulators():
    steps = make_steps(5)
    r = RunningRange(temperature=0.5)
    assert r.statistics == {"loss_sum": "sum", "count": "sum", "loss_max": "max", "loss_min": "min"}
    got = _run(r, steps)
    expected, state = _running_range_reference(steps, 0.5)
    for w, e in zip(got, expected):
        torch.testing.assert_close(w, e.to(w.dtype))
    for name, value in state.items():
        assert float(getattr(r, name)) == pytest.approx(value)
    resumed = RunningRange(temperature=0.5)  # round trip through bytes, then the same next step
    buffer = io.BytesIO()
    torch.save(r.state_dict(), buffer)
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    more = make_steps(6)[5:]
    assert torch.equal(_run(resumed, more)[0], _run(r, more)[0])
    with pytest.raises(ValueError, match=r"`reduction` of state `x` must be None or one of \('sum', 'max', 'min'\)"):
        r.add_state("x", torch.zeros(()), reduction="mean")


def test_strategy_reads_per_sample_ema():
    steps = make_steps(7)  # crosses two epochs: the running loss moves once per epoch and sample
    got = _run(LossOverRunning(momentum=0.6), steps)
    for w, e in zip(got, _loss_over_running_reference(steps, 0.6)):
        torch.testing.assert_close(w, e.to(w.dtype), rtol=1e-5, atol=1e-6)  # float32 table


def _ddp_custom(steps):
    start = sum(SIZES[: rank()])
    out = {}
    for name, build in (("range", lambda: RunningRange(0.5)), ("reader", lambda: LossOverRunning(momentum=0.6))):
        r = build()
        out[name] = (_run(r, steps, start, start + SIZES[rank()]), r.state_dict())
    return out


def test_custom_strategies_ddp_equal_one_process(ddp):
    steps = make_steps(7, seed=2)
    single = {"range": RunningRange(0.5), "reader": LossOverRunning(momentum=0.6)}
    expected = {k: (_run(r, steps), r.state_dict()) for k, r in single.items()}
    per_rank = ddp.run(_ddp_custom, steps)
    for name, (weights, state) in expected.items():
        (w0, s0), (w1, s1) = per_rank[0][name], per_rank[1][name]
        for step, w in enumerate(weights):
            torch.testing.assert_close(torch.cat([w0[step], w1[step]]), w)
        for key in state:
            assert torch.equal(s0[key], s1[key]), f"{name}: state `{key}` differs between ranks"
            torch.testing.assert_close(s0[key], state[key])


# ---------------------------------------------------------------- one sync point per step

COLLECTIVES = ("all_gather", "all_reduce", "all_gather_into_tensor", "broadcast", "reduce", "gather", "all_to_all")


def _count_collectives(steps):
    counted: dict[str, list[int]] = {}
    calls = [0]
    originals = {name: getattr(dist, name) for name in COLLECTIVES}

    def counting(fn):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            return fn(*args, **kwargs)

        return wrapper

    start = sum(SIZES[: rank()])
    builds = {n: (n, {**STRATEGIES[n], **SIZED.get(n, {})}) for n in STRATEGIES}
    builds["class_balanced/known"] = ("class_balanced", {"samples_per_class": [5.0] * NUM_CLASSES})
    try:
        for name, fn in originals.items():
            setattr(dist, name, counting(fn))
        for key, (name, kwargs) in builds.items():
            r = ll.build_reweighter(name, **kwargs)
            counted[key] = []
            for epoch, inputs in steps:
                r.set_epoch(epoch)
                calls[0] = 0
                r(**{k: v[start : start + SIZES[rank()]] for k, v in inputs.items()})
                counted[key].append(calls[0])
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return counted


def test_one_sync_point_per_step(ddp):
    """At most two collectives per step (sample counts + one packed buffer), none when nothing is global."""
    steps = make_steps(4, seed=1)  # epoch 0 and the first step of epoch 1 (JTT's stage 2)
    counts, _ = ddp.run(_count_collectives, steps)
    for name, per_step in counts.items():
        assert max(per_step) <= 2, (name, per_step)
    assert counts["loss_softmax"] == [2] * 4  # "cat": sizes + packed losses
    assert counts["group_dro"] == [1] * 4  # fixed-shape sums only: one packed all_gather
    assert counts["class_balanced/known"] == [0] * 4  # known class counts: no collective at all
    assert counts["jtt"] == [2, 2, 2, 0]  # stage 2 reads the already-identical table


# ---------------------------------------------------------------- the sync point itself


def _local_stats():
    r = rank()
    n = (3, 0)[r]  # rank 1 holds no sample in this step
    stats = {
        "index": torch.arange(n, dtype=torch.int64) + 2**40 + 10 * r,
        "flag": torch.tensor([True, False, True][:n], dtype=torch.bool),
        "loss": torch.tensor([0.1, 0.2, 0.3][:n], dtype=torch.float32).reshape(n, 1).repeat(1, 2),
        "s": torch.tensor([1.0, 2.0]) * (r + 1),
        "m": torch.tensor([3.0]) * (r + 1),
        "hi": torch.tensor([float(r), -1.0]),
        "lo": torch.tensor([float(r), -1.0 * r]),
        "count": torch.tensor([r + 1], dtype=torch.int64),
    }
    reductions = {"index": "cat", "flag": "cat", "loss": "cat", "s": "sum", "m": "mean", "hi": "max", "lo": "min"}
    reductions["count"] = "sum"
    out, offset = sync_statistics(stats, reductions)
    return out, offset


def test_sync_statistics_on_two_ranks(ddp):
    (out0, off0), (out1, off1) = ddp.run(_local_stats)
    assert (off0, off1) == (0, 3)
    for key in out0:
        assert torch.equal(out0[key], out1[key]), key
        assert out0[key].dtype == out1[key].dtype
    assert out0["index"].tolist() == [2**40, 2**40 + 1, 2**40 + 2] and out0["index"].dtype == torch.int64
    assert out0["flag"].tolist() == [True, False, True] and out0["flag"].dtype == torch.bool
    assert out0["loss"].shape == (3, 2) and out0["loss"].dtype == torch.float32
    torch.testing.assert_close(out0["loss"][:, 0], torch.tensor([0.1, 0.2, 0.3]))
    assert out0["s"].tolist() == [3.0, 6.0] and out0["m"].tolist() == [4.5]
    assert out0["hi"].tolist() == [1.0, -1.0] and out0["lo"].tolist() == [0.0, -1.0]
    assert out0["count"].tolist() == [3] and out0["count"].dtype == torch.int64


def test_sync_statistics_rejects_bad_declarations():
    with pytest.raises(ValueError, match=r"statistic `x` needs a reduction in \('sum', 'mean', 'max', 'min', 'cat'\)"):
        sync_statistics({"x": torch.zeros(2)}, {"x": "prod"})
    with pytest.raises(ValueError, match=r"`cat` statistics must share their first dimension, got \[2, 3\]"):
        sync_statistics({"a": torch.zeros(2), "b": torch.zeros(3)}, {"a": "cat", "b": "cat"})


# ---------------------------------------------------------------- memory per sample


@pytest.mark.parametrize(
    ("name", "kwargs", "store", "nbytes"),
    [
        ("per_sample_ema", {}, "store", 8),  # int32 stamp + float32 running loss
        ("jtt", {"upweight": 2.0, "stage_epochs": 1}, "store", 5),  # int32 stamp + bool error flag
        ("class_balanced", {}, "seen", 4),  # int32 stamp of the counted indices
    ],
)
def test_bytes_per_sample_as_stated(name, kwargs, store, nbytes):
    r = ll.build_reweighter(name, **kwargs, num_samples=1000)
    table = r._stores[store]
    assert table.bytes_per_sample == nbytes
    assert sum(t.element_size() * t.numel() for t in (table.stamp, *table.tables.values())) == 1000 * nbytes


def _empty_rank_run(steps):
    r0_size = 0  # rank 0 holds no sample in any step (a sampler without padding, an exhausted shard)
    start, stop = (0, r0_size) if rank() == 0 else (r0_size, None)
    out = {}
    for name in sorted(STRATEGIES):
        r = ll.build_reweighter(name, **STRATEGIES[name], **SIZED.get(name, {}))
        out[name] = (_run(r, steps, start, stop), r.state_dict())
    return out


def test_a_rank_with_an_empty_batch(ddp):
    steps = make_steps(4, seed=3)
    per_rank = ddp.run(_empty_rank_run, steps)
    for name in sorted(STRATEGIES):
        single = ll.build_reweighter(name, **STRATEGIES[name], **SIZED.get(name, {}))
        expected = _run(single, steps)
        (w0, s0), (w1, s1) = per_rank[0][name], per_rank[1][name]
        for step, w in enumerate(expected):
            assert w0[step].numel() == 0
            torch.testing.assert_close(w1[step], w, msg=f"{name} step {step}")
        for key, value in single.state_dict().items():
            assert torch.equal(s0[key], s1[key]), f"{name}: state `{key}` differs between ranks"
            torch.testing.assert_close(s1[key], value, msg=f"{name}: state `{key}`")


@pytest.mark.parametrize("sized", [False, True])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_narrow_and_bool_ids_give_the_int64_weights(name, sized):
    """`group` / `index` / `target` as int32 (numpy), int16, int8, uint8 index tables like int64 (uint8 would be a
    boolean mask, a masked -1 would wrap to 255); a bool `group` (e.g. ``spurious != label``) is groups 0 / 1."""
    kwargs = {**STRATEGIES[name], **(SIZED.get(name, {}) if sized else {})}
    steps = make_steps(4)
    reference = _weights(ll.build_reweighter(name, **kwargs), steps)
    for dtype in (torch.int32, torch.int16, torch.int8, torch.uint8):
        narrow = [
            (e, {k: v.to(dtype) if k in ("group", "index", "target") else v for k, v in s.items()}) for e, s in steps
        ]
        for got, expected in zip(_weights(ll.build_reweighter(name, **kwargs), narrow), reference):
            torch.testing.assert_close(got, expected, msg=f"`{name}` with {dtype} ids")
    if name == "group_dro":
        binary = [(e, {**s, "group": s["group"] > 0}) for e, s in steps]
        ints = [(e, {**s, "group": (s["group"] > 0).long()}) for e, s in steps]
        for got, expected in zip(
            _weights(ll.build_reweighter(name, step_size=0.5), binary),
            _weights(ll.build_reweighter(name, step_size=0.5), ints),
        ):
            torch.testing.assert_close(got, expected)


def _weights(reweighter, steps):
    mask = torch.tensor([True, True, False, True, True, True, True, True])  # a masked sample (-1 must not wrap)
    out = []
    for epoch, inputs in steps:
        reweighter.set_epoch(epoch)
        out.append(reweighter(**inputs, sample_mask=mask))
    return out
