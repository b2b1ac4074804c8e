"""Non-finite losses never enter a reweighter's state (every strategy, one process and DDP), ids out of range fail
clearly on every rank alike, per-sample stores refuse absurd growth, and a skipped step (``training_step`` returned
``None``) leaves the state as it was."""

from types import SimpleNamespace

import pytest
import torch

import lightning_losses as ll
from lightning_losses.distributed import rank
from lightning_losses.reweighting import PerSampleStore, global_weight_stats
from tests.reweighting.helpers import BATCH, SIZED, STRATEGIES, make_steps

ALL = {**STRATEGIES, "wpo": {"max_weight": 2.0}}
BAD = (float("nan"), float("inf"), float("-inf"))


def _inputs(name, inputs, seed):
    """The step's inputs, plus WPO's log-weights."""
    if name != "wpo":
        return dict(inputs)
    g = torch.Generator().manual_seed(seed)
    n = inputs["losses"].numel()
    logw = {k: -torch.rand(n, generator=g, dtype=torch.float64) for k in ("chosen_logw", "rejected_logw")}
    return {"losses": inputs["losses"], **logw}


def test_every_strategy_is_covered():
    assert sorted(ALL) == ll.list_reweighters()


@pytest.mark.parametrize("name", sorted(ALL))
def test_nonfinite_loss_is_left_out_like_a_masked_sample(name):
    """A NaN / inf loss (or WPO log-weight) among the batch: the weights and the state equal the same call with that
    sample masked out, every later weight is finite, and the samples are counted."""
    poisoned = ll.build_reweighter(name, **ALL[name])
    masked = ll.build_reweighter(name, **ALL[name])
    expected_count = 0
    for s, (epoch, inputs) in enumerate(make_steps(7, seed=3)):
        inputs = _inputs(name, inputs, s)
        at = (1, 6, 3)[s % 3]
        bad = dict(inputs)
        key = "chosen_logw" if name == "wpo" and s % 2 else "losses"
        bad[key] = inputs[key].clone()
        bad[key][at] = BAD[s % 3]
        expected_count += 1
        mask = torch.ones(BATCH, dtype=torch.bool)
        mask[at] = False
        for r in (poisoned, masked):
            r.set_epoch(epoch)
        got = poisoned(**bad)
        expected = masked(**inputs, sample_mask=mask)
        assert bool(torch.isfinite(got).all()) and got[at] == 0, (s, got)
        torch.testing.assert_close(got, expected, msg=f"step {s}")
    state, reference = poisoned.state_dict(), masked.state_dict()
    assert int(state.pop("nonfinite")) == expected_count and int(reference.pop("nonfinite")) == 0
    for key in reference:
        torch.testing.assert_close(state[key], reference[key], msg=key)
        if state[key].is_floating_point():
            assert bool(torch.isfinite(state[key]).all()), key
    after = poisoned(**_inputs(name, make_steps(1, seed=9)[0][1], 9))
    assert bool(torch.isfinite(after).all())
    assert int(poisoned.nonfinite_count()) == expected_count


def test_group_dro_issue_example():
    r = ll.build_reweighter("group_dro", num_groups=2)
    r(losses=torch.tensor([1.0, float("nan"), 2.0]), group=torch.tensor([0, 1, 1]))
    assert bool(torch.isfinite(r.q).all())
    assert bool(torch.isfinite(r(losses=torch.tensor([1.0, 3.0]), group=torch.tensor([0, 1]))).all())


# ---------------------------------------------------------------- ids and sizes


@pytest.mark.parametrize(
    ("name", "kwargs", "inputs", "message"),
    [
        ("group_dro", {"num_groups": 2}, {"group": [0, -1, 1]}, r"`group` ids must be >= 0 .*`num_groups`\), got -1"),
        ("group_dro", {}, {"group": [0, -3, 1]}, r"`group` ids must be >= 0 .*got -3"),
        ("group_dro", {"num_groups": 2}, {"group": [0, 2, 1]}, r"`group` id 2 is out of range for `num_groups` = 2"),
        (
            "class_balanced",
            {"samples_per_class": [3, 1]},
            {"target": [0, 2, 1]},
            r"`target` id 2 is out of range for `samples_per_class` = 2",
        ),
        (
            "class_balanced",
            {"num_classes": 2},
            {"target": [0, 5, 1], "index": [0, 1, 2]},
            r"`target` id 5 is out of range for `num_classes` = 2",
        ),
        ("class_balanced", {}, {"target": [0, -1, 1], "index": [0, 1, 2]}, r"`target` ids must be >= 0"),
        (
            "ema_class_loss",
            {"num_classes": 3},
            {"target": [0, 3, 1]},
            r"`target` id 3 is out of range for `num_classes`",
        ),
    ],
)
def test_ids_out_of_range_name_the_argument(name, kwargs, inputs, message):
    r = ll.build_reweighter(name, **kwargs)
    before = r.state_dict()
    with pytest.raises(ValueError, match=rf"reweighter `{name}`: {message}"):
        r(losses=torch.ones(3), **{k: torch.tensor(v) for k, v in inputs.items()})
    assert r.state_dict().keys() == before.keys()
    assert int(r.step) == 0


def test_masked_ids_are_not_checked():
    r = ll.build_reweighter("group_dro", num_groups=2)
    r(losses=torch.ones(3), group=torch.tensor([0, 7, 1]), sample_mask=torch.tensor([True, False, True]))
    r(losses=torch.tensor([1.0, float("nan")]), group=torch.tensor([0, 1]))


def test_store_refuses_absurd_growth():
    store = PerSampleStore({"v": (torch.float32, 0.0)})
    with pytest.raises(
        ValueError, match=r"`index` value 1000000000000 would grow the per-sample table .*`num_samples`"
    ):
        store.fresh(torch.tensor([3, 10**12]), 0)
    assert len(store) == 0
    r = ll.build_reweighter("per_sample_ema")
    with pytest.raises(ValueError, match=r"Set `num_samples` of the strategy to the dataset length"):
        r(losses=torch.ones(2), index=torch.tensor([0, 10**12]))


# ---------------------------------------------------------------- DDP: a NaN on one rank only

SIZES = (3, 5)
DDP_STRATEGIES = ("group_dro", "ema_class_loss", "per_sample_ema", "loss_softmax", "class_balanced", "jtt")


def _ddp_nan_on_rank0(steps):
    start, size = sum(SIZES[: rank()]), SIZES[rank()]
    out = {}
    for name in DDP_STRATEGIES:
        r = ll.build_reweighter(name, **STRATEGIES[name], **SIZED.get(name, {}))
        weights = []
        for epoch, inputs in steps:
            local = {k: v[start : start + size].clone() for k, v in inputs.items()}
            if rank() == 0:
                local["losses"][1] = float("nan")
            r.set_epoch(epoch)
            weights.append(r(**local))
        # JTT's stage 2 syncs nothing: its count is summed in the callback's logging collective, as here
        pending = global_weight_stats(weights[-1], extra={"nonfinite": r.take_unsynced_nonfinite()})["nonfinite"]
        r.nonfinite = r.nonfinite + pending.to(torch.int64)
        out[name] = (weights, r.state_dict())
    return out


def test_ddp_nan_on_one_rank_gives_identical_state(ddp):
    steps = make_steps(4, seed=5)
    per_rank = ddp.run(_ddp_nan_on_rank0, steps)
    mask = torch.ones(BATCH, dtype=torch.bool)
    mask[1] = False  # rank 0's second sample
    for name in DDP_STRATEGIES:
        reference = ll.build_reweighter(name, **STRATEGIES[name], **SIZED.get(name, {}))
        expected = []
        for epoch, inputs in steps:
            reference.set_epoch(epoch)
            expected.append(reference(**inputs, sample_mask=mask))
        (w0, s0), (w1, s1) = per_rank[0][name], per_rank[1][name]
        for step, w in enumerate(expected):
            torch.testing.assert_close(torch.cat([w0[step], w1[step]]), w, msg=f"{name} step {step}")
        state = reference.state_dict()
        assert int(s0.pop("nonfinite")) == int(s1.pop("nonfinite")) == len(steps), name
        state.pop("nonfinite")
        for key in state:
            assert torch.equal(s0[key], s1[key]), f"{name}: `{key}` differs between ranks"
            torch.testing.assert_close(s0[key], state[key], msg=f"{name}: {key}")


def _ddp_bad_group_on_rank1():
    r = ll.build_reweighter("group_dro", num_groups=2)
    group = torch.tensor([0, 1]) if rank() == 0 else torch.tensor([1, 5])
    try:
        r(losses=torch.ones(2), group=group)
    except ValueError as err:
        return str(err)
    return None


def test_ddp_out_of_range_id_fails_on_every_rank(ddp):
    messages = ddp.run(_ddp_bad_group_on_rank1)
    assert messages[0] == messages[1] and "`group` id 5 is out of range for `num_groups` = 2" in messages[0]


# ---------------------------------------------------------------- skipped micro-batches (the callback's undo)


def _module():
    return SimpleNamespace(automatic_optimization=True, objective_logging_suppressed=False)


@pytest.mark.parametrize("name", ["group_dro", "ema_class_loss", "per_sample_ema", "jtt", "class_balanced"])
@pytest.mark.parametrize("skipped_at", [0, 1])
def test_skipped_micro_batch_is_undone(name, skipped_at):
    """Two optimizer steps of two micro-batches; the micro-batch ``skipped_at`` of the first step returns ``None``:
    the state equals a reweighter that never saw it (the other micro-batch still makes its step)."""
    batches = [inputs for _, inputs in make_steps(4, seed=7)]
    kwargs = {**STRATEGIES[name], **SIZED.get(name, {})}
    cb = ll.SampleReweighting(name, log_every_n_steps=0, **kwargs)
    cb.reweighter.accumulating = True
    module = _module()
    for i, inputs in enumerate(batches):
        cb.on_train_batch_start(None, module, None, i)
        cb.reweighter(**inputs)
        if i % 2 == 1:
            cb.on_before_optimizer_step(None, module, None)
        skipped = i == skipped_at
        cb.on_train_batch_end(SimpleNamespace(global_step=0), module, {} if skipped else {"loss": 1.0}, None, i)
    reference = ll.build_reweighter(name, **kwargs)
    reference.accumulating = True
    for i, inputs in enumerate(batches):
        if i != skipped_at:
            reference(**inputs)
        if i % 2 == 1:
            reference.commit()
    state, expected = cb.reweighter.state_dict(), reference.state_dict()
    assert int(state["step"]) == 2
    for key in expected:
        torch.testing.assert_close(state[key], expected[key], msg=key)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_an_undone_micro_batch_leaves_the_logged_values_as_they_were(name):
    """What a strategy logs (``log_values``: group losses of the last batch, class weights, ...) after a micro-batch
    that was undone equals what it logged before it: a skipped batch that ends an optimizer step logs the step's
    values, and must not show in them (plain attributes that a step sets are in the snapshot too)."""
    from lightning_losses.reweighting import build_reweighter

    (_, first), (_, second) = make_steps(2, seed=3)
    reweighter = build_reweighter(name, **{**STRATEGIES[name], **SIZED.get(name, {})})
    reweighter(**first)
    before = {k: v.clone() for k, v in reweighter.log_values().items()}
    undo = reweighter.snapshot()
    poisoned = {**second, "losses": second["losses"] * 3.0, "logits": second["logits"] * -2.0}
    reweighter(**poisoned)
    reweighter.restore(undo)
    after = reweighter.log_values()
    assert after.keys() == before.keys()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value, msg=f"{name}: `{key}`")
