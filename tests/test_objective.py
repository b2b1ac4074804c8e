"""Objective: terms, coefficients, inputs mapping, masking, reweighting hook; DDP equals one process."""

import pytest
import torch
from omegaconf import OmegaConf

import lightning_losses as ll
from lightning_losses import functional as LF
from lightning_losses.distributed import rank
from lightning_losses.losses.base import Loss


def _batch(n=8, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=torch.float64).requires_grad_(True), torch.randint(
        0, c, (n,), generator=g
    )


def test_terms_and_scheduled_coefficients():
    logits, target = _batch()
    obj = ll.Objective(
        {
            "ce": {"loss": "cross_entropy"},
            "foc": {
                "loss": "focal",
                "gamma": 1.0,
                "coefficient": {"name": "linear", "start": 0.0, "end": 1.0, "steps": 10},
            },
        }
    )
    out = obj({"logits": logits, "target": target}, step=5)
    ce, foc = LF.cross_entropy(logits, target), LF.focal(logits, target, gamma=1.0)
    torch.testing.assert_close(out.per_sample, ce + 0.5 * foc)
    torch.testing.assert_close(out.value, (ce + 0.5 * foc).mean())
    torch.testing.assert_close(out.loss, (ce + 0.5 * foc).mean())
    torch.testing.assert_close(out.terms["ce"], ce.mean().detach())
    torch.testing.assert_close(out.terms["foc"], foc.mean().detach())
    assert out.coefficients == {"ce": 1.0, "foc": 0.5}
    assert out.weights.tolist() == [1.0] * 8


def test_inputs_mapping_and_missing_inputs():
    logits, target = _batch()
    obj = ll.Objective({"ce": {"loss": "cross_entropy", "inputs": {"target": "labels", "logits": "scores"}}})
    out = obj({"scores": logits, "labels": target})
    torch.testing.assert_close(out.value, LF.cross_entropy(logits, target).mean())
    with pytest.raises(
        ValueError, match=r"term `ce` needs input `target` \(mapped from `labels`\); compute_loss got: `scores`"
    ):
        obj({"scores": logits})
    with pytest.raises(
        ll.ConfigurationError, match=r"term `ce`: `inputs` names unknown argument `labels`; valid: `logits`, `target`"
    ):
        ll.Objective({"ce": {"inputs": {"labels": "y"}}})


def test_ignore_index_is_excluded_from_the_normaliser():
    logits, target = _batch()
    target[[1, 4]] = -100
    out = ll.Objective({"cross_entropy": {}})({"logits": logits, "target": target})
    keep = target != -100
    torch.testing.assert_close(out.value, LF.cross_entropy(logits[keep], target[keep]).mean())
    assert out.weights[~keep].eq(0).all()
    torch.testing.assert_close(out.value, torch.nn.functional.cross_entropy(logits, target))


def test_reweighter_and_extra_terms():
    logits, target = _batch()
    seen = {}

    def reweighter(losses, **tensors):
        seen["requires_grad"] = losses.requires_grad
        seen["keys"] = sorted(tensors)
        seen["sample_mask"] = tensors["sample_mask"]
        return torch.arange(1.0, 9.0, dtype=torch.float64)

    extra = {"bonus": -0.1 * torch.ones(8, dtype=torch.float64)}
    out = ll.Objective({"cross_entropy": {}})(
        {"logits": logits, "target": target, "index": torch.arange(8)}, reweighter=reweighter, extra_terms=extra
    )
    w = torch.arange(1.0, 9.0, dtype=torch.float64)
    total = LF.cross_entropy(logits, target) - 0.1
    torch.testing.assert_close(out.value, (w * total).sum() / w.sum())
    # the counted samples (target != ignore_index) reach the reweighter, a tensor even when all count: its None-ness
    # never depends on the data (under DDP the reweighter's collectives must match on every rank)
    assert torch.equal(seen.pop("sample_mask"), target != -100)
    assert seen == {"requires_grad": False, "keys": ["index", "logits", "sample_mask", "target"]}
    torch.testing.assert_close(out.terms["bonus"], torch.tensor(-0.1, dtype=torch.float64))
    target[[2, 5]] = -100  # now the counted samples (target != ignore_index) reach the reweighter
    out = ll.Objective({"cross_entropy": {}})({"logits": logits, "target": target}, reweighter=reweighter)
    assert torch.equal(seen["sample_mask"], target != -100)
    keep = target != -100
    torch.testing.assert_close(out.value, (w[keep] * LF.cross_entropy(logits, target)[keep]).sum() / w[keep].sum())


class _Scalar(Loss):
    def forward(self, logits):
        return logits.sum()


class _SetLevel(Loss):
    batch_level = True

    def forward(self, logits):
        return logits.pow(2).mean()


def test_shape_contract_and_batch_level_terms():
    logits, target = _batch()
    with pytest.raises(ValueError, match=r"loss of term `bad` must be per-sample \[N\], got shape \[\]"):
        ll.Objective([ll.Term("bad", _Scalar(), ll.build_schedule(1.0))])({"logits": logits})
    obj = ll.Objective(
        [
            ll.Term("ce", ll.build_loss("ce"), ll.build_schedule(1.0)),
            ll.Term("set", _SetLevel(), ll.build_schedule(2.0)),
        ]
    )
    out = obj({"logits": logits, "target": target})
    expected = LF.cross_entropy(logits, target).mean() + 2 * logits.pow(2).mean()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.terms["set"], logits.pow(2).mean().detach())


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({}, "an objective needs at least one term, got an empty mapping"),
        (3, "an objective spec must be a mapping such as"),
        ({"ce": 3}, r"objective term `ce` must be a mapping of loss arguments, got 3"),
        ({"foccal": {}}, r"term `foccal`: unknown loss `foccal`; did you mean `focal`\?"),
        (
            {"x": {"loss": "focal", "gama": 2}},
            r"term `x`: loss `focal` got an unexpected argument `gama`; did you mean `gamma`\?",
        ),
        ({"focal": {"gamma": -2}}, r"term `focal`: `gamma` must be >= 0.0, got -2"),
        ({"ce": {"coefficient": "big"}}, r"term `ce`: `coefficient` must be a number or a schedule mapping"),
        ({"ce": {"inputs": ["a"]}}, r"term `ce`: `inputs` must map loss arguments to tensor names"),
        ("missing.yaml", r"objective recipe file `missing.yaml` does not exist"),
    ],
)
def test_objective_errors(spec, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.Objective(spec)


_ALLOWED = r"must be a non-empty string without `\.` that is not an attribute of torch\.nn\.ModuleDict \(e\.g\. `ce`\)"


@pytest.mark.parametrize(
    ("name", "got"),
    [
        ("a.b", r"got 'a\.b'; use e\.g\. 'a_b'"),
        ("", r"got ''$"),
        ("training", r"got 'training'$"),
        ("keys", r"got 'keys'$"),
    ],
)
def test_term_names_that_cannot_be_module_names_are_refused(name, got):
    """A bad term name is a configuration error naming it (it was a bare KeyError from `nn.ModuleDict`), in both
    spec forms, before the loss is built (``{"a.b": {}}`` is about the name, not an unknown loss `a.b`)."""
    match = rf"objective term name {_ALLOWED}, {got}"
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.Objective({name: {"loss": "cross_entropy"}})
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.Objective({name: {}})
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.Objective([ll.Term(name, ll.build_loss("cross_entropy"), ll.build_schedule(1.0))])


def test_a_term_name_given_twice_is_refused():
    terms = [ll.Term("ce", ll.build_loss(loss), ll.build_schedule(1.0)) for loss in ("cross_entropy", "focal")]
    with pytest.raises(ll.ConfigurationError, match=r"objective term name 'ce' is given twice"):
        ll.Objective(terms)


def test_objective_from_yaml_and_dictconfig(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("gamma: 3.0\nobjective:\n  focal: {gamma: '${gamma}'}\n")
    obj = ll.Objective(str(path))
    assert obj.losses["focal"].gamma == 3.0
    obj2 = ll.Objective(OmegaConf.create({"ce": {"loss": "cross_entropy", "label_smoothing": 0.1}}))
    assert obj2.losses["ce"].label_smoothing == pytest.approx(0.1)


# ------------------------------------------------------------------ DDP


def _ddp_objective(logits_all, target_all, splits):
    r = rank()
    lo, hi = splits[r], splits[r + 1]
    logits = logits_all[lo:hi].clone().requires_grad_(True)
    target = target_all[lo:hi].clone()
    target_masked = target.clone()
    obj = ll.Objective({"ce": {"loss": "cross_entropy", "label_smoothing": 0.1}, "focal": {"coefficient": 0.5}})
    out = obj({"logits": logits, "target": target_masked}, reweighter=lambda losses, **_: 1.0 + losses)
    out.loss.backward()
    # one unweighted term: the general (DDP) path, against the single-term path of one process in the test
    single_logits = logits_all[lo:hi].clone().requires_grad_(True)
    single = ll.Objective({"cross_entropy": {}})({"logits": single_logits, "target": target})
    single.loss.backward()
    single_result = (single.value, single.terms["cross_entropy"] is single.value, single_logits.grad)
    return out.value, out.terms, logits.grad, single_result


def test_objective_ddp_equals_concatenated_batch(ddp):
    logits, target = _batch(n=9, seed=3)
    target[2] = -100
    splits = [0, 4, 9]  # uneven per-rank batches
    results = ddp.run(_ddp_objective, logits.detach(), target, splits)
    obj = ll.Objective({"ce": {"loss": "cross_entropy", "label_smoothing": 0.1}, "focal": {"coefficient": 0.5}})
    ref_logits = logits.detach().clone().requires_grad_(True)
    ref = obj({"logits": ref_logits, "target": target}, reweighter=lambda losses, **_: 1.0 + losses)
    ref.loss.backward()
    for value, terms, _, _ in results:
        torch.testing.assert_close(value, ref.value)
        for k in ("ce", "focal"):
            torch.testing.assert_close(terms[k], ref.terms[k])
    # DDP averages parameter gradients over the 2 ranks: per-sample logit gradients / 2 must equal one process
    torch.testing.assert_close(torch.cat([results[0][2], results[1][2]]) / 2, ref_logits.grad)
    # one term (a masked sample): one process equals the DDP path; the term is the loss on both
    one_logits = logits.detach().clone().requires_grad_(True)
    one = ll.Objective({"cross_entropy": {}})({"logits": one_logits, "target": target})
    one.loss.backward()
    assert one.terms["cross_entropy"] is one.value
    for value, term_is_value, _ in (r[3] for r in results):
        torch.testing.assert_close(value, one.value)
        assert term_is_value
    torch.testing.assert_close(torch.cat([results[0][3][2], results[1][3][2]]) / 2, one_logits.grad)


_UNIFORM_CASES = {
    "masked, two terms": ({"ce": {"loss": "cross_entropy", "label_smoothing": 0.2}, "focal": {"coefficient": 0.3}}, 3),
    "all counted, two terms": ({"ce": {"loss": "cross_entropy"}, "focal": {"coefficient": 0.3}}, None),
    "all counted, one term": ({"cross_entropy": {}}, None),
    "all counted, scaled term": ({"cross_entropy": {"coefficient": 0.5}}, None),
    "masked, one term": ({"cross_entropy": {}}, 3),
    "ignore_index inside the classes": ({"cross_entropy": {"ignore_index": 2}}, None),
    "no validation": ({"cross_entropy": {"validate_args": False}}, 3),
}


@pytest.mark.parametrize("case", list(_UNIFORM_CASES))
def test_no_reweighter_equals_uniform_weights(case):
    """Without a reweighter every counted sample has weight 1: same loss, value, terms and gradients."""
    spec, masked = _UNIFORM_CASES[case]
    logits, target = _batch(n=7, seed=5)
    if masked is not None:
        target[masked] = -100  # a masked sample
    obj = ll.Objective(spec)
    fast = obj({"logits": logits, "target": target})
    (g_fast,) = torch.autograd.grad(fast.loss, logits)
    general = obj({"logits": logits, "target": target}, reweighter=lambda losses, **_: torch.ones_like(losses))
    (g_general,) = torch.autograd.grad(general.loss, logits)
    torch.testing.assert_close(fast.loss, general.loss)
    torch.testing.assert_close(fast.value, general.value)
    torch.testing.assert_close(g_fast, g_general)
    assert fast.terms.keys() == general.terms.keys()
    for k in fast.terms:
        torch.testing.assert_close(fast.terms[k], general.terms[k])
    torch.testing.assert_close(fast.weights, general.weights)


@pytest.mark.parametrize("case", ["empty batch", "every sample ignored", "half logits", "int32 labels"])
def test_edge_cases_without_reweighter_equal_uniform_weights(case):
    logits, target = _batch(n=6, seed=7)
    if case == "empty batch":
        logits, target = logits[:0].detach().requires_grad_(True), target[:0]
    elif case == "every sample ignored":
        target = torch.full_like(target, -100)
    elif case == "half logits":
        logits = logits.detach().to(torch.bfloat16).requires_grad_(True)
    else:
        target = target.int()
    obj = ll.Objective({"cross_entropy": {"label_smoothing": 0.1}})
    fast = obj({"logits": logits, "target": target})
    (g_fast,) = torch.autograd.grad(fast.loss, logits)
    general = obj({"logits": logits, "target": target}, reweighter=lambda losses, **_: torch.ones_like(losses))
    (g_general,) = torch.autograd.grad(general.loss, logits)
    assert fast.per_sample.dtype == (torch.float32 if case == "half logits" else torch.float64)
    for a, b in ((fast.loss, general.loss), (fast.value, general.value), (g_fast, g_general)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(fast.terms["cross_entropy"], general.terms["cross_entropy"])
    torch.testing.assert_close(fast.weights, general.weights)
    assert fast.coefficients == {"cross_entropy": 1.0}
    if case in ("empty batch", "every sample ignored"):
        assert float(fast.value) == 0.0 and fast.loss.requires_grad


def test_output_copy_keeps_fields_and_a_first_call_in_inference_mode_leaves_no_trace():
    import copy

    logits, target = _batch(n=4, seed=10)
    for spec in ({"cross_entropy": {}}, {"focal": {}}):
        obj = ll.Objective(spec)
        with torch.inference_mode():  # `trainer.validate` before `fit`
            first = obj({"logits": logits.detach(), "target": target})
        out = obj({"logits": logits, "target": target})
        out.loss.backward()  # a first call in inference mode leaves nothing behind that backward cannot save
        torch.testing.assert_close(out.value, first.value)
        twin = copy.copy(out)
        assert twin is not out and twin.loss is out.loss and twin.terms is out.terms and twin.size == out.size


def test_loss_hooks_and_overridden_forward_are_honoured():
    """The objective calls each loss as a module: its hooks run and a subclass's `forward` is used."""
    logits, target = _batch(n=6, seed=3)
    loss = ll.build_loss("cross_entropy", label_smoothing=0.1, weight=[1.0, 2.0, 0.5, 1.0, 3.0])
    reference = torch.nn.functional.cross_entropy(
        logits, target, weight=loss.weight.double(), label_smoothing=0.1, reduction="none"
    )
    objective = ll.Objective([ll.Term("ce", loss, ll.build_schedule(1.0))])
    torch.testing.assert_close(objective({"logits": logits, "target": target}).per_sample, reference)
    handle = loss.register_forward_hook(lambda _m, _i, out: 2 * out)
    torch.testing.assert_close(objective({"logits": logits, "target": target}).per_sample, 2 * reference)
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda m, _i, out: 3 * out if isinstance(m, ll.losses.CrossEntropy) else out
    )
    try:
        torch.testing.assert_close(objective({"logits": logits, "target": target}).per_sample, 3 * reference)
    finally:
        handle.remove()

    class Doubled(ll.losses.CrossEntropy):
        def forward(self, logits, target):
            return 2 * super().forward(logits, target)

    out = ll.Objective([ll.Term("twice", Doubled(), ll.build_schedule(1.0))])({"logits": logits, "target": target})
    torch.testing.assert_close(out.value, 2 * LF.cross_entropy(logits, target).mean())


def test_weights_and_uses_step():
    logits, target = _batch(n=5)
    out = ll.Objective({"cross_entropy": {}})({"logits": logits, "target": target})
    assert torch.equal(out.weights, torch.ones(5, dtype=torch.float64)) and out.weights is out.weights
    assert "ObjectiveOutput(value=" in repr(out)
    assert ll.Objective({"cross_entropy": {}, "focal": {"coefficient": 0.5}}).uses_step is False
    warm = {"name": "warmup", "value": 1.0, "steps": 10}
    assert ll.Objective({"cross_entropy": {}, "focal": {"coefficient": warm}}).uses_step is True
