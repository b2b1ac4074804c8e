"""STEER and CE-GPPO against explicit float64 per-token loops (values and gradients); DDP == 1 process."""

import math

import pytest
import torch

import lightning_losses as ll
from lightning_losses import functional as LF
from lightning_losses.distributed import rank
from lightning_losses.errors import ConfigurationError


def _batch(n=6, t=7, seed=0, spread=0.6, token_adv=False):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, t, generator=g, dtype=torch.float64) * 3
    logps = (old + torch.randn(n, t, generator=g, dtype=torch.float64) * spread).clamp(max=-1e-3)
    adv = torch.randn(n, t, generator=g, dtype=torch.float64) if token_adv else torch.randn(n, generator=g).double()
    ent = torch.rand(n, t, generator=g, dtype=torch.float64) * 2
    lengths = torch.randint(1, t + 1, (n,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).long()
    return logps.requires_grad_(True), old, adv, ent, mask


def _a(adv, i, j):
    return float(adv[i, j]) if adv.ndim == 2 else float(adv[i])


def _aggregate(per_token, mask, norm):
    """``{(i, j): value}`` over valid tokens -> per-response values and the factor d out_i / d token_ij."""
    n, t = mask.shape
    counts = [int(mask[i].sum()) for i in range(n)]
    total, nonempty = sum(counts), sum(1 for c in counts if c)
    factors = {
        "sum": [1.0] * n,
        "constant": [1.0 / t] * n,
        "sequence": [1.0 / max(c, 1) for c in counts],
        "token": [nonempty / total] * n,
    }[norm]
    out = [factors[i] * sum(v for (r, _), v in per_token.items() if r == i) for i in range(n)]
    return torch.tensor(out, dtype=torch.float64), factors


def _steer_weight_loop(logps, old, adv, ent, mask, mapping, w_min, w_max):
    """The authors' token-weight rule written out per token in plain floats."""
    n, t = mask.shape
    omega = {}
    for i in range(n):
        for j in range(t):
            if not mask[i, j]:
                continue
            p = min(max(math.exp(float(logps[i, j])), 1e-8), 1 - 1e-8)
            p_old = min(max(math.exp(float(old[i, j])), 1e-8), 1.0)
            omega[i, j] = abs(_a(adv, i, j) / p_old * p * (1 - p) * (math.log(p) + float(ent[i, j])))
    lo, hi = min(omega.values()), max(omega.values())
    weights = {}
    for key, om in omega.items():
        if mapping == "exp":
            k = -math.log(w_min) / max(hi, 0.02)
            weights[key] = min(max(math.exp(-k * om), w_min), 1.0)
        elif hi > lo:
            weights[key] = min(max(w_max - (om - lo) * (w_max - w_min) / (hi - lo), w_min), w_max)
        else:
            weights[key] = (w_min + w_max) / 2
    return weights


def _ppo_token(lp, old, a, eps, eps_high, dual):
    """PPO with dual clip for one token: ``(value, d value / d log pi)``."""
    r = math.exp(lp - old)
    unclipped, clipped = -a * r, -a * min(max(r, 1 - eps), 1 + eps_high)
    value, grad = (unclipped, -a * r) if unclipped >= clipped else (clipped, 0.0)
    if dual is not None and a < 0 and -a * dual < value:
        value, grad = -a * dual, 0.0
    return value, grad


@pytest.mark.parametrize("norm", ["token", "sequence", "sum", "constant"])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"mapping": "linear", "weight_max": 1.2},
        {"mapping": "exp", "weight_min": 0.5, "clip_eps_high": 0.28, "dual_clip": 1.5},
        {"mapping": "linear", "weight_min": 0.6, "weight_max": 0.9, "dual_clip": None},
    ],
)
def test_steer_matches_loop(norm, kw):
    logps, old, adv, ent, mask = _batch(token_adv=norm == "sum")
    loss = ll.build_loss("steer", normalization=norm, **kw)
    out = loss(logps=logps, old_logps=old, advantages=adv, mask=mask, entropy=ent)
    (grad,) = torch.autograd.grad(out.sum(), logps)
    w_min, w_max = kw.get("weight_min", 0.8), kw.get("weight_max", 1.0)
    weights = _steer_weight_loop(logps.detach(), old, adv, ent, mask, kw.get("mapping", "exp"), w_min, w_max)
    eps, eps_high, dual = 0.2, kw.get("clip_eps_high", 0.2), kw.get("dual_clip", 3.0)
    values, grads = {}, {}
    for (i, j), w in weights.items():
        v, g = _ppo_token(float(logps.detach()[i, j]), float(old[i, j]), _a(adv, i, j), eps, eps_high, dual)
        values[i, j], grads[i, j] = w * v, w * g
    expected, factors = _aggregate(values, mask, norm)
    torch.testing.assert_close(out.detach(), expected)
    expected_grad = torch.zeros_like(grad)
    for (i, j), g in grads.items():
        expected_grad[i, j] = factors[i] * g
    torch.testing.assert_close(grad, expected_grad)
    assert len(set(round(w, 12) for w in weights.values())) > 3  # the weights differ: the test is not vacuous


def test_steer_weights_edge_cases():
    lp = torch.log(torch.tensor([[0.5, 0.5, 0.2]], dtype=torch.float64))
    ones, adv = torch.ones(1, 3, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
    # every |Ω| equal: linear gives the midpoint, exp the weight of that |Ω|
    same = LF.steer_weights(lp[:, :2], lp[:, :2], adv, ones[:, :2], ones[:, :2], mapping="linear", weight_max=1.2)
    torch.testing.assert_close(same, torch.full((1, 2), 1.0, dtype=torch.float64))
    # |Ω| below the 0.02 floor: k = -log(0.8) / 0.02
    tiny = LF.steer_weights(lp, lp, adv * 1e-3, ones, ones)
    omega = LF.steer_omega(lp, lp, adv * 1e-3, ones).abs()
    torch.testing.assert_close(tiny, torch.exp(math.log(0.8) / 0.02 * omega))
    # masked tokens get 0, no valid token at all gives finite zeros
    mask = torch.tensor([[1, 0, 1]])
    assert LF.steer_weights(lp, lp, adv, ones, mask)[0, 1] == 0
    for mapping in ("exp", "linear"):
        none = LF.steer_weights(lp, lp, adv, ones, torch.zeros(1, 3), mapping=mapping)
        assert torch.equal(none, torch.zeros(1, 3, dtype=torch.float64))
    # a non-finite Ω (infinite advantage) counts as 0
    inf_adv = torch.tensor([float("inf")], dtype=torch.float64)
    assert LF.steer_omega(lp, lp, inf_adv, ones).eq(0).all()
    # weights carry no gradient
    lp_grad = lp.clone().requires_grad_(True)
    assert not LF.steer_weights(lp_grad, lp, adv, ones, ones).requires_grad


@pytest.mark.parametrize("norm", ["token", "sequence"])
@pytest.mark.parametrize(
    "kw",
    [{}, {"beta1": 0.5, "beta2": 1.5, "clip_eps_high": 0.28}, {"beta1": 2.0, "dual_clip": 1.2}, {"dual_clip": None}],
)
def test_ce_gppo_matches_loop(norm, kw):
    logps, old, adv, _, mask = _batch(seed=1, spread=0.8, token_adv=True)
    out = ll.build_loss("ce_gppo", normalization=norm, **kw)(logps=logps, old_logps=old, advantages=adv, mask=mask)
    (grad,) = torch.autograd.grad(out.sum(), logps)
    b1, b2, eps, eps_high = kw.get("beta1", 0.75), kw.get("beta2", 1.0), 0.2, kw.get("clip_eps_high", 0.2)
    dual = kw.get("dual_clip", 3.0)
    values, grads, preserved = {}, {}, 0
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if not mask[i, j]:
                continue
            lp, o, a = float(logps.detach()[i, j]), float(old[i, j]), _a(adv, i, j)
            r = math.exp(lp - o)
            if r < 1 - eps and a < 0:
                v, g = -b1 * (1 - eps) * a, -b1 * (1 - eps) * a
            elif r > 1 + eps_high and a > 0:
                v, g = -b2 * (1 + eps_high) * a, -b2 * (1 + eps_high) * a
            else:
                v, g = -a * r, -a * r
            preserved += (r < 1 - eps and a < 0) or (r > 1 + eps_high and a > 0)
            if dual is not None and a < 0 and -a * dual < v:
                v, g = -a * dual, 0.0
            values[i, j], grads[i, j] = v, g
    expected, factors = _aggregate(values, mask, norm)
    torch.testing.assert_close(out.detach(), expected)
    expected_grad = torch.zeros_like(grad)
    for (i, j), g in grads.items():
        expected_grad[i, j] = factors[i] * g
    torch.testing.assert_close(grad, expected_grad)
    assert preserved >= 4  # both clipped cases occur in the batch


def test_ce_gppo_limits_are_ppo():
    """β = 0 gives PPO's gradient; β = 1 gives PPO's value (the clipped tokens' gradient is what changes)."""
    logps, old, adv, _, mask = _batch(seed=2, spread=0.8, token_adv=True)
    inputs = {"logps": logps, "old_logps": old, "advantages": adv, "mask": mask}
    ppo = ll.build_loss("ppo_clip", dual_clip=3.0)(**inputs)
    (ppo_grad,) = torch.autograd.grad(ppo.sum(), logps)
    zero = ll.build_loss("ce_gppo", beta1=0.0, beta2=0.0)(**inputs)
    torch.testing.assert_close(torch.autograd.grad(zero.sum(), logps)[0], ppo_grad)
    one = ll.build_loss("ce_gppo", beta1=1.0, beta2=1.0)(**inputs)
    torch.testing.assert_close(one.detach(), ppo.detach())
    assert not torch.allclose(torch.autograd.grad(one.sum(), logps)[0], ppo_grad)


def test_ce_gppo_gradient_survives_the_log_ratio_cap():
    """A ratio beyond e^20 with A > 0: PPO's ratio cap gives no gradient, CE-GPPO's bounded one remains."""
    lp = torch.tensor([[25.0]], dtype=torch.float64, requires_grad=True)
    out = ll.build_loss("ce_gppo")(
        logps=lp, old_logps=torch.zeros(1, 1), advantages=torch.ones(1), mask=torch.ones(1, 1)
    )
    (g,) = torch.autograd.grad(out.sum(), lp)
    torch.testing.assert_close(g, torch.tensor([[-1.2]], dtype=torch.float64))  # -β2 (1 + ε) A


def test_composes_with_the_policy_controls_and_the_objective():
    logps, old, adv, ent, mask = _batch(seed=3)
    ref = old - 0.3
    base = dict(logps=logps, old_logps=old, advantages=adv, mask=mask, entropy=ent, ref_logps=ref)
    plain = ll.build_loss("steer")(**base)
    with_terms = ll.build_loss("steer", kl_coef=0.1, entropy_coef=0.01)(**base)
    kl_only = ll.build_loss("grpo", normalization="token", kl_coef=0.1, entropy_coef=0.01, clip_eps=0.5)
    zero_pg = kl_only(**{**base, "advantages": torch.zeros_like(adv)})  # KL and bonus alone, unweighted
    torch.testing.assert_close(with_terms, plain + zero_pg)
    from lightning_losses.objective import Objective

    obj = Objective({"ce_gppo": {}})
    value = obj({"logps": logps, "old_logps": old, "advantages": adv, "mask": mask}).value
    assert torch.isfinite(value)


# ------------------------------------------------------------------------------------------- DDP


def _rank_run(parts, name, kwargs):
    lp, old, adv, ent, mask = (t[rank()] for t in parts)
    lp = lp.clone().requires_grad_(True)
    out = ll.build_loss(name, **kwargs)(logps=lp, old_logps=old, advantages=adv, mask=mask, entropy=ent)
    out.sum().backward()
    return out.detach(), lp.grad


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("steer", {}), ("steer", {"mapping": "linear", "weight_max": 1.2}), ("ce_gppo", {"beta1": 0.5})],
)
def test_ddp_equals_one_process(ddp, name, kwargs):
    """STEER's |Ω| range is global: rank 0 holds the token with the largest |Ω|, rank 1's weights depend on it."""
    logps, old, adv, ent, mask = _batch(n=7, seed=4)
    adv = adv.clone()
    adv[0] = 40.0  # the largest |Ω| sits on rank 0
    sizes = (3, 4)

    def split(t):
        return [t[: sizes[0]].detach(), t[sizes[0] :].detach()]

    results = ddp.run(_rank_run, [split(t) for t in (logps, old, adv, ent, mask)], name, kwargs)
    expected = ll.build_loss(name, **kwargs)(logps=logps, old_logps=old, advantages=adv, mask=mask, entropy=ent)
    (grad,) = torch.autograd.grad(expected.sum(), logps)
    torch.testing.assert_close(torch.cat([results[0][0], results[1][0]]), expected.detach())
    torch.testing.assert_close(torch.cat([results[0][1], results[1][1]]), grad)


# ------------------------------------------------------------------------------------------- errors


def test_errors():
    with pytest.raises(ConfigurationError, match=r"`weight_min` must be in \(0.0, 1.0\], got 0.0"):
        ll.build_loss("steer", weight_min=0.0)
    with pytest.raises(ConfigurationError, match=r"`weight_max` must be >= 0.8, got 0.5"):
        ll.build_loss("steer", weight_max=0.5)
    with pytest.raises(ConfigurationError, match=r"`mapping` must be one of `exp`, `linear`, got 'lin'; did you mean"):
        ll.build_loss("steer", mapping="lin")
    with pytest.raises(ConfigurationError, match=r"`beta1` must be >= 0.0, got -1.0"):
        ll.build_loss("ce_gppo", beta1=-1)
    with pytest.raises(
        ConfigurationError, match=r"`cov_control` must be `none` or `clip_cov` for ce_gppo, got 'kl_cov'"
    ):
        ll.build_loss("ce_gppo", cov_control="kl_cov")
    lp, mask = torch.zeros(2, 3), torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"`entropy` \[N, T\] \(the current policy's per-token entropy\) is required"):
        ll.build_loss("steer")(logps=lp, old_logps=lp, advantages=torch.ones(2), mask=mask, entropy=None)
    with pytest.raises(ValueError, match=r"`entropy` must have the shape of `logps` \[2, 3\], got \[2\]"):
        LF.steer_weights(lp, lp, torch.ones(2), torch.ones(2), mask)
    with pytest.raises(ValueError, match=r"`mapping` must be one of \('exp', 'linear'\), got 'log'"):
        LF.steer_weights(lp, lp, torch.ones(2), lp, mask, mapping="log")
    with pytest.raises(ValueError, match=r"STEER needs 0 < `weight_min` <= `weight_max`, got 0.9 and 0.5"):
        LF.steer_weights(lp, lp, torch.ones(2), lp, mask, weight_min=0.9, weight_max=0.5)
