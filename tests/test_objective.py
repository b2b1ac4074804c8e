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
    # one term: the single-term path (kernel's mean, masked sample) equals the DDP path; the term is the loss on both
    one_logits = logits.detach().clone().requires_grad_(True)
    one = ll.Objective({"cross_entropy": {}})({"logits": one_logits, "target": target})
    one.loss.backward()
    assert one.terms["cross_entropy"] is one.value
    for value, term_is_value, _ in (r[3] for r in results):
        torch.testing.assert_close(value, one.value)
        assert term_is_value
    torch.testing.assert_close(torch.cat([results[0][3][2], results[1][3][2]]) / 2, one_logits.grad)


_FAST_CASES = {
    "masked, two terms": ({"ce": {"loss": "cross_entropy", "label_smoothing": 0.2}, "focal": {"coefficient": 0.3}}, 3),
    "all counted, two terms": ({"ce": {"loss": "cross_entropy"}, "focal": {"coefficient": 0.3}}, None),
    "all counted, one term": ({"cross_entropy": {}}, None),
    "all counted, scaled term": ({"cross_entropy": {"coefficient": 0.5}}, None),
    "masked, one term": ({"cross_entropy": {}}, 3),
    "ignore_index inside the classes": ({"cross_entropy": {"ignore_index": 2}}, None),
    "no validation": ({"cross_entropy": {"validate_args": False}}, 3),
}


@pytest.mark.parametrize("case", list(_FAST_CASES))
def test_fast_path_equals_general_path(case):
    """One process with uniform weights skips the packed reduction: same loss, value, terms and gradients."""
    spec, masked = _FAST_CASES[case]
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


def test_single_term_path_is_taken_only_for_one_unit_per_sample_term():
    """`_plan` marks the single-term path: one per-sample term with the constant coefficient 1, nothing else."""
    single = {
        "one term": ({"cross_entropy": {}}, True),
        "coefficient 1 spelled out": ({"ce": {"loss": "cross_entropy", "coefficient": 1.0}}, True),
        "scaled": ({"cross_entropy": {"coefficient": 0.5}}, False),
        "scheduled": ({"cross_entropy": {"coefficient": {"name": "warmup", "value": 1.0, "steps": 10}}}, False),
        "two terms": ({"cross_entropy": {}, "focal": {}}, False),
        "batch-level": ({"dice": {}}, False),
    }
    for case, (spec, expected) in single.items():
        assert ll.Objective(spec)._plan()[2] is expected, case


@pytest.mark.parametrize("case", ["empty batch", "every sample ignored", "half logits", "int32 labels"])
def test_single_term_path_edge_cases_equal_general_path(case):
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


def test_label_losses_report_a_mask_only_when_a_sample_is_ignored():
    """`forward_with_mask`: one label check gives the loss, and mask None when every label is a class."""
    logits, target = _batch(n=6, seed=2)
    for name in ("cross_entropy", "focal", "poly1"):
        loss = ll.build_loss(name)
        value, mask = loss.forward_with_mask(logits=logits, target=target)
        torch.testing.assert_close(value, loss(logits=logits, target=target))
        assert mask is None
        ignored = target.clone()
        ignored[1] = -100
        value, mask = loss.forward_with_mask(logits=logits, target=ignored)
        assert torch.equal(mask, ignored != -100) and value[1] == 0
        with pytest.raises(ValueError, match=r"`target` labels must be in \[0, 4\] \(or `ignore_index`\), got \[7\]"):
            loss.forward_with_mask(logits=logits, target=torch.tensor([0, 1, 7, 0, 1, 2]))
        assert loss.validate_args is True  # restored after the failed call
    inside = ll.build_loss("cross_entropy", ignore_index=1)  # a class id: every label in range, yet some ignored
    value, mask = inside.forward_with_mask(logits=logits, target=target)
    assert torch.equal(mask, target != 1)
    soft = torch.softmax(torch.randn(6, 5, dtype=torch.float64), dim=1)
    assert ll.build_loss("cross_entropy").forward_with_mask(logits=logits, target=soft)[1] is None


def test_single_term_takes_the_kernels_mean_and_defers_the_per_sample_values(monkeypatch):
    """Cross entropy without class weights, every sample counted: the loss is torch's fused mean and `per_sample` is
    evaluated on first access (with gradient while the graph lives); otherwise the per-sample route."""
    from lightning_losses.losses import classification

    logits, target = _batch(n=6, seed=8)
    obj = ll.Objective({"cross_entropy": {"label_smoothing": 0.1}})
    out = obj({"logits": logits, "target": target})
    assert out._per_sample is None and out.size == 6 and "samples=6" in repr(out)  # nothing evaluated yet
    reference = LF.cross_entropy(logits, target, label_smoothing=0.1)
    torch.testing.assert_close(out.loss, reference.mean())
    assert torch.equal(out.weights, torch.ones(6, dtype=torch.float64)) and out._per_sample is None
    torch.testing.assert_close(out.per_sample, reference)
    assert out.per_sample is out.per_sample and out._deferred is None  # built once; the kept inputs released
    (g_per_sample,) = torch.autograd.grad(out.per_sample.sum() / 6, logits, retain_graph=True)
    (g_loss,) = torch.autograd.grad(out.loss, logits)
    torch.testing.assert_close(g_per_sample, g_loss)

    def per_sample_route(spec, target=target, logits=logits):
        out = ll.Objective(spec)({"logits": logits, "target": target})
        return out._per_sample is not None

    assert per_sample_route({"cross_entropy": {"weight": [1.0, 2.0, 1.0, 1.0, 1.0]}})  # torch divides by Σ w_y
    ignored = target.clone()
    ignored[0] = -100
    assert per_sample_route({"cross_entropy": {}}, target=ignored)
    assert per_sample_route({"cross_entropy": {"coefficient": 0.5}})
    assert per_sample_route({"focal": {}})  # no fused mean

    class OwnKernel(ll.losses.CrossEntropy):  # the parent's mean is not the mean of this kernel
        def forward(self, logits, target):
            return 2 * super().forward(logits, target)

        def _checked_forward(self, logits, target):
            return 2 * super()._checked_forward(logits, target)

    out = ll.Objective([ll.objective.Term("own", OwnKernel(), ll.schedules.Constant(1.0))])(
        {"logits": logits, "target": target}
    )
    assert out._per_sample is not None
    torch.testing.assert_close(out.loss, 2 * LF.cross_entropy(logits, target).mean())
    monkeypatch.setattr(classification, "DEFER_MAX_ELEMENTS", 29)  # logits of 30 elements: not kept alive
    assert per_sample_route({"cross_entropy": {}})


def test_deferred_per_sample_values_refuse_inputs_modified_in_place():
    logits, target = _batch(n=4, seed=9)
    out = ll.Objective({"cross_entropy": {}})({"logits": logits, "target": target})
    target[0] = (target[0] + 1) % 5
    with pytest.raises(
        RuntimeError, match=r"its `logits` or `target` have been modified in place since `compute_loss`"
    ):
        _ = out.per_sample
    logits, target = _batch(n=4, seed=9)
    out = ll.Objective({"cross_entropy": {}})({"logits": logits, "target": target})
    expected = out.per_sample  # read first: then the inputs may change
    target[0] = (target[0] + 1) % 5
    assert out.per_sample is expected


def test_output_copy_keeps_fields_and_first_call_in_inference_mode_caches_a_normal_tensor():
    import copy

    logits, target = _batch(n=4, seed=10)
    for spec in ({"cross_entropy": {}}, {"focal": {}}):
        obj = ll.Objective(spec)
        with torch.inference_mode():  # `trainer.validate` before `fit`
            first = obj({"logits": logits.detach(), "target": target})
        assert not obj.__dict__.get("_uniform_cache", torch.zeros(1)).is_inference()
        reference = LF.cross_entropy(logits.detach(), target) if "cross_entropy" in spec else None
        if reference is not None:  # deferred from inference tensors (no version counter) and read later
            torch.testing.assert_close(first.per_sample, reference)
        out = obj({"logits": logits, "target": target})
        out.loss.backward()  # raised "Inference tensors cannot be saved for backward" with a cached inference tensor
        torch.testing.assert_close(out.value, first.value)
        twin = copy.copy(out)
        assert twin is not out and twin.loss is out.loss and twin.terms is out.terms and twin.size == out.size


@pytest.mark.parametrize("ignore_index", [-100, 7, 2])
def test_cpu_kernel_checks_labels_and_one_read_finds_ignored_samples(ignore_index):
    """On CPU, cross entropy's kernel rejects bad labels (re-raised with our message) and one scalar read on
    `ignore_index`'s side decides the mask; the result equals the fully checked route (`__call__`)."""
    from lightning_losses.losses.classification import _kernels

    logits, target = _batch(n=6, c=5, seed=4)
    loss = ll.build_loss("cross_entropy", ignore_index=ignore_index)
    for labels in ([0, 1, 2, 3, 4, 0], [0, ignore_index, 2, 3, 4, ignore_index]):
        labels = torch.tensor(labels)
        value, mask = loss.forward_with_mask(logits=logits, target=labels)
        torch.testing.assert_close(value, loss(logits=logits, target=labels))
        ignored = bool((labels == ignore_index).any())
        if ignored or 0 <= ignore_index < 5:
            assert torch.equal(mask, labels != ignore_index)
        else:
            assert mask is None
    for bad in (-1, 5, 9):
        if bad == ignore_index:
            continue
        with pytest.raises(
            ValueError, match=rf"`target` labels must be in \[0, 4\] \(or `ignore_index`\), got \[{bad}\]"
        ):
            loss.forward_with_mask(logits=logits, target=torch.tensor([0, 1, bad, 3, 4, 0]))
    assert _kernels(ll.losses.CrossEntropy) == (True, True, True)

    class OwnKernel(ll.losses.CrossEntropy):  # a kernel that checks nothing: the label range is checked first
        def forward(self, logits, target):
            return logits.sum(-1)

        def _checked_forward(self, logits, target):
            return logits.sum(-1)

    assert _kernels(OwnKernel) == (True, False, False)  # its own kernel; the parent's mean is not its mean
    with pytest.raises(ValueError, match=r"`target` labels must be in \[0, 4\] \(or `ignore_index`\), got \[9\]"):
        OwnKernel().forward_with_mask(logits=logits, target=torch.tensor([0, 1, 9, 3, 4, 0]))


def test_an_error_of_the_kernel_that_is_not_about_labels_propagates():
    class Broken(ll.losses.CrossEntropy):
        _kernel_checks_labels = True

        def _checked_forward(self, logits, target):
            raise RuntimeError("kernel failed")

        forward = _checked_forward

    logits, target = _batch(n=4)
    with pytest.raises(RuntimeError, match="kernel failed"):
        Broken().forward_with_mask(logits=logits, target=target)


def test_forward_with_mask_restores_validation_when_the_loss_raises():
    class Failing(ll.losses.CrossEntropy):
        def forward(self, logits, target):
            raise RuntimeError("boom")

    loss = Failing()
    logits, target = _batch(n=4)
    with pytest.raises(RuntimeError, match="boom"):
        loss.forward_with_mask(logits=logits, target=target)
    assert loss.validate_args is True


def test_checked_kernel_equals_forward_and_honours_hooks():
    """The label losses' direct kernel (no hooks; only `logits`, `target`) equals `forward`; hooks take `__call__`."""
    from lightning_losses.losses.base import has_hooks

    logits, target = _batch(n=6, seed=3)
    loss = ll.build_loss("cross_entropy", label_smoothing=0.1, weight=[1.0, 2.0, 0.5, 1.0, 3.0])
    reference = torch.nn.functional.cross_entropy(
        logits, target, weight=loss.weight.double(), label_smoothing=0.1, reduction="none"
    )
    torch.testing.assert_close(loss.forward_with_mask(logits=logits, target=target)[0], reference)
    assert not has_hooks(loss)
    handle = loss.register_forward_hook(lambda _m, _i, out: 2 * out)
    assert has_hooks(loss)
    torch.testing.assert_close(loss.forward_with_mask(logits=logits, target=target)[0], 2 * reference)
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda _m, _i, out: 3 * out)
    try:
        assert has_hooks(loss)
        torch.testing.assert_close(loss.forward_with_mask(logits=logits, target=target)[0], 3 * reference)
    finally:
        handle.remove()
    assert not has_hooks(loss)
    short = ll.build_loss("cross_entropy", weight=[1.0, 2.0])
    with pytest.raises(ValueError, match=r"`weight` must have shape \[C\] = \[5\], got \[2\]"):
        short.forward_with_mask(logits=logits, target=target)


def test_a_subclass_overriding_forward_is_not_bypassed():
    class Doubled(ll.losses.CrossEntropy):
        def forward(self, logits, target):
            return 2 * super().forward(logits, target)

    logits, target = _batch(n=4)
    value, _ = Doubled().forward_with_mask(logits=logits, target=target)
    torch.testing.assert_close(value, 2 * ll.build_loss("cross_entropy")(logits=logits, target=target))


def test_weights_are_built_on_access_and_uses_step():
    logits, target = _batch(n=5)
    out = ll.Objective({"cross_entropy": {}})({"logits": logits, "target": target})
    assert out._weights is None  # nothing allocated on the hot path
    assert torch.equal(out.weights, torch.ones(5, dtype=torch.float64)) and out.weights is out.weights
    assert "ObjectiveOutput(value=" in repr(out)
    assert ll.Objective({"cross_entropy": {}, "focal": {"coefficient": 0.5}}).uses_step is False
    warm = {"name": "warmup", "value": 1.0, "steps": 10}
    assert ll.Objective({"cross_entropy": {}, "focal": {"coefficient": warm}}).uses_step is True
