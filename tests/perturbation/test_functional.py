"""Pure transforms against explicit per-element formulas (float64)."""

import pytest
import torch

from lightning_losses.perturbation import functional as F

from ._reference import asam_eps, asam_p2_eps, awp_eps, norm, sam_eps


def _tensors(seed, shapes=((3, 4), (4,), (2, 3))):
    g = torch.Generator().manual_seed(seed)
    return {
        f"l{i}.{'weight' if len(s) > 1 else 'bias'}": torch.randn(*s, generator=g, dtype=torch.float64)
        for i, s in enumerate(shapes)
    }


def _close(a, b, rtol=1e-9):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=1e-12)


def test_sam_epsilon_formula_and_norm():
    g = _tensors(0)
    out = F.sam_epsilon(list(g.values()), rho=0.05)
    _close(out, list(sam_eps(g, 0.05).values()))
    assert abs(norm(out) - 0.05) < 1e-12


def test_asam_authors_formula_scales_only_weights():
    g, w = _tensors(0), _tensors(1)
    mask = ["weight" in k for k in g]
    out = F.asam_epsilon(list(g.values()), list(w.values()), rho=0.5, eta=0.01, scale_mask=mask)
    _close(out, list(asam_eps(g, w, 0.5, 0.01).values()))


def test_asam_p2_formula_and_zero_weights_never_move():
    g, w = _tensors(0), _tensors(1)
    w["l0.weight"][0, 0] = 0.0
    out = F.asam_p2_epsilon(list(g.values()), list(w.values()), rho=2.0)
    _close(out, list(asam_p2_eps(g, w, 2.0).values()))
    assert out[0][0, 0] == 0
    # the two ASAM variants are different methods
    authors = F.asam_epsilon(list(g.values()), list(w.values()), rho=2.0, eta=0.01)
    assert not torch.allclose(authors[0], out[0])


def test_awp_layer_relative_radius():
    g, w = _tensors(0), _tensors(1)
    out = F.awp_perturbation(list(g.values()), list(w.values()), gamma=5e-3)
    ref = awp_eps(g, w, 5e-3)
    # the pure function perturbs every tensor it is given (selection of weight matrices is the engine's job)
    for k, r in zip(g, out):
        expected = 5e-3 * w[k].norm() * g[k] / g[k].norm()
        torch.testing.assert_close(r, expected)
        if k.endswith("weight"):
            torch.testing.assert_close(r, ref[k])


def test_amp_inner_step_clips_per_tensor():
    g = _tensors(0)
    grads = list(g.values())
    small = F.adversarial_model_perturbation_delta(None, grads, epsilon=100.0, inner_lr=0.1)
    _close(small, [0.1 * t for t in grads])  # inside the ball: a plain ascent step
    big = F.adversarial_model_perturbation_delta(small, grads, epsilon=0.5, inner_lr=1.0)
    for d, t, s in zip(big, grads, small):
        raw = s + t
        torch.testing.assert_close(d, raw * min(1.0, 0.5 / (float(raw.norm()) + 1e-12)))


def test_multi_step_normalise_stays_in_ball():
    g = _tensors(0)
    d = None
    for _ in range(3):
        d = F.ascent_step(d, list(g.values()), list(g.values()), radius=0.1, step_size=1 / 3)
    assert norm(d) <= 0.1 + 1e-12
    _close(d, list(sam_eps(g, 0.1).values()), rtol=1e-9)  # same direction three times: lands on SAM's epsilon


def test_looksam_orthogonal_and_extrapolate():
    g, gs = list(_tensors(0).values()), list(_tensors(1).values())
    gv = F.looksam_orthogonal(g, gs)
    dot = sum(float((a * b).sum()) for a, b in zip(gv, g))
    assert abs(dot) < 1e-10
    out = F.looksam_extrapolate(g, gv, alpha=0.7)
    factor = 0.7 * norm(g) / norm(gv)
    _close(out, [a + factor * b for a, b in zip(g, gv)])


def test_bad_rule_and_scaling():
    t = [torch.ones(2)]
    with pytest.raises(ValueError, match="`rule` must be one of"):
        F.ascent_step(None, t, t, rule="bogus")
    with pytest.raises(ValueError, match="`scaling` must be one of"):
        F.scaling_factors(t, "bogus")


def test_empty_inputs():
    assert F.ascent_step(None, [], []) == []
    assert float(F.global_norm([])) == 0.0


_CONFIGS = {
    "sam": {"radius": 0.05},
    "asam": {"radius": 0.5, "scaling": "adaptive", "eta": 0.01, "scale_mask": [True, False, True]},
    "asam_p2": {"radius": 2.0, "scaling": "adaptive_p2"},
    "adversarial_model_perturbation": {"rule": "clip", "radius_mode": "per_tensor", "radius": 0.3, "step_size": 0.7},
    "amp_global_clip": {"rule": "clip", "radius": 0.2, "step_size": 1.0},
    "awp": {"radius_mode": "layer_relative", "radius": 5e-3},
    "sam_3_inner": {"radius": 0.1, "step_size": 1 / 3},
}


@pytest.mark.parametrize("name", list(_CONFIGS))
@pytest.mark.parametrize("with_delta", [False, True])
def test_inplace_and_known_norms_equal_the_pure_step(name, with_delta):
    """`inplace=True` writes the step into the gradients (and `delta`), `grad_norms` skips a pass: same result."""
    kwargs = _CONFIGS[name]
    grads, params = list(_tensors(0).values()), list(_tensors(1).values())
    delta = list(_tensors(2).values()) if with_delta else None
    expected = F.ascent_step(delta, grads, params, **kwargs)
    grads_before = [g.clone() for g in grads]
    _close(grads, grads_before)  # the pure call left its inputs alone
    work = [g.clone() for g in grads]
    work_delta = None if delta is None else [d.clone() for d in delta]
    out = F.ascent_step(work_delta, work, params, grad_norms=F.tensor_norms(grads), inplace=True, **kwargs)
    _close(out, expected, rtol=1e-12)
    owner = work if delta is None else work_delta  # the result lives in the caller's storage
    assert all(o.data_ptr() == w.data_ptr() for o, w in zip(out, owner))


def test_a_new_ascent_rule_is_one_table_entry(monkeypatch):
    """A rule added to ``ASCENT_RULES`` alone is accepted by the engine and used by ``ascent_step``."""
    import lightning_losses as ll

    def sign_rule(direction, scale, radii, step_size, mode, eps, inplace, known):
        return [radii.to(d.dtype) * step_size * torch.sign(d) for d in direction], None

    monkeypatch.setitem(F.ASCENT_RULES, "sign", F.AscentRule(sign_rule, on_sphere=False, step_size=lambda lr, n: lr))
    delta = F.ascent_step(None, [torch.tensor([3.0, -4.0])], [torch.zeros(2)], rule="sign", radius_mode="per_tensor",
                          radius=10.0, step_size=0.5)  # fmt: skip
    assert torch.allclose(delta[0], torch.tensor([5.0, -5.0]))  # step (5, -5) has norm 7.07 < 10: not projected
    model = torch.nn.Linear(2, 1)
    engine = ll.Perturbation(rule="sign", radius_mode="per_tensor", radius=0.1, inner_lr=0.5)
    ll.perturbed_backward(engine, model, lambda: model(torch.ones(1, 2)).sum())
    assert engine.perturbed_steps == 1 and float(engine.last_stats["norm"]) > 0
    with pytest.raises(ValueError, match=r"`rule` must be one of \('normalise', 'clip', 'sign'\), got 'x'"):
        F.ascent_step(None, [torch.ones(1)], [torch.ones(1)], rule="x")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_delta_grad_statistics_equal_an_explicit_float64_loop(dtype):
    """Cosine and gradient norm over the tensors that have a gradient, with ``|delta|`` computed or passed in."""
    gen = torch.Generator().manual_seed(0)
    saved = [torch.randn(4, 3, generator=gen).to(dtype), torch.randn(5, generator=gen).to(dtype), torch.randn(2)]
    shards = [s + 0.1 * torch.randn(s.shape, generator=gen).to(s.dtype) for s in saved]
    grads = [torch.randn(4, 3, generator=gen).to(dtype), torch.randn(5, generator=gen).to(dtype), None]
    dot = dd = gg = 0.0
    for x, s, g in zip(shards[:2], saved[:2], grads[:2]):  # the third tensor has no gradient: left out
        for d, gi in zip((x.double() - s.double()).flatten().tolist(), g.double().flatten().tolist()):
            dot, dd, gg = dot + d * gi, dd + d * d, gg + gi * gi
    tol = {"rtol": 1e-12, "atol": 0} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    cos, norm_g = F.delta_grad_statistics(shards, saved, grads)
    assert cos.dtype == torch.float32
    assert norm_g.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    expected = torch.tensor(dot / (dd * gg) ** 0.5, dtype=torch.float64)
    torch.testing.assert_close(cos.double(), expected, rtol=1e-6, atol=0)
    torch.testing.assert_close(norm_g.double(), torch.tensor(gg**0.5, dtype=torch.float64), **tol)
    # the engine passes |delta| (its `norm` statistic) and only the dot products are summed
    given, _ = F.delta_grad_statistics(shards, saved, grads, delta_norm=torch.tensor(dd**0.5))
    torch.testing.assert_close(given, cos, rtol=1e-6, atol=0)
    assert float(F.delta_grad_cosine(shards, saved, grads)) == float(cos)
    assert all(v.isnan() for v in F.delta_grad_statistics(shards, saved, [None, None, None]))
