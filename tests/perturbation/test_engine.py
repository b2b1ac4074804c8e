"""The engine through the manual helper: one float64 step equals the formula for every preset, and the mechanics
(exact restore, BatchNorm, non-finite skip, loss scale, schedules, state) hold."""

import pytest
import torch
from torch import nn

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import Perturbation, build_perturbation, perturbed_backward
from lightning_losses.perturbation import functional as F

from ._reference import (
    amp_eps,
    asam_eps,
    asam_p2_eps,
    awp_eps,
    descent_grad,
    grad_at,
    sam_eps,
    tiny_batch,
    tiny_model,
)

LR = 0.1


def _one_step(perturbation, model, x, y, **kwargs):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    opt.zero_grad()
    perturbed_backward(perturbation, model, lambda: nn.functional.cross_entropy(model(x), y), **kwargs)
    opt.step()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _expected(model, eps, x, y):
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    g2 = descent_grad(model, w, eps, x, y)
    return {k: w[k] - LR * g2[k] for k in w}


def _cases(model, w, x, y):
    g = grad_at(model, w, x, y)
    return {
        "sam": ({"rho": 0.05}, sam_eps(g, 0.05)),
        "asam": ({"rho": 0.5, "eta": 0.01}, asam_eps(g, w, 0.5, 0.01)),
        "asam_p2": ({"rho": 2.0}, asam_p2_eps(g, w, 2.0)),
        "adversarial_model_perturbation": ({"epsilon": 0.5}, amp_eps(model, w, x, y, 0.5, 1.0, 1)),
        "amp3": ({"epsilon": 0.1, "inner_lr": 0.5, "inner_steps": 3}, amp_eps(model, w, x, y, 0.1, 0.5, 3)),
        "awp": ({"gamma": 5e-3}, awp_eps(g, w, 5e-3)),
    }


@pytest.mark.parametrize("name", ["sam", "asam", "asam_p2", "adversarial_model_perturbation", "amp3", "awp"])
def test_one_step_matches_formula_float64(name):
    model = tiny_model()
    x, y = tiny_batch()
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    kwargs, eps = _cases(model, w, x, y)[name]
    assert any(float(e.abs().max()) > 0 for e in eps.values())
    expected = _expected(model, eps, x, y)
    preset = "adversarial_model_perturbation" if name == "amp3" else name
    got = _one_step(build_perturbation(preset, **kwargs), model, x, y)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-10, atol=1e-12)


def test_perturbation_differs_from_plain_step():
    model, plain = tiny_model(), tiny_model()
    x, y = tiny_batch()
    got = _one_step(build_perturbation("sam", rho=0.5), model, x, y)
    g = grad_at(plain, dict(plain.named_parameters()), x, y)
    assert not torch.allclose(got["0.weight"], plain.state_dict()["0.weight"] - LR * g["0.weight"])


def test_quadratic_converges_to_minimum():
    # L(w) = 0.5 (w - c)^T A (w - c): SAM's fixed point is the minimum c (the gradient at w + eps vanishes there only
    # when eps -> 0, which holds because eps = rho * A(w - c)/||A(w - c)|| and the iterates oscillate into c with a
    # decaying radius schedule).
    a = torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    w = nn.Parameter(torch.zeros(2, dtype=torch.float64))
    holder = nn.Module()
    holder.w = w
    opt = torch.optim.SGD([w], lr=0.1)
    sched = {"name": "linear", "start": 0.05, "end": 0.0, "steps": 150}
    for name, kwargs in (("sam", {"rho": sched}), ("adversarial_model_perturbation", {"epsilon": sched})):
        with torch.no_grad():
            w.zero_()
        engine = build_perturbation(name, **kwargs)
        for _ in range(300):
            opt.zero_grad()
            perturbed_backward(engine, holder, lambda: 0.5 * (w - c) @ a @ (w - c))
            opt.step()
        torch.testing.assert_close(w.detach(), c, atol=1e-6, rtol=0)


def test_exception_in_second_pass_restores_weights_exactly():
    model = tiny_model()
    x, y = tiny_batch()
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    calls = []

    def loss_fn():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in the perturbed pass")
        return nn.functional.cross_entropy(model(x), y)

    engine = build_perturbation("sam", rho=0.5)
    with pytest.raises(RuntimeError, match="boom"):
        perturbed_backward(engine, model, loss_fn)
    assert not engine.perturbed
    for k, v in model.named_parameters():
        assert torch.equal(v, before[k])


def test_batchnorm_running_stats_frozen_in_perturbed_pass():
    model = tiny_model(bn=True)
    x, y = tiny_batch()
    ref = tiny_model(bn=True)
    nn.functional.cross_entropy(ref(x), y).backward()  # one ordinary training forward
    perturbed_backward(build_perturbation("sam", rho=0.5), model, lambda: nn.functional.cross_entropy(model(x), y))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(getattr(model[1], name), getattr(ref[1], name))
    unfrozen = tiny_model(bn=True)
    perturbed_backward(
        build_perturbation("sam", rho=0.5, freeze_bn=False),
        unfrozen,
        lambda: nn.functional.cross_entropy(unfrozen(x), y),
    )
    assert int(unfrozen[1].num_batches_tracked) == 2


def test_non_finite_ascent_gradient_skips_and_counts():
    model = tiny_model()
    x, y = tiny_batch()
    calls = []

    def loss_fn():
        calls.append(1)
        loss = nn.functional.cross_entropy(model(x), y)
        return loss * float("inf") if len(calls) == 1 else loss

    engine = build_perturbation("sam", rho=0.5)
    perturbed_backward(engine, model, loss_fn)
    assert engine.skipped == 1 and engine.perturbed_steps == 0
    g = grad_at(model, dict(model.named_parameters()), x, y)  # the descent ran at w: a plain gradient
    for k, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g[k])
    assert float(engine.last_stats["skipped"]) == 1.0


@pytest.mark.parametrize("name", ["sam", "adversarial_model_perturbation"])
def test_grad_scaler_scale_is_divided_out_before_the_ascent(name):
    kwargs = {"rho": 0.05} if name == "sam" else {"epsilon": 10.0, "inner_lr": 0.01}
    model, ref = tiny_model(dtype=torch.float32), tiny_model(dtype=torch.float32)
    x, y = tiny_batch(dtype=torch.float32)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    perturbed_backward(
        build_perturbation(name, **kwargs),
        model,
        lambda: nn.functional.cross_entropy(model(x), y),
        backward=lambda loss: scaler.scale(loss).backward(),
        grad_scaler=scaler,
    )
    perturbed_backward(build_perturbation(name, **kwargs), ref, lambda: nn.functional.cross_entropy(ref(x), y))
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad / 2.0**10, q.grad, rtol=1e-5, atol=1e-7)


def test_every_n_steps_probability_and_warmup():
    engine = build_perturbation("sam", every_n_steps=3)
    assert [engine.is_active(s) for s in range(6)] == [True, False, False, True, False, False]
    rnd = build_perturbation("sam", probability=0.3, seed=4)
    draws = [rnd.is_active(s) for s in range(400)]
    assert draws == [build_perturbation("sam", probability=0.3, seed=4).is_active(s) for s in range(400)]
    assert 0.2 < sum(draws) / 400 < 0.4
    awp = build_perturbation("awp", warmup_epochs=2)
    assert not awp.is_active(0, epoch=1) and awp.is_active(0, epoch=2)


def test_plain_steps_cost_one_pass():
    model = tiny_model()
    x, y = tiny_batch()
    calls = []

    def loss_fn():
        calls.append(1)
        return nn.functional.cross_entropy(model(x), y)

    engine = build_perturbation("sam", every_n_steps=2)
    for _ in range(4):
        perturbed_backward(engine, model, loss_fn)
    assert len(calls) == 2 + 1 + 2 + 1


def test_looksam_reuses_the_orthogonal_component():
    model = tiny_model()
    x, y = tiny_batch()
    engine = build_perturbation("sam", rho=0.5, every_n_steps=2, reuse_alpha=0.7)
    perturbed_backward(engine, model, lambda: nn.functional.cross_entropy(model(x), y), step=0)
    gv = engine.orthogonal
    w = dict(model.named_parameters())
    g = grad_at(model, w, x, y)
    g_s = descent_grad(model, {k: v.detach() for k, v in w.items()}, sam_eps(g, 0.5), x, y)
    gl, gsl = list(g.values()), list(g_s.values())
    dot = sum(float((a * b).sum()) for a, b in zip(gl, gsl))
    gg = sum(float((a * a).sum()) for a in gl)
    for v, a, b in zip(gv, gl, gsl):
        torch.testing.assert_close(v, b - dot / gg * a)
    for p in model.parameters():
        p.grad = None
    perturbed_backward(engine, model, lambda: nn.functional.cross_entropy(model(x), y), step=1)
    gn = sum(float((a * a).sum()) for a in gl) ** 0.5
    vn = sum(float((v * v).sum()) for v in gv) ** 0.5
    for (k, p), v in zip(model.named_parameters(), gv):
        torch.testing.assert_close(p.grad, g[k] + 0.7 * gn / vn * v)


def test_radius_schedule_and_parameter_selection():
    model = tiny_model()
    x, y = tiny_batch()
    engine = build_perturbation("sam", rho={"name": "linear", "start": 0.0, "end": 1.0, "steps": 10}, params=["2.*"])
    perturbed_backward(engine, model, lambda: nn.functional.cross_entropy(model(x), y), step=5)
    assert float(engine.last_stats["radius"]) == 0.5
    assert abs(float(engine.last_stats["norm"]) - 0.5) < 1e-9
    assert [n for n, _ in engine.select(model.named_parameters())] == ["2.weight", "2.bias"]


def test_collect_stats_off_keeps_the_step_and_skips_the_diagnostics():
    x, y = tiny_batch()
    grads = {}
    for collect in (True, False):
        model = tiny_model()
        engine = build_perturbation("sam", rho=0.05)
        engine.collect_stats = collect
        perturbed_backward(engine, model, lambda m=model: nn.functional.cross_entropy(m(x), y))
        grads[collect] = [p.grad.clone() for p in model.parameters()]
        keys = set(engine.last_stats)
        full = {"grad_norm", "norm", "sharpness", "grad_norm_perturbed", "radius", "skipped", "cos_delta_grad"}
        assert keys == (full if collect else {"grad_norm"})
    for a, b in zip(grads[True], grads[False]):
        assert torch.equal(a, b)


def test_state_dict_round_trip():
    engine = build_perturbation("sam", every_n_steps=2, reuse_alpha=0.5)
    engine.skipped, engine.perturbed_steps, engine.orthogonal = 3, 7, [torch.ones(2)]
    other = build_perturbation("sam", every_n_steps=2, reuse_alpha=0.5)
    other.load_state_dict(engine.state_dict())
    assert other.skipped == 3 and other.perturbed_steps == 7 and torch.equal(other.orthogonal[0], torch.ones(2))


def test_registry_and_errors():
    assert ll.list_perturbations() == [
        "adversarial_model_perturbation",
        "asam",
        "asam_p2",
        "awp",
        "bsam",
        "esam",
        "fad",
        "friendly_sam",
        "gam",
        "gsam",
        "sam",
        "wsam",
    ]
    assert "amp" not in ll.list_perturbations()
    with pytest.raises(ConfigurationError, match="perturbation `amp` is ambiguous: Adversarial Model Perturbation is"):
        ll.build_perturbation("amp")
    with pytest.raises(ConfigurationError, match="perturbation `amp` is ambiguous"):
        ll.WeightPerturbation("AMP")
    with pytest.raises(ConfigurationError, match="unknown perturbation `sma`; did you mean `sam`"):
        ll.build_perturbation("sma")
    with pytest.raises(ConfigurationError, match="perturbation `sam` got an unexpected argument `rhoo`"):
        ll.build_perturbation("sam", rhoo=0.1)
    with pytest.raises(ConfigurationError, match="perturbation `sam` fixes `rule`"):
        ll.build_perturbation("sam", rule="clip")
    for preset, radius in (("sam", "rho"), ("asam", "rho"), ("adversarial_model_perturbation", "epsilon")):
        with pytest.raises(ConfigurationError, match=f"^`{radius}` must be >= 0.0, got -1.0$"):  # the name given
            ll.build_perturbation(preset, **{radius: -1.0})
    with pytest.raises(ConfigurationError, match="^`gamma` must be >= 0.0, got -1.0$"):
        ll.build_perturbation("awp", gamma=-1.0)
    with pytest.raises(ConfigurationError, match="^`radius` must be >= 0.0, got -1.0$"):
        Perturbation(radius=-1.0)
    with pytest.raises(ConfigurationError, match="`inner_steps` must be an integer >= 1, got 0"):
        ll.build_perturbation("adversarial_model_perturbation", inner_steps=0)
    with pytest.raises(ConfigurationError, match="`reuse_alpha` \\(LookSAM\\) needs `every_n_steps` > 1"):
        ll.build_perturbation("sam", reuse_alpha=0.5)
    with pytest.raises(ConfigurationError, match="`probability` must be in \\(0.0, 1.0\\], got 0.0"):
        ll.build_perturbation("sam", probability=0.0)
    with pytest.raises(ConfigurationError, match="`params` must be a list of parameter-name patterns"):
        ll.build_perturbation("sam", params=[1])
    with pytest.raises(ConfigurationError, match="`sync_ascent` must be true or false, got 'yes'"):
        ll.build_perturbation("sam", sync_ascent="yes")
    with pytest.raises(ConfigurationError, match="`rule` must be one of `normalise`, `clip`, `bayes`, got 'norm'"):
        Perturbation(rule="norm")


def test_logged_statistics_equal_their_definitions():
    model = tiny_model()
    x, y = tiny_batch()
    w = {k: v.detach().clone() for k, v in model.named_parameters()}
    g = grad_at(model, w, x, y)
    eps = sam_eps(g, 0.5)
    engine = build_perturbation("sam", rho=0.5)
    perturbed_backward(engine, model, lambda: nn.functional.cross_entropy(model(x), y))
    stats = engine.last_stats
    from ._reference import loss_at, norm

    sharpness = float(loss_at(model, {k: w[k] + eps[k] for k in w}, x, y) - loss_at(model, w, x, y))
    assert sharpness > 0
    assert abs(float(stats["sharpness"]) - sharpness) < 1e-6  # logged in float32
    assert abs(float(stats["norm"]) - 0.5) < 1e-9
    assert abs(float(stats["grad_norm"]) - norm(g.values())) < 1e-9
    assert abs(float(stats["grad_norm_perturbed"]) - norm(descent_grad(model, w, eps, x, y).values())) < 1e-9


@pytest.mark.parametrize(
    ("preset", "options"),
    [("sam", {}), ("adversarial_model_perturbation", {"inner_steps": 3}), ("awp", {}), ("asam", {})],
)
def test_cosine_reuses_the_ascent_norm_of_the_whole_perturbation(monkeypatch, preset, options):
    """The engine passes its ``norm`` statistic as ``|delta|`` and the perturbation it kept as ``delta``: they must be
    the norm of w + delta - w and w + delta - w after the last inner step (the whole perturbation, not the last
    increment); the cosine equals the one computed from scratch."""
    from lightning_losses.perturbation import step_phases

    seen = {}
    original = step_phases.F.delta_grad_statistics

    def spy(shards, saved, grads, shard_sum=None, delta_norm=None, delta=None):
        assert delta is not None  # kept: no subtraction
        for x, s, d in zip(shards, saved, delta):
            torch.testing.assert_close(d, x - s, rtol=1e-12, atol=1e-15)
        seen["scratch"] = original(shards, saved, grads, shard_sum)
        seen["reused"] = original(shards, saved, grads, shard_sum, delta_norm=delta_norm, delta=delta)
        return seen["reused"]

    monkeypatch.setattr(step_phases.F, "delta_grad_statistics", spy)
    model = tiny_model()
    x, y = tiny_batch()
    engine = build_perturbation(preset, **options)
    perturbed_backward(engine, model, lambda: nn.functional.cross_entropy(model(x), y))
    torch.testing.assert_close(seen["reused"], seen["scratch"], rtol=1e-9, atol=0)
    assert abs(float(seen["scratch"][0])) < 0.999  # a cosine that tells
    assert float(engine.last_stats["cos_delta_grad"]) == float(seen["scratch"][0])
    # |g_p| over the perturbed tensors (AWP: the weights only), from the cosine's sums
    perturbed = [p.grad for n, p in model.named_parameters() if preset != "awp" or n.endswith("weight")]
    torch.testing.assert_close(engine.last_stats["grad_norm_perturbed"], F.global_norm(perturbed), rtol=1e-12, atol=0)


def test_cosine_with_gradients_zeroed_in_place_falls_back_to_the_subtraction(monkeypatch):
    """The kept perturbation lives in the ascent gradient's storage: a ``zero_grad`` that zeroes in place (or DDP's
    bucket views) gives that storage to the descent gradient, and the cosine is then computed from w + delta - w; so
    it is for a model above ``KEEP_DELTA_NUMEL`` elements."""
    from lightning_losses.perturbation import step_phases

    seen = {}
    original = step_phases.F.delta_grad_statistics

    def spy(shards, saved, grads, shard_sum=None, delta_norm=None, delta=None):
        seen["delta"] = delta
        seen["scratch"] = original(shards, saved, grads, shard_sum)
        return original(shards, saved, grads, shard_sum, delta_norm=delta_norm, delta=delta)

    monkeypatch.setattr(step_phases.F, "delta_grad_statistics", spy)
    model = tiny_model()
    x, y = tiny_batch()
    engine = build_perturbation("sam", rho=0.5)

    def zero_grad():
        for p in model.parameters():
            p.grad.zero_()

    perturbed_backward(engine, model, lambda: nn.functional.cross_entropy(model(x), y), zero_grad=zero_grad)
    assert seen["delta"] is None  # the storage was taken back: not used
    assert float(engine.last_stats["cos_delta_grad"]) == float(seen["scratch"][0])
    assert abs(float(seen["scratch"][0])) < 0.999
    monkeypatch.setattr(step_phases, "KEEP_DELTA_NUMEL", sum(p.numel() for p in model.parameters()) - 1)
    perturbed_backward(engine, model, lambda: nn.functional.cross_entropy(model(x), y))
    assert seen["delta"] is None  # a larger model: no parameter-sized buffer more, the subtraction
    monkeypatch.setattr(step_phases, "KEEP_DELTA_NUMEL", sum(p.numel() for p in model.parameters()))
    perturbed_backward(engine, model, lambda: nn.functional.cross_entropy(model(x), y))
    assert seen["delta"] is not None


def test_restore_is_exact_in_bfloat16():
    # w + e - e != w in bfloat16: a subtraction-based restore would move the weights
    model = tiny_model(dtype=torch.bfloat16)
    x, y = tiny_batch(dtype=torch.bfloat16)
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        drift = [(p + 0.37 * p.abs().max()) - 0.37 * p.abs().max() for p in model.parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(drift, before))
    perturbed_backward(build_perturbation("sam", rho=0.37), model, lambda: nn.functional.cross_entropy(model(x), y))
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before))


@pytest.mark.parametrize(
    ("preset", "options", "syncs"), [("sam", {}, 1), ("adversarial_model_perturbation", {"inner_steps": 3}, 3)]
)
def test_one_host_sync_per_ascent_step(monkeypatch, preset, options, syncs):
    """The finiteness check of each ascent step is the only host sync of a perturbed step (statistics included)."""
    model = tiny_model()
    x, y = tiny_batch()
    engine = build_perturbation(preset, **options)
    count = {"n": 0}
    for name in ("__bool__", "item", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            count["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    perturbed_backward(engine, model, lambda: nn.functional.cross_entropy(model(x), y))
    monkeypatch.undo()
    assert engine.perturbed_steps == 1 and count["n"] == syncs
