import math

import pytest

import lightning_losses as ll
from lightning_losses.schedules import build_schedule, cosine, linear, step_decay, warmup


def test_functional_forms_against_formulas():
    for t in range(0, 30):
        p = min(max((t - 5) / 20, 0.0), 1.0)
        assert linear(t, 1.0, 3.0, 20, begin=5) == pytest.approx(1.0 + 2.0 * p)
        assert cosine(t, 1.0, 0.0, 20, begin=5) == pytest.approx(0.5 * (1 + math.cos(math.pi * p)))
        assert step_decay(t, 2.0, [10, 20], 0.5) == pytest.approx(2.0 * 0.5 ** ((t >= 10) + (t >= 20)))
        assert warmup(t, 4.0, 10) == pytest.approx(4.0 * min(t / 10, 1.0))
    assert linear(0, 1.0, 2.0, 0) == 2.0  # zero-length ramp jumps at `begin`
    assert linear(4, 1.0, 2.0, 0, begin=5) == 1.0 and linear(5, 1.0, 2.0, 0, begin=5) == 2.0


def test_registered_schedules_against_closed_forms_at_every_step():
    """The classes a recipe builds (incl. `begin` and warm-up `start`), step by step, against the formulas."""
    cases = [
        ({"name": "constant", "value": 0.7}, lambda t: 0.7),
        (
            {"name": "linear", "start": 0.2, "end": 1.0, "steps": 8, "begin": 3},
            lambda t: 0.2 + 0.8 * min(max((t - 3) / 8, 0.0), 1.0),
        ),
        (
            {"name": "cosine", "start": 1.0, "end": 0.1, "steps": 10, "begin": 2},
            lambda t: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(max((t - 2) / 10, 0.0), 1.0))),
        ),
        (
            {"name": "step_decay", "value": 3.0, "milestones": [4, 4, 9], "gamma": 0.5},
            lambda t: 3.0 * 0.5 ** ((t >= 4) * 2 + (t >= 9)),
        ),
        ({"name": "warmup", "value": 2.0, "steps": 5, "start": 0.5}, lambda t: 0.5 + 1.5 * min(t / 5, 1.0)),
        ({"name": "warmup", "value": 1.0, "steps": 0}, lambda t: 1.0),
    ]
    for spec, formula in cases:
        sched = build_schedule(spec)
        for t in range(0, 25):
            assert sched(t) == pytest.approx(formula(t)), (spec, t)
    cos = build_schedule({"name": "cosine", "start": 1.0, "end": 0.0, "steps": 4})
    assert [round(cos(t), 6) for t in range(6)] == [1.0, 0.853553, 0.5, 0.146447, 0.0, 0.0]  # cos^2(pi t / 8)


@pytest.mark.parametrize(
    ("spec", "values"),
    [
        (0.3, {0: 0.3, 100: 0.3}),
        ({"name": "linear", "start": 0.0, "end": 1.0, "steps": 10}, {0: 0.0, 5: 0.5, 50: 1.0}),
        ({"name": "cosine", "start": 1.0, "end": 0.0, "steps": 10}, {0: 1.0, 5: 0.5, 10: 0.0}),
        ({"name": "step", "value": 1.0, "milestones": [2, 4], "gamma": 0.1}, {1: 1.0, 2: 0.1, 4: 0.01}),
        ({"name": "warmup", "value": 2.0, "steps": 4}, {0: 0.0, 2: 1.0, 9: 2.0}),
        ({"name": "constant", "value": 5}, {3: 5.0}),
    ],
)
def test_build_schedule(spec, values):
    sched = build_schedule(spec)
    for step, expected in values.items():
        assert sched(step) == pytest.approx(expected)
    assert build_schedule(sched) is sched
    assert type(sched).__name__ in repr(sched)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (True, "^`coefficient` must be a number or a schedule mapping, got True$"),
        ("fast", "^`coefficient` must be a number or a schedule mapping such as"),
        (
            {"name": "linar", "start": 0, "end": 1, "steps": 3},
            r"^`coefficient`: unknown schedule `linar`; did you mean `linear`\?",
        ),
        ({"name": "linear", "start": 0, "end": 1, "steps": -1}, r"`steps` must be an integer >= 0, got -1"),
        ({"name": "linear", "start": 0, "end": float("nan"), "steps": 1}, r"`end` must be a finite number"),
        ({"name": "step", "value": 1, "milestones": [5, 2]}, r"`milestones` must be increasing, got \[5, 2\]"),
        ({"name": "step", "value": 1, "milestones": 5}, r"`milestones` must be a list of step numbers, got 5"),
        ({"name": "step", "value": 1, "milestones": [1], "gamma": -1}, r"`gamma` must be >= 0.0, got -1.0"),
        ({"name": "warmup", "steps": 3}, r"schedule `warmup` is missing required argument\(s\): `value`"),
        ({"name": "cosine", "start": 1, "end": 0, "steps": 5, "begin": -1}, r"`begin` must be an integer >= 0, got -1"),
        ({"name": "cosine", "start": "1", "end": 0, "steps": 5}, r"`start` must be a finite number, got '1'"),
        ({"name": "warmup", "value": 1, "steps": 2.5}, r"`steps` must be an integer >= 0, got 2.5"),
        ({"name": "constant", "value": 1, "steps": 3}, r"schedule `constant` got an unexpected argument `steps`"),
        ({"value": 1}, r"a schedule spec mapping needs a `name` key"),
    ],
)
def test_schedule_errors(spec, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        build_schedule(spec)
