"""Each strategy against a hand-written multi-step reference; errors, registry, store, resume, sampler."""

import io
import math

import pytest
import torch

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional import reweighting as F
from lightning_losses.reweighting import BalancedSampler, PerSampleStore
from tests.reweighting.helpers import NUM_CLASSES, NUM_GROUPS, STATEFUL, STRATEGIES, make_steps, run_steps

PAIR_STRATEGIES = ("wpo",)  # need preference-pair inputs: tested in tests/llm/test_preference.py


def test_registry_lists_every_strategy():
    assert ll.list_reweighters() == sorted([*STRATEGIES, *PAIR_STRATEGIES])
    assert ll.extra_listings()["reweighters"]() == sorted([*STRATEGIES, *PAIR_STRATEGIES])
    assert isinstance(ll.build_reweighter("kl_dro"), ll.reweighting.LossSoftmax)


def test_unknown_strategy_and_argument():
    with pytest.raises(ConfigurationError, match="unknown reweighter `group_rdo`; did you mean `group_dro`"):
        ll.build_reweighter("group_rdo")
    with pytest.raises(ConfigurationError, match="unexpected argument `stepsize`; did you mean `step_size`"):
        ll.build_reweighter("group_dro", stepsize=0.1)
    with pytest.raises(ConfigurationError, match="missing required argument"):
        ll.build_reweighter("jtt", upweight=3.0)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("loss_softmax", {"temperature": 0.0}, r"`temperature` must be > 0.0, got 0.0"),
        ("lin_upper", {"delta": -1.0}, r"`delta` must be > 0.0"),
        ("lin_upper", {"warmup_steps": -1}, r"`warmup_steps` must be an integer >= 0"),
        ("cvar", {"alpha": 1.5}, r"`alpha` must be in \(0.0, 1.0\], got 1.5"),
        ("top_k", {"k": 0}, r"`k` must be an integer >= 1, got 0"),
        ("spectral_risk", {"spectrum": [0.0, 0.0]}, r"`spectrum` must have a positive sum"),
        ("spectral_risk", {"spectrum": [1.0, -1.0]}, r"`spectrum` must be a non-empty 1-D sequence"),
        ("loss_truncation", {"drop_fraction": 1.0}, r"`drop_fraction` must be in \[0.0, 1.0\)"),
        ("group_dro", {"step_size": 0}, r"`step_size` must be > 0.0"),
        ("group_dro", {"adjustment": 1.0}, r"`adjustment` > 0 needs `group_counts`"),
        ("group_dro", {"num_groups": 3, "group_counts": [1, 2]}, r"`num_groups` \(3\) must equal the length"),
        ("group_dro", {"group_counts": [1, 0]}, r"`group_counts` must be positive"),
        ("class_balanced", {"beta": 1.0}, r"`beta` must be in \[0.0, 1.0\)"),
        ("class_balanced", {"samples_per_class": [1, 2], "num_classes": 3}, r"`num_classes` \(3\) must equal"),
        ("ema_class_loss", {"momentum": 1.0}, r"`momentum` must be in \[0.0, 1.0\)"),
        ("jtt", {"upweight": 0.5, "stage_epochs": 1}, r"`upweight` must be >= 1.0"),
        ("jtt", {"upweight": 2.0, "stage_epochs": 0}, r"`stage_epochs` must be an integer >= 1"),
        ("per_sample_ema", {"num_samples": 0}, r"`num_samples` must be an integer >= 1"),
        ("per_sample_ema", {"temperature": -1.0}, r"`temperature` must be > 0.0, got -1.0"),
        ("per_sample_ema", {"momentum": -0.1}, r"`momentum` must be in \[0.0, 1.0\), got -0.1"),
        ("quadratic", {"temperature": 0.0}, r"`temperature` must be > 0.0, got 0.0"),
        ("extremes", {"delta": 0.0}, r"`delta` must be > 0.0, got 0.0"),
        ("cvar", {"alpha": 0.0}, r"`alpha` must be in \(0.0, 1.0\], got 0.0"),
        ("top_k", {"k": 1.5}, r"`k` must be an integer >= 1, got 1.5"),
        ("group_dro", {"num_groups": 0}, r"`num_groups` must be an integer >= 1, got 0"),
        ("group_dro", {"adjustment": -1.0}, r"`adjustment` must be >= 0.0, got -1.0"),
        ("class_balanced", {"samples_per_class": [3, -1]}, r"`samples_per_class` must be a non-empty 1-D sequence"),
        ("class_balanced", {"num_samples": 0}, r"`num_samples` must be an integer >= 1, got 0"),
        ("ema_class_loss", {"temperature": 0.0}, r"`temperature` must be > 0.0, got 0.0"),
        ("ema_class_loss", {"num_classes": 0}, r"`num_classes` must be an integer >= 1, got 0"),
    ],
)
def test_invalid_arguments(name, kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        ll.build_reweighter(name, **kwargs)


@pytest.mark.parametrize(
    ("name", "kwargs", "key"),
    [
        ("group_dro", {}, "group"),
        ("class_balanced", {}, "target"),
        ("ema_class_loss", {}, "target"),
        ("per_sample_ema", {}, "index"),
        ("jtt", {"upweight": 2.0, "stage_epochs": 1}, "index"),
    ],
)
def test_missing_input_names_the_key(name, kwargs, key):
    r = ll.build_reweighter(name, **kwargs)
    with pytest.raises(ValueError, match=rf"reweighter `{name}` needs `{key}` in compute_loss"):
        r(losses=torch.zeros(3), logits=torch.zeros(3, 2))


def test_class_balanced_counting_needs_index():
    """Counting without ``index`` would count every visit (counts grow each epoch; padding counted twice)."""
    r = ll.build_reweighter("class_balanced")
    with pytest.raises(
        ValueError, match=r"`class_balanced` needs `index` .*, or give the training-set class counts as "
    ):
        r(losses=torch.zeros(3), target=torch.tensor([0, 1, 1]))
    ll.build_reweighter("class_balanced", samples_per_class=[1, 2])(losses=torch.zeros(2), target=torch.tensor([0, 1]))


def test_bad_input_shapes():
    r = ll.build_reweighter("group_dro")
    with pytest.raises(ValueError, match=r"`group` must be an integer tensor of shape \[3\], got torch.float32 \[3\]"):
        r(losses=torch.zeros(3), group=torch.zeros(3))
    with pytest.raises(ValueError, match=r"`losses` must be a floating tensor \[N\]"):
        r(losses=torch.zeros(3, 1), group=torch.zeros(3, dtype=torch.long))
    r = ll.build_reweighter("group_dro", num_groups=2)
    with pytest.raises(
        ValueError, match=r"`group` id 2 is out of range for `num_groups` = 2 \(ids must be in \[0, 2\)\)"
    ):
        r(losses=torch.zeros(3), group=torch.tensor([0, 1, 2]))


# ---------------------------------------------------------------- multi-step references


@pytest.mark.parametrize(
    "name", ["loss_softmax", "quadratic", "extremes", "cvar", "top_k", "spectral_risk", "loss_truncation"]
)
def test_stateless_strategies_apply_their_formula(name):
    """The strategy classes apply the functional forms (each checked against an explicit loop in
    test_functional.py) to every batch, with their arguments."""
    fns = {
        "spectral_risk": lambda x: F.spectral_risk_weights(x, torch.tensor([0.0, 1.0, 2.0, 4.0])),
        "loss_softmax": lambda x: F.loss_softmax_weights(x, 0.7),
        "quadratic": lambda x: F.quadratic_weights(x, 2.0, 1.0),
        "extremes": lambda x: F.extremes_weights(x, 1.0, 0.8),
        "cvar": lambda x: F.cvar_weights(x, 0.3),
        "top_k": lambda x: F.top_k_weights(x, 3),
        "loss_truncation": lambda x: F.truncation_weights(x, 0.25),
    }
    steps = make_steps(4)
    got = run_steps(ll.build_reweighter(name, **STRATEGIES[name]), steps)
    for w, (_, inputs) in zip(got, steps):
        torch.testing.assert_close(w, fns[name](inputs["losses"]))


def test_lin_upper_warmup():
    steps = make_steps(4)
    got = run_steps(ll.build_reweighter("lin_upper", **STRATEGIES["lin_upper"]), steps)
    for s, (w, (_, inputs)) in enumerate(zip(got, steps)):
        expected = torch.ones(8, dtype=torch.float64) if s < 2 else F.lin_upper_weights(inputs["losses"], 1.0, 0.5)
        torch.testing.assert_close(w, expected)


def test_group_dro_matches_loop_reference():
    steps = make_steps(6)
    r = ll.build_reweighter("group_dro", step_size=0.5)
    got = run_steps(r, steps)
    q = [1 / NUM_GROUPS] * NUM_GROUPS
    for w, (_, inputs) in zip(got, steps):
        losses, group = inputs["losses"].tolist(), inputs["group"].tolist()
        sums, counts = [0.0] * NUM_GROUPS, [0] * NUM_GROUPS
        for loss, g in zip(losses, group):
            sums[g] += loss
            counts[g] += 1
        means = [s / c if c else 0.0 for s, c in zip(sums, counts)]
        q = [qg * math.exp(0.5 * m) for qg, m in zip(q, means)]
        q = [qg / sum(q) for qg in q]
        expected = [len(losses) * q[g] / counts[g] for g in group]
        torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(r.q, torch.tensor(q, dtype=torch.float64))


def test_group_dro_adjustment_uses_dataset_counts():
    r = ll.build_reweighter("group_dro", step_size=1.0, adjustment=2.0, group_counts=[4, 1])
    r(losses=torch.tensor([1.0, 1.0]), group=torch.tensor([0, 1]))
    raw = [0.5 * math.exp(1.0 + 2.0 / math.sqrt(4)), 0.5 * math.exp(1.0 + 2.0 / math.sqrt(1))]
    torch.testing.assert_close(r.q, torch.tensor([x / sum(raw) for x in raw], dtype=torch.float64))


def test_ema_class_loss_matches_loop_reference():
    steps = make_steps(6)
    r = ll.build_reweighter("ema_class_loss", **STRATEGIES["ema_class_loss"])
    got = run_steps(r, steps)
    ema, init = [0.0] * NUM_CLASSES, [False] * NUM_CLASSES
    for w, (_, inputs) in zip(got, steps):
        for c in range(NUM_CLASSES):
            vals = [loss for loss, t in zip(inputs["losses"].tolist(), inputs["target"].tolist()) if t == c]
            if vals:
                mean = sum(vals) / len(vals)
                ema[c] = 0.8 * ema[c] + 0.2 * mean if init[c] else mean
                init[c] = True
        z = sum(math.exp(e / 0.5) for e in ema)
        class_w = [NUM_CLASSES * math.exp(e / 0.5) / z for e in ema]
        torch.testing.assert_close(
            w, torch.tensor([class_w[t] for t in inputs["target"].tolist()], dtype=torch.float64)
        )


def test_class_balanced_counts_each_index_once():
    steps = make_steps(9)  # 3 epochs: every sample seen 3 times
    r = ll.build_reweighter("class_balanced", beta=0.99)
    got = run_steps(r, steps)
    seen: dict[int, int] = {}
    for w, (_, inputs) in zip(got, steps):
        for i, t in zip(inputs["index"].tolist(), inputs["target"].tolist()):
            seen.setdefault(i, t)
        counts = [sum(1 for t in seen.values() if t == c) for c in range(NUM_CLASSES)]
        raw = [(1 - 0.99) / (1 - 0.99 ** max(n, 1)) for n in counts]
        class_w = [NUM_CLASSES * x / sum(raw) for x in raw]
        torch.testing.assert_close(
            w, torch.tensor([class_w[t] for t in inputs["target"].tolist()], dtype=torch.float64)
        )
    assert r.class_count.sum().item() == 24


def test_class_balanced_known_counts_needs_no_index():
    r = ll.build_reweighter("class_balanced", beta=0.9, samples_per_class=[10, 1])
    w = r(losses=torch.zeros(2), target=torch.tensor([0, 1]))
    torch.testing.assert_close(w, F.class_balanced_weights(torch.tensor([10.0, 1.0]), 0.9))
    assert r.statistics == {}


def test_per_sample_ema_matches_loop_reference():
    steps = make_steps(9)
    r = ll.build_reweighter("per_sample_ema", **STRATEGIES["per_sample_ema"])
    got = run_steps(r, steps)
    ema: dict[int, float] = {}
    for w, (_, inputs) in zip(got, steps):
        for i, loss in zip(inputs["index"].tolist(), inputs["losses"].tolist()):
            ema[i] = 0.7 * ema[i] + 0.3 * loss if i in ema else loss
        smoothed = [ema[i] for i in inputs["index"].tolist()]
        torch.testing.assert_close(w, _softmax(smoothed, 0.5).to(w.dtype), atol=1e-5, rtol=1e-5)  # float32 table
    torch.testing.assert_close(r.read(torch.arange(24)), torch.tensor([ema[i] for i in range(24)], dtype=torch.float32))


def _softmax(values, r):
    ex = [math.exp(v / r) for v in values]
    return torch.tensor([len(values) * e / sum(ex) for e in ex], dtype=torch.float64)


def test_jtt_records_last_stage_one_epoch_and_upweights():
    steps = make_steps(9)  # stage 1 = epochs 0 and 1
    r = ll.build_reweighter("jtt", upweight=4.0, stage_epochs=2)
    got = run_steps(r, steps)
    errors: dict[int, bool] = {}
    for w, (epoch, inputs) in zip(got, steps):
        wrong = (inputs["logits"].argmax(-1) != inputs["target"]).tolist()
        if epoch < 2:
            for i, e in zip(inputs["index"].tolist(), wrong):
                errors[i] = e
            torch.testing.assert_close(w, torch.ones(8, dtype=torch.float64))
        else:
            expected = [4.0 if errors[i] else 1.0 for i in inputs["index"].tolist()]
            torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64))
    assert int(r.error_set_size()) == sum(errors.values())


# ---------------------------------------------------------------- store


def test_store_duplicates_and_once_per_epoch():
    store = PerSampleStore({"v": (torch.float32, 0.0)})
    index = torch.tensor([5, 2, 5])
    store.write(index, store.fresh(index, 0), 0, v=torch.tensor([1.0, 2.0, 3.0]))
    assert store.read("v", torch.tensor([5, 2])).tolist() == [1.0, 2.0]  # first occurrence wins
    again = torch.tensor([5])
    assert not bool(store.fresh(again, 0)[0])  # padding repeat in the same epoch: skipped
    assert bool(store.fresh(again, 1)[0])
    assert len(store) == 6 and store.bytes_per_sample == 8
    with pytest.raises(ValueError, match="`index` values must be >= 0"):
        store.fresh(torch.tensor([-1]), 0)


def test_store_is_invariant_to_micro_batch_size():
    steps = make_steps(6)
    full = ll.build_reweighter("per_sample_ema", momentum=0.6)
    run_steps(full, steps)
    micro = ll.build_reweighter("per_sample_ema", momentum=0.6)
    for epoch, inputs in steps:  # gradient accumulation: the same batch as 4 micro-batches of 2
        micro.set_epoch(epoch)
        for start in range(0, 8, 2):
            micro(**{k: v[start : start + 2] for k, v in inputs.items()})
    assert torch.equal(full.store.tables["ema"], micro.store.tables["ema"])


# ---------------------------------------------------------------- crash and resume


@pytest.mark.parametrize("name", STATEFUL)
def test_crash_and_resume_continues_exactly(name):
    steps = make_steps(9, seed=3)
    straight = ll.build_reweighter(name, **STRATEGIES[name])
    expected = run_steps(straight, steps)
    first = ll.build_reweighter(name, **STRATEGIES[name])
    before = run_steps(first, steps[:4])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = ll.build_reweighter(name, **STRATEGIES[name])
    resumed.load_state_dict(torch.load(buffer))
    after = run_steps(resumed, steps[4:])
    for a, b in zip(before + after, expected):
        assert torch.equal(a, b)
    final, reference = resumed.state_dict(), straight.state_dict()
    assert final.keys() == reference.keys()
    for key in final:
        assert torch.equal(final[key], reference[key]), key


def test_load_state_dict_rejects_mismatch():
    r = ll.build_reweighter("group_dro")
    with pytest.raises(KeyError, match=r"missing \['pending_count', 'pending_loss', 'q'\]"):  # nonfinite: optional
        r.load_state_dict({"step": torch.tensor(0), "epoch": torch.tensor(0)})


# ---------------------------------------------------------------- sampler


def test_balanced_sampler_subsample_and_oversample():
    groups = torch.tensor([0] * 30 + [1] * 6 + [2] * 12)
    sub = BalancedSampler(groups, mode="subsample", seed=1)
    idx = list(sub)
    assert len(idx) == len(sub) == 18 and len(set(idx)) == 18
    assert torch.bincount(groups[idx]).tolist() == [6, 6, 6]
    sub.set_epoch(1)
    assert list(sub) != idx  # reseeded per epoch
    over = BalancedSampler(groups, mode="oversample", num_samples=30000, seed=0)
    freq = torch.bincount(groups[list(over)]).double() / 30000
    torch.testing.assert_close(freq, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0.02, rtol=0)


def test_balanced_sampler_shards_are_disjoint_and_cover():
    groups = torch.tensor([0] * 10 + [1] * 3)
    shards = [list(BalancedSampler(groups, mode="subsample", num_replicas=2, rank=r, seed=4)) for r in (0, 1)]
    full = BalancedSampler(groups, mode="subsample", num_replicas=1, rank=0, seed=4).epoch_indices().tolist()
    assert len(shards[0]) == len(shards[1]) == 3
    padded = full + full[:0] if len(full) % 2 == 0 else full + full[:1]
    assert sorted(shards[0] + shards[1]) == sorted(padded)
    with pytest.raises(ConfigurationError, match="`mode` must be one of `oversample`, `subsample`"):
        BalancedSampler(groups, mode="balanced")
    with pytest.raises(ValueError, match="`groups` must be a non-empty 1-D sequence"):
        BalancedSampler([])
    with pytest.raises(
        ConfigurationError, match=r"`num_samples` applies to mode='oversample' only .* got num_samples=5"
    ):
        BalancedSampler(groups, mode="subsample", num_samples=5)
    with pytest.raises(ConfigurationError, match=r"`rank` must be an integer in \[0, 1\], got 2"):
        BalancedSampler(groups, num_replicas=2, rank=2)
