"""TRL's further preference loss types against explicit float64 loops of TRL 1.16's formulas (scalar Python math),
f-divergence DPO, AOT over the global batch in 2-process DDP, and the reference-free losses."""

import math

import pytest
import torch

import lightning_losses as ll
from lightning_losses import functional as LF
from lightning_losses.distributed import rank
from lightning_losses.errors import ConfigurationError
from lightning_losses.objective import Objective


def _logsig(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def _sig(z: float) -> float:
    return math.exp(_logsig(z))


def _pairs(n=7, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    c, r, rc, rr = (-(torch.rand(n, generator=g, dtype=torch.float64) * scale * 10) for _ in range(4))
    return c.requires_grad_(True), r.requires_grad_(True), rc, rr


def _ratios(c, r, rc, rr):
    return [a - b for a, b in zip(c.tolist(), rc.tolist())], [a - b for a, b in zip(r.tolist(), rr.tolist())]


def _score(x: float, divergence: str, f_alpha: float = 0.5) -> float:  # TRL 1.16 `_compute_loss` scores
    if divergence == "reverse_kl":
        return x
    if divergence == "forward_kl":
        return 1 - math.exp(-x)
    if divergence == "js_divergence":
        return math.log(2) + _logsig(x)
    return (math.exp((f_alpha - 1) * x) - 1) / (f_alpha - 1)


def _deltas(c, r, rc, rr, divergence="reverse_kl", f_alpha=0.5):
    rw, rl = _ratios(c, r, rc, rr)
    return [_score(a, divergence, f_alpha) - _score(b, divergence, f_alpha) for a, b in zip(rw, rl)]


def _kw(c, r, rc, rr):
    return dict(chosen_logps=c, rejected_logps=r, ref_chosen_logps=rc, ref_rejected_logps=rr)


def _close(out, ref):
    torch.testing.assert_close(out, torch.tensor(ref, dtype=torch.float64), rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------- explicit references


@pytest.mark.parametrize("divergence", ["reverse_kl", "forward_kl", "js_divergence", "alpha_divergence"])
@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_margin_losses_with_every_divergence_match_trl_formulas(divergence, beta):
    c, r, rc, rr = _pairs(scale=0.3)  # log-ratios within a few units: forward_kl's exp(-x) stays moderate
    d = _deltas(c, r, rc, rr, divergence, 0.3)
    eps, tau = 0.2, 0.05
    opts = {"divergence": divergence, "f_alpha": 0.3}
    inputs = _kw(c, r, rc, rr)
    _close(ll.build_loss("dpo", beta=beta, **opts)(**inputs), [-_logsig(beta * x) for x in d])
    _close(ll.build_loss("hinge", beta=beta, **opts)(**inputs), [max(0.0, 1 - beta * x) for x in d])
    _close(ll.build_loss("ipo", beta=beta, **opts)(**inputs), [(x - 1 / (2 * beta)) ** 2 for x in d])
    robust = [(-(1 - eps) * _logsig(beta * x) + eps * _logsig(-beta * x)) / (1 - 2 * eps) for x in d]
    _close(ll.build_loss("rdpo", beta=beta, eps=eps, **opts)(**inputs), robust)
    exo = [
        _sig(beta * x) * (_logsig(beta * x) - math.log(1 - eps))
        + _sig(-beta * x) * (_logsig(-beta * x) - math.log(eps))
        for x in d
    ]
    _close(ll.build_loss("exo_pair", beta=beta, label_smoothing=eps, **opts)(**inputs), exo)
    disco = []
    for x in d:
        z = beta * x
        m = _sig(z / tau)
        disco.append(-_logsig(z) * (1 - m) + math.exp(-z) * m)
    _close(ll.build_loss("discopop", beta=beta, tau=tau, **opts)(**inputs), disco)


@pytest.mark.parametrize("beta", [0.1, 0.7])
def test_single_term_losses_match_trl_formulas(beta):
    c, r, rc, rr = _pairs()
    rw, rl = _ratios(c, r, rc, rr)
    inputs = _kw(c, r, rc, rr)
    nca = [-_logsig(beta * a) - 0.5 * _logsig(-beta * a) - 0.5 * _logsig(-beta * b) for a, b in zip(rw, rl)]
    _close(ll.build_loss("nca_pair", beta=beta)(**inputs), nca)
    _close(
        ll.build_loss("bco_pair", beta=beta)(**inputs),
        [-_logsig(beta * a) - _logsig(-beta * b) for a, b in zip(rw, rl)],
    )
    sppo = [(a - 0.5 / beta) ** 2 + (b + 0.5 / beta) ** 2 for a, b in zip(rw, rl)]
    _close(ll.build_loss("sppo_hard", beta=beta)(**inputs), sppo)
    _close(
        ll.build_loss("apo_zero", beta=beta)(**inputs), [1 - _sig(beta * a) + _sig(beta * b) for a, b in zip(rw, rl)]
    )
    down = [_sig(beta * a) + 1 - _sig(beta * (a - b)) for a, b in zip(rw, rl)]
    _close(ll.build_loss("apo_down", beta=beta)(**inputs), down)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_aot_sorts_the_batch(eps):
    c, r, rc, rr = _pairs(n=9)
    beta = 0.4
    pol = sorted(a - b for a, b in zip(c.tolist(), r.tolist()))
    ref = sorted(a - b for a, b in zip(rc.tolist(), rr.tolist()))
    expected = [-(1 - eps) * _logsig(beta * (a - b)) - eps * _logsig(-beta * (a - b)) for a, b in zip(pol, ref)]
    _close(ll.build_loss("aot", beta=beta, label_smoothing=eps)(**_kw(c, r, rc, rr)), expected)
    rw, rl = _ratios(c, r, rc, rr)
    d = [a - b for a, b in zip(sorted(rw), sorted(rl))]
    expected = [-(1 - eps) * _logsig(beta * x) - eps * _logsig(-beta * x) for x in d]
    _close(ll.build_loss("aot_unpaired", beta=beta, label_smoothing=eps)(**_kw(c, r, rc, rr)), expected)


def test_apo_zero_unpaired_is_kto_at_reference_zero():
    g = torch.Generator().manual_seed(3)
    lp, ref = (-torch.rand(8, generator=g, dtype=torch.float64) * 20 for _ in range(2))
    target = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    out = ll.build_loss("apo_zero_unpaired", beta=0.3, desirable_weight=1.5, undesirable_weight=0.5)(
        logps=lp, ref_logps=ref, target=target
    )
    expected = [
        1.5 * (1 - _sig(0.3 * (a - b))) if t else 0.5 * _sig(0.3 * (a - b))
        for a, b, t in zip(lp.tolist(), ref.tolist(), target.tolist())
    ]
    _close(out, expected)
    kto = LF.kto(lp, ref, target, 0.0, beta=0.3, desirable_weight=1.5, undesirable_weight=0.5)
    torch.testing.assert_close(out, kto)


def test_reference_free_losses_match_trl_formulas():
    c, r, _, _ = _pairs(scale=1.0)
    lc, lr = torch.tensor([3, 1, 4, 1, 5, 9, 2]), torch.tensor([6, 5, 3, 5, 8, 9, 7])
    cl, rl = c.tolist(), r.tolist()
    wl = [a / n for a, n in zip(cl, lc.tolist())]
    ll_ = [b / n for b, n in zip(rl, lr.tolist())]
    # CPO (sigmoid, eps = 0.1) + cpo_alpha * per-sequence NLL
    cpo = [-0.9 * _logsig(0.2 * (a - b)) - 0.1 * _logsig(-0.2 * (a - b)) - 0.5 * w for a, b, w in zip(cl, rl, wl)]
    _close(
        ll.build_loss("cpo", beta=0.2, alpha=0.5, label_smoothing=0.1)(
            chosen_logps=c, rejected_logps=r, chosen_lengths=lc
        ),
        cpo,
    )

    # ORPO: log odds of the mean log-probs with log1mexp
    def logodds(x):
        return x - math.log(-math.expm1(x))

    orpo = [-w - 0.1 * _logsig(logodds(w) - logodds(lo)) for w, lo in zip(wl, ll_)]
    _close(ll.build_loss("orpo")(chosen_logps=c, rejected_logps=r, chosen_lengths=lc, rejected_lengths=lr), orpo)
    # AlphaPO: TRL's simpo logits (R_w - R_l) - gamma/beta with R = (1 - p^-alpha)/alpha, p = exp(mean log-prob)
    beta, gamma, alpha = 2.0, 1.0, 0.3
    rw_, rl_ = ((1 - math.exp(w) ** -alpha) / alpha for w in wl), ((1 - math.exp(x) ** -alpha) / alpha for x in ll_)
    alphapo = [-_logsig(beta * ((a - b) - gamma / beta)) for a, b in zip(rw_, rl_)]
    out = ll.build_loss("alphapo", beta=beta, gamma=gamma, alpha=alpha)(
        chosen_logps=c, rejected_logps=r, chosen_lengths=lc, rejected_lengths=lr
    )
    torch.testing.assert_close(out, torch.tensor(alphapo, dtype=torch.float64), rtol=1e-10, atol=1e-12)


def test_alphapo_at_alpha_zero_is_simpo_and_continuous():
    c, r, _, _ = _pairs()
    lc, lr = torch.tensor([3, 1, 4, 1, 5, 9, 2]), torch.tensor([6, 5, 3, 5, 8, 9, 7])
    simpo = LF.simpo(c, r, lc, lr, beta=2.0, gamma=0.5)
    torch.testing.assert_close(LF.alphapo(c, r, lc, lr, beta=2.0, gamma=0.5, alpha=0.0), simpo)
    torch.testing.assert_close(LF.alphapo(c, r, lc, lr, beta=2.0, gamma=0.5, alpha=1e-9), simpo, rtol=1e-7, atol=1e-7)


def test_cpo_and_orpo_nll_equal_trl_batch_token_mean_for_equal_lengths():
    """TRL adds one batch-level token-mean NLL; the per-sequence NLL averages to it when lengths are equal."""
    c, r, _, _ = _pairs(scale=1.0)
    n = torch.full((7,), 4)
    trl_nll = -c.sum() / n.sum()  # token mean over all chosen tokens
    base = LF.cpo(c, r, beta=0.1, alpha=0.0)
    torch.testing.assert_close(LF.cpo(c, r, n, beta=0.1, alpha=1.0).mean(), base.mean() + trl_nll)


def test_ld_sequence_logps_explicit():
    g = torch.Generator().manual_seed(5)
    lc, lr = torch.randn(3, 6, generator=g, dtype=torch.float64), torch.randn(3, 5, generator=g, dtype=torch.float64)
    mc = torch.tensor([[0, 1, 1, 1, 1, 0], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    mr = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    a = 0.3
    out_c, out_r = LF.ld_sequence_logps(lc, lr, mc, mr, ld_alpha=a)
    for i in range(3):
        shared = min(int(mc[i].sum()), int(mr[i].sum()))
        for lp, m, out in ((lc, mc, out_c), (lr, mr, out_r)):
            pos, total = 0, 0.0
            for t in range(lp.shape[1]):
                if m[i, t]:
                    pos += 1
                    total += float(lp[i, t]) * (1.0 if pos <= shared else a)
            assert math.isclose(float(out[i]), total, rel_tol=1e-12, abs_tol=1e-12)
    plain_c, _ = LF.ld_sequence_logps(lc, lr, mc, mr, ld_alpha=1.0)
    torch.testing.assert_close(plain_c, (lc * mc).sum(-1))


# ------------------------------------------------------------------------------------------- numerics, gradients


def test_discopop_and_exo_are_finite_at_extreme_margins():
    big = torch.tensor([-1e4, 1e4, -300.0], dtype=torch.float32)
    c = big.clone().requires_grad_(True)
    zeros = torch.zeros(3)
    for name in ("discopop", "exo_pair", "hinge", "nca_pair", "apo_down", "aot"):
        out = ll.build_loss(name)(chosen_logps=c, rejected_logps=-big, ref_chosen_logps=zeros, ref_rejected_logps=zeros)
        (g,) = torch.autograd.grad(out.sum(), c)
        assert torch.isfinite(out).all() and torch.isfinite(g).all(), name


@pytest.mark.parametrize(
    "name", ["hinge", "exo_pair", "discopop", "nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "aot"]
)
def test_gradcheck(name):
    c, r, rc, rr = _pairs(n=4, scale=0.5)
    loss = ll.build_loss(name)
    assert torch.autograd.gradcheck(lambda a, b: loss(**_kw(a, b, rc, rr)), (c, r))


def test_gradcheck_reference_free():
    c, r, _, _ = _pairs(n=4, scale=0.5)
    n = torch.tensor([1, 2, 3, 1])
    for name in ("cpo", "orpo", "alphapo"):
        loss = ll.build_loss(name)
        extra = {"rejected_lengths": n + 1} if name != "cpo" else {}
        assert torch.autograd.gradcheck(
            lambda a, b, f=loss, e=extra: f(chosen_logps=a, rejected_logps=b, chosen_lengths=n, **e), (c, r)
        ), name


def test_objective_composes_trl_losses():
    c, r, rc, rr = _pairs()
    obj = Objective(
        {"apo_zero": {"beta": 0.2}, "hinge": {"loss": "hinge", "divergence": "js_divergence", "coefficient": 0.5}}
    )
    out = obj(_kw(c, r, rc, rr))
    expected = (LF.apo_zero(c, r, rc, rr, beta=0.2) + 0.5 * LF.hinge(c, r, rc, rr, divergence="js_divergence")).mean()
    torch.testing.assert_close(out.value, expected.detach())


# ------------------------------------------------------------------------------------------- DDP


def _aot_rank(parts, name):
    c, r, rc, rr = (t[rank()] for t in parts)
    c, r = c.clone().requires_grad_(True), r.clone().requires_grad_(True)
    out = ll.build_loss(name, beta=0.5)(**_kw(c, r, rc, rr))
    out.sum().backward()
    return out.detach(), c.grad, r.grad


@pytest.mark.parametrize("name", ["aot", "aot_unpaired"])
def test_aot_sorts_the_global_batch_under_ddp(ddp, name):
    c, r, rc, rr = (t.detach() for t in _pairs(n=9, seed=2))
    sizes = (4, 5)

    def split(t):
        return [t[: sizes[0]], t[sizes[0] :]]

    results = ddp.run(_aot_rank, [split(t) for t in (c, r, rc, rr)], name)
    one_c, one_r = c.clone().requires_grad_(True), r.clone().requires_grad_(True)
    expected = ll.build_loss(name, beta=0.5)(**_kw(one_c, one_r, rc, rr))
    expected.sum().backward()
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), expected.detach())
    # DDP averages gradients over 2 ranks; the objective's global normalisation scales each rank's share by 2
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), one_c.grad)
    torch.testing.assert_close(torch.cat([results[0][2], results[1][2]]), one_r.grad)


# ------------------------------------------------------------------------------------------- errors


def test_constructor_errors():
    with pytest.raises(
        ConfigurationError,
        match=r"`divergence` must be one of `reverse_kl`, `forward_kl`, "
        r"`js_divergence`, `alpha_divergence`, got 'kl'",
    ):
        ll.build_loss("dpo", divergence="kl")
    with pytest.raises(ConfigurationError, match=r"`f_alpha` must be > 0.0, got 0"):
        ll.build_loss("hinge", f_alpha=0)
    with pytest.raises(ConfigurationError, match=r"`label_smoothing` must be in \(0.0, 1.0\), got 0"):
        ll.build_loss("exo_pair", label_smoothing=0)
    with pytest.raises(ConfigurationError, match=r"`tau` must be in \(0.0, 1.0\), got 1"):
        ll.build_loss("discopop", tau=1)
    with pytest.raises(ConfigurationError, match=r"`label_smoothing` must be in \[0.0, 0.5\], got 0.6"):
        ll.build_loss("aot", label_smoothing=0.6)
    with pytest.raises(ConfigurationError, match=r"`alpha` must be >= 0.0, got -1"):
        ll.build_loss("cpo", alpha=-1)
    with pytest.raises(ConfigurationError, match=r"`alpha` must be a finite number, got nan"):
        ll.build_loss("alphapo", alpha=float("nan"))
    with pytest.raises(ConfigurationError, match=r"`beta` must be > 0.0, got 0"):
        ll.build_loss("sppo_hard", beta=0)


def test_input_errors():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"`cpo` with `alpha` > 0 needs `chosen_lengths`"):
        ll.build_loss("cpo")(chosen_logps=x, rejected_logps=x)
    with pytest.raises(ValueError, match=r"`divergence` must be one of"):
        LF.divergence_score(x, "kl")
    with pytest.raises(ValueError, match=r"token log-probs and their mask must be \[N, T\] of one shape"):
        LF.ld_sequence_logps(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 4), torch.ones(2, 3), ld_alpha=0.5)
    with pytest.raises(ValueError, match=r"`target` must be an integer or bool tensor of shape \[3\]"):
        ll.build_loss("apo_zero_unpaired")(logps=x, ref_logps=x, target=torch.ones(3))
