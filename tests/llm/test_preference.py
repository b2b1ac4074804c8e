"""Preference / unlearning losses on sequence log-probs against explicit references (scalar math in float64)."""

import math

import pytest
import torch
import torch.nn.functional as F

import lightning_losses as ll
from lightning_losses import functional as LF
from lightning_losses.distributed import rank
from lightning_losses.errors import ConfigurationError
from lightning_losses.objective import Objective

PAIRED = ("dpo", "ipo", "rdpo", "rpo", "hdpo")


def _logsig(z: float) -> float:  # stable log(sigmoid(z)) in plain Python
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def _sig(z: float) -> float:
    return math.exp(_logsig(z))


def _pairs(n=7, seed=0, scale=3.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    c, r, rc, rr = (-(torch.rand(n, generator=g, dtype=dtype) * scale * 10) for _ in range(4))
    return c.requires_grad_(True), r.requires_grad_(True), rc, rr


def _margins(c, r, rc, rr, alpha=1.0):
    return [(alpha * a - b) - (alpha * x - y) for a, x, b, y in zip(c.tolist(), r.tolist(), rc.tolist(), rr.tolist())]


# ------------------------------------------------------------------------------------------- explicit references


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_dpo_cdpo_rdpo_ipo_hdpo_match_explicit_formulas(beta, eps):
    c, r, rc, rr = _pairs()
    deltas = _margins(c, r, rc, rr)
    kw = dict(chosen_logps=c, rejected_logps=r, ref_chosen_logps=rc, ref_rejected_logps=rr)
    cdpo = ll.build_loss("dpo", beta=beta, label_smoothing=eps)(**kw)
    ref = [-(1 - eps) * _logsig(beta * d) - eps * _logsig(-beta * d) for d in deltas]
    torch.testing.assert_close(cdpo, torch.tensor(ref, dtype=torch.float64))
    # the peer formulation: cDPO is BCE-with-logits on beta*delta with soft target 1 - eps
    z = beta * (c - rc - r + rr)
    peer = F.binary_cross_entropy_with_logits(z, torch.full_like(z, 1 - eps), reduction="none")
    torch.testing.assert_close(cdpo, peer)

    robust = ll.build_loss("rdpo", beta=beta, eps=eps)(**kw)
    ref = [((1 - eps) * -_logsig(beta * d) + eps * _logsig(-beta * d)) / (1 - 2 * eps) for d in deltas]
    torch.testing.assert_close(robust, torch.tensor(ref, dtype=torch.float64))

    out = ll.build_loss("ipo", beta=beta)(**kw)
    torch.testing.assert_close(out, torch.tensor([(d - 1 / (2 * beta)) ** 2 for d in deltas], dtype=torch.float64))

    alpha = 0.8
    out = ll.build_loss("hdpo", beta=beta, alpha=alpha)(**kw)
    ref = [-_logsig(beta * d) for d in _margins(c, r, rc, rr, alpha)]
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64))


def test_rdpo_is_unbiased_under_label_flips():
    """E_flip[rdpo] over flips at rate eps equals clean DPO (the defining property of Chowdhury et al.)."""
    c, r, rc, rr = _pairs()
    eps = 0.25
    clean = LF.dpo(c, r, rc, rr, beta=0.5)
    kept = LF.rdpo(c, r, rc, rr, beta=0.5, eps=eps)
    flipped = LF.rdpo(r, c, rr, rc, beta=0.5, eps=eps)
    torch.testing.assert_close((1 - eps) * kept + eps * flipped, clean)


def test_special_cases_reduce_to_dpo():
    c, r, rc, rr = _pairs()
    base = LF.dpo(c, r, rc, rr, beta=0.3)
    torch.testing.assert_close(LF.dpo(c, r, rc, rr, beta=0.3, label_smoothing=0.0), base)
    torch.testing.assert_close(LF.rdpo(c, r, rc, rr, beta=0.3, eps=0.0), base)
    torch.testing.assert_close(LF.hdpo(c, r, rc, rr, beta=0.3, alpha=1.0), base)
    torch.testing.assert_close(LF.rpo(c, r, rc, rr, beta=0.3, alpha=0.0, sft_reduction="sum"), base)


def test_rpo_sft_term_sum_and_mean():
    c, r, rc, rr = _pairs()
    lengths = torch.tensor([1, 2, 3, 4, 5, 6, 7])
    base = LF.dpo(c, r, rc, rr, beta=0.1)
    out = ll.build_loss("rpo", alpha=0.5)(
        chosen_logps=c, rejected_logps=r, ref_chosen_logps=rc, ref_rejected_logps=rr, chosen_lengths=lengths
    )
    ref = [b - 0.5 * x / n for b, x, n in zip(base.tolist(), c.tolist(), lengths.tolist())]
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64))
    out = ll.build_loss("rpo", alpha=0.5, sft_reduction="sum")(
        chosen_logps=c, rejected_logps=r, ref_chosen_logps=rc, ref_rejected_logps=rr
    )
    torch.testing.assert_close(out, base - 0.5 * c)


def test_simpo_explicit_and_length_one():
    c, r, _, _ = _pairs()
    lc, lr = torch.tensor([1, 3, 5, 2, 8, 1, 4]), torch.tensor([2, 1, 5, 9, 3, 1, 6])
    out = ll.build_loss("simpo", beta=2.5, gamma=1.4)(
        chosen_logps=c, rejected_logps=r, chosen_lengths=lc, rejected_lengths=lr
    )
    ref = [
        -_logsig(2.5 * a / m - 2.5 * b / n - 1.4)
        for a, b, m, n in zip(c.tolist(), r.tolist(), lc.tolist(), lr.tolist())
    ]
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64))
    # length-1 answers: the average is the sum, so SimPO is DPO without reference, shifted by gamma
    ones = torch.ones(7, dtype=torch.long)
    out = LF.simpo(c, r, ones, ones, beta=2.0, gamma=0.0)
    torch.testing.assert_close(out, -F.logsigmoid(2.0 * (c - r)))


def test_kto_explicit_and_reference_point():
    g = torch.Generator().manual_seed(3)
    lp = (-torch.rand(8, generator=g, dtype=torch.float64) * 20).requires_grad_(True)
    ref = -torch.rand(8, generator=g, dtype=torch.float64) * 20
    kl_lp = (-torch.rand(8, generator=g, dtype=torch.float64) * 20).requires_grad_(True)
    kl_ref = -torch.rand(8, generator=g, dtype=torch.float64) * 20
    target = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    loss = ll.build_loss("kto", beta=0.2, desirable_weight=1.5, undesirable_weight=0.7)
    out = loss(logps=lp, ref_logps=ref, target=target, kl_logps=kl_lp, ref_kl_logps=kl_ref)
    z = max(0.0, sum(a - b for a, b in zip(kl_lp.tolist(), kl_ref.tolist())) / 8)
    expected = []
    for x, y, t in zip(lp.tolist(), ref.tolist(), target.tolist()):
        rr = x - y
        expected.append(1.5 * (1 - _sig(0.2 * (rr - z))) if t else 0.7 * (1 - _sig(0.2 * (z - rr))))
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))
    out.sum().backward()
    assert kl_lp.grad is None and lp.grad is not None  # the reference point is detached
    # negative KL estimates are clamped to 0; bool targets work; z_ref given directly wins
    z0 = LF.kto_reference_kl(kl_ref, kl_ref + 1.0)
    assert float(z0) == 0.0
    a = loss(logps=lp, ref_logps=ref, target=target.bool(), z_ref=0.0)
    b = loss(logps=lp, ref_logps=ref, target=target, kl_logps=kl_ref, ref_kl_logps=kl_ref + 1.0)
    torch.testing.assert_close(a, b)


def test_npo_explicit_and_gradient_ascent_limit():
    lp = torch.tensor([-30.0, -3.0, -1.0, -0.1], dtype=torch.float64, requires_grad=True)
    ref = torch.tensor([-20.0, -3.0, -4.0, -0.5], dtype=torch.float64)
    for beta in (0.1, 1.0, 1e-4):
        out = ll.build_loss("npo", beta=beta)(logps=lp, ref_logps=ref)
        expected = [(2 / beta) * math.log1p(math.exp(beta * (x - y))) for x, y in zip(lp.tolist(), ref.tolist())]
        torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))
        (grad,) = torch.autograd.grad(out.sum(), lp)
        # d/dlogp = 2 sigmoid(beta r): in (0, 2); -> 1 (plain gradient ascent on the NLL) as beta -> 0
        torch.testing.assert_close(grad, 2 * torch.sigmoid(beta * (lp - ref)).detach())
    torch.testing.assert_close(grad, torch.ones(4, dtype=torch.float64), atol=2e-3, rtol=0)


def test_ties_give_log2_and_half_gradient():
    x = torch.full((3,), -5.0, dtype=torch.float64, requires_grad=True)
    out = LF.dpo(x, x.detach().clone().requires_grad_(True), x.detach(), x.detach(), beta=0.4)
    torch.testing.assert_close(out, torch.full((3,), math.log(2.0), dtype=torch.float64))
    (g,) = torch.autograd.grad(out.sum(), x)
    torch.testing.assert_close(g, torch.full((3,), -0.2, dtype=torch.float64))  # -beta * sigmoid(0)


# ------------------------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", PAIRED + ("simpo",))
def test_extreme_margins_are_finite_with_saturated_gradients(name, dtype):
    big = torch.tensor([-1e4, -1.0, -5e3, -2e4], dtype=dtype)
    c = big.clone().requires_grad_(True)
    r = big.flip(0).clone().requires_grad_(True)
    zeros = torch.zeros(4, dtype=dtype)
    loss = ll.build_loss(name)
    if name == "simpo":
        ones = torch.ones(4, dtype=torch.long)
        out = loss(chosen_logps=c, rejected_logps=r, chosen_lengths=ones, rejected_lengths=ones)
    else:
        kw = {"chosen_lengths": torch.ones(4, dtype=torch.long)} if name == "rpo" else {}
        out = loss(chosen_logps=c, rejected_logps=r, ref_chosen_logps=zeros, ref_rejected_logps=zeros, **kw)
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(c.grad).all() and torch.isfinite(r.grad).all()
    if name == "dpo":
        # pair 3: margin -1e4, loss = |beta * delta| = 1000 and the gradient saturates at -beta; pair 0: margin +1e4
        torch.testing.assert_close(out[3], torch.tensor(1000.0, dtype=dtype))
        torch.testing.assert_close(c.grad[3], torch.tensor(-0.1, dtype=dtype))
        assert 0.0 <= float(out[0].detach()) < 1e-30 and abs(float(c.grad[0])) < 1e-30


def test_half_precision_is_upcast():
    x = torch.tensor([-100.0, -3.0], dtype=torch.bfloat16)
    out = LF.dpo(x, x.flip(0), x, x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", PAIRED + ("simpo", "kto", "npo"))
def test_gradcheck(name):
    c, r, rc, rr = _pairs(n=4, scale=0.5)
    loss = ll.build_loss(name)
    ones = torch.tensor([1, 2, 3, 1])
    kw = {"chosen_lengths": ones} if name == "rpo" else {}
    t = torch.tensor([1, 0, 0, 1])

    def fn(a, b):
        if name == "simpo":
            return loss(chosen_logps=a, rejected_logps=b, chosen_lengths=ones, rejected_lengths=ones + 1)
        if name == "kto":
            first = loss(logps=a, ref_logps=rc, target=t, kl_logps=b, ref_kl_logps=rr)
            return first + loss(logps=b, ref_logps=rr, target=t, z_ref=0.3)
        if name == "npo":
            return loss(logps=a, ref_logps=rc) + loss(logps=b, ref_logps=rr)
        return loss(chosen_logps=a, rejected_logps=b, ref_chosen_logps=rc, ref_rejected_logps=rr, **kw)

    assert torch.autograd.gradcheck(fn, (c, r))


def test_wpo_log_weights_explicit():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([[1, 2, -100, -100], [0, 0, 4, 3], [2, -100, -100, -100]])
    p = torch.softmax(logits, -1)
    for alignment in ("sampled", "greedy", "none"):
        out = LF.wpo_log_weights(logits, labels, alignment=alignment)
        for i in range(3):
            terms = []
            for t in range(4):
                y = int(labels[i, t])
                if y == -100:
                    continue
                z = {"sampled": float((p[i, t] ** 2).sum()), "greedy": float(p[i, t].max()), "none": 1.0}[alignment]
                terms.append(math.log(float(p[i, t, y]) / z))
            assert math.isclose(float(out[i]), sum(terms) / len(terms), rel_tol=1e-10)
    assert not LF.wpo_log_weights(logits.requires_grad_(True), labels).requires_grad


# ------------------------------------------------------------------------------------------- objective, DDP


def test_objective_and_mixin_inputs():
    c, r, rc, rr = _pairs()
    obj = Objective({"dpo": {"beta": 0.1}, "sft": {"loss": "rpo", "alpha": 1.0, "sft_reduction": "sum"}})
    out = obj({"chosen_logps": c, "rejected_logps": r, "ref_chosen_logps": rc, "ref_rejected_logps": rr})
    expected = (2 * LF.dpo(c, r, rc, rr) - c).mean()
    torch.testing.assert_close(out.value, expected.detach())


def _kto_rank(parts):
    lp, ref, target, kl, kl_ref = (t[rank()] for t in parts)
    lp = lp.clone().requires_grad_(True)
    out = ll.build_loss("kto", beta=0.5)(logps=lp, ref_logps=ref, target=target, kl_logps=kl, ref_kl_logps=kl_ref)
    out.sum().backward()
    return out.detach(), lp.grad


def test_kto_reference_point_is_global_under_ddp(ddp):
    g = torch.Generator().manual_seed(1)
    sizes = (3, 6)  # uneven per-rank batches: a mean of per-rank means would differ from the global mean

    def split(t):
        return [t[: sizes[0]], t[sizes[0] :]]

    lp, ref = (-torch.rand(9, generator=g, dtype=torch.float64) * 10 for _ in range(2))
    kl = -torch.rand(9, generator=g, dtype=torch.float64) * 10
    kl_ref = kl - torch.rand(9, generator=g, dtype=torch.float64) * torch.linspace(0, 4, 9, dtype=torch.float64)
    target = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0, 1])
    results = ddp.run(_kto_rank, [split(t) for t in (lp, ref, target, kl, kl_ref)])
    one = lp.clone().requires_grad_(True)
    expected = ll.build_loss("kto", beta=0.5)(logps=one, ref_logps=ref, target=target, kl_logps=kl, ref_kl_logps=kl_ref)
    expected.sum().backward()
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), expected.detach())
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), one.grad)


# ------------------------------------------------------------------------------------------- errors


def test_constructor_errors():
    with pytest.raises(ConfigurationError, match=r"`beta` must be > 0.0, got 0"):
        ll.build_loss("dpo", beta=0)
    with pytest.raises(ConfigurationError, match=r"`label_smoothing` must be in \[0.0, 0.5\], got 0.7"):
        ll.build_loss("dpo", label_smoothing=0.7)
    with pytest.raises(ConfigurationError, match=r"`eps` must be in \[0.0, 0.5\), got 0.5"):
        ll.build_loss("rdpo", eps=0.5)
    with pytest.raises(ConfigurationError, match=r"`alpha` must be > 0.0, got -1"):
        ll.build_loss("hdpo", alpha=-1)
    with pytest.raises(ConfigurationError, match=r"`sft_reduction` must be one of `mean`, `sum`, got 'avg'"):
        ll.build_loss("rpo", sft_reduction="avg")
    with pytest.raises(ConfigurationError, match=r"`gamma` must be >= 0.0, got -0.5"):
        ll.build_loss("simpo", gamma=-0.5)
    with pytest.raises(ConfigurationError, match=r"`undesirable_weight` must be > 0.0, got 0"):
        ll.build_loss("kto", undesirable_weight=0)


def test_input_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"`rejected_logps` must have the shape of `chosen_logps` \[3\], got \[2\]"):
        LF.dpo(x, torch.zeros(2), x, x)
    with pytest.raises(ValueError, match=r"`chosen_logps` must be a 1-D tensor \[N\]"):
        LF.dpo(torch.zeros(3, 2), x, x, x)
    with pytest.raises(ValueError, match=r"`ref_chosen_logps` must be a floating tensor, got torch.int64"):
        LF.dpo(x, x, torch.zeros(3, dtype=torch.long), x)
    with pytest.raises(TypeError, match=r"`chosen_logps` must be a torch.Tensor, got list"):
        LF.dpo([0.0], x, x, x)
    with pytest.raises(ValueError, match=r"`chosen_lengths` \[N\] .* is required"):
        ll.build_loss("rpo")(chosen_logps=x, rejected_logps=x, ref_chosen_logps=x, ref_rejected_logps=x)
    with pytest.raises(ValueError, match=r"`chosen_lengths` must have shape \[3\], got \[2\]"):
        LF.rpo(x, x, x, x, torch.ones(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`kto` needs its reference point"):
        ll.build_loss("kto")(logps=x, ref_logps=x, target=torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"`target` must be an integer or bool tensor of shape \[3\]"):
        LF.kto(x, x, torch.ones(3), 0.0)
    with pytest.raises(ValueError, match=r"`alignment` must be one of"):
        LF.wpo_log_weights(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long), alignment="max")
    with pytest.raises(ValueError, match=r"`logits` must be \[N, T, V\]"):
        LF.wpo_log_weights(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))


# ------------------------------------------------------------------------------------------- WPO pair weights


def test_wpo_weights_explicit_and_in_the_objective():
    g = torch.Generator().manual_seed(2)
    cw, rw = -torch.rand(6, generator=g, dtype=torch.float64), -torch.rand(6, generator=g, dtype=torch.float64)
    cw[0] = 0.4  # an above-1 weight is clamped at 1 (TRL's use_weighting)
    reweighter = ll.build_reweighter("wpo")
    weights = reweighter(losses=torch.ones(6, dtype=torch.float64), chosen_logw=cw, rejected_logw=rw)
    raw = [min(math.exp(a + b), 1.0) for a, b in zip(cw.tolist(), rw.tolist())]
    torch.testing.assert_close(weights, torch.tensor([6 * w / sum(raw) for w in raw], dtype=torch.float64))
    assert math.isclose(float(reweighter.log_values()["wpo_mean_weight"]), sum(raw) / 6)
    # unclamped; extremely improbable pairs do not underflow to 0/0
    free = ll.build_reweighter("wpo", max_weight=None)(losses=torch.ones(2), chosen_logw=torch.tensor([-900.0, -901.0]),
                                                      rejected_logw=torch.tensor([-900.0, -900.0]))  # fmt: skip
    torch.testing.assert_close(free, torch.tensor([2 / (1 + math.exp(-1)), 2 * math.exp(-1) / (1 + math.exp(-1))]))
    # in the objective: loss = sum(w * dpo) / sum(w), i.e. TRL's mean(w * dpo) / mean(w)
    c, r, rc, rr = _pairs(n=6)
    out = Objective({"dpo": {}})(
        {"chosen_logps": c, "rejected_logps": r, "ref_chosen_logps": rc, "ref_rejected_logps": rr,
         "chosen_logw": cw, "rejected_logw": rw},
        reweighter=ll.build_reweighter("wpo"),
    )  # fmt: skip
    raw_t = torch.tensor(raw, dtype=torch.float64)
    torch.testing.assert_close(out.value, ((raw_t * LF.dpo(c, r, rc, rr)).mean() / raw_t.mean()).detach())


def _wpo_rank(cw, rw):
    sl = slice(0, 2) if rank() == 0 else slice(2, 7)
    return ll.build_reweighter("wpo")(losses=torch.ones(cw[sl].numel()), chosen_logw=cw[sl], rejected_logw=rw[sl])


def test_wpo_ddp_equals_one_process(ddp):
    g = torch.Generator().manual_seed(4)
    cw, rw = -torch.rand(7, generator=g) * 3, -torch.rand(7, generator=g) * 3
    w0, w1 = ddp.run(_wpo_rank, cw, rw)
    single = ll.build_reweighter("wpo")(losses=torch.ones(7), chosen_logw=cw, rejected_logw=rw)
    torch.testing.assert_close(torch.cat([w0, w1]), single)


def test_wpo_errors():
    with pytest.raises(ConfigurationError, match=r"`max_weight` must be > 0.0, got 0"):
        ll.build_reweighter("wpo", max_weight=0)
    with pytest.raises(ValueError, match=r"reweighter `wpo` needs `rejected_logw` in compute_loss"):
        ll.build_reweighter("wpo")(losses=torch.ones(2), chosen_logw=torch.zeros(2))
    with pytest.raises(
        ValueError, match=r"`chosen_logw` must be a floating tensor of shape \[2\], got torch.float32 \[3\]"
    ):
        ll.build_reweighter("wpo")(losses=torch.ones(2), chosen_logw=torch.zeros(3), rejected_logw=torch.zeros(2))


def test_wpo_log_weights_take_narrow_integer_labels_without_wrapping_ignore_index():
    from lightning_losses.functional.preference import wpo_log_weights

    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[0, 1, 4], [4, 2, 3]])
    expected = wpo_log_weights(logits, labels)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(wpo_log_weights(logits, labels.to(dtype)), expected)
    ignored = labels.clone()
    ignored[0, 2] = 255
    torch.testing.assert_close(
        wpo_log_weights(logits, ignored.to(torch.uint8), ignore_index=255),
        wpo_log_weights(logits, ignored, ignore_index=255),
    )
