"""Token cross entropy, sequence log-probs, DCO, MixCE and EMO against explicit per-token loops (plain floats)."""

import math
from types import SimpleNamespace

import mpmath
import pytest
import torch
import torch.nn.functional as F

import lightning_losses as ll
from lightning_losses import functional as LF
from lightning_losses.errors import ConfigurationError
from lightning_losses.objective import Objective

IGNORE = -100


def _batch(n=4, t=5, v=6, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, t, v, generator=g, dtype=dtype) * 2).requires_grad_(True)
    target = torch.randint(0, v, (n, t), generator=g)
    target[0, 3:] = IGNORE  # padding
    target[1, 0] = IGNORE  # prompt token
    if n > 2:
        target[2, :] = IGNORE  # a sequence without any scored token
    return logits, target


def _log_softmax(row):
    m = max(row)
    lse = m + math.log(sum(math.exp(x - m) for x in row))
    return [x - lse for x in row], lse


def _aggregate(per_token, norm, t):
    """per_token: list (sequences) of lists of the valid tokens' losses."""
    sums = [sum(r) for r in per_token]
    counts = [len(r) for r in per_token]
    if norm == "sum":
        return sums
    if norm == "constant":
        return [s / t for s in sums]
    if norm == "sequence":
        return [s / max(c, 1) for s, c in zip(sums, counts)]
    nonempty = sum(1 for c in counts if c)
    return [s * nonempty / sum(counts) for s in sums]


def _ref_token_ce(logits, target, eps=0.0, z=0.0, norm="token"):
    out = []
    for i in range(logits.shape[0]):
        row_losses = []
        for j in range(logits.shape[1]):
            y = int(target[i, j])
            if y == IGNORE:
                continue
            logp, lse = _log_softmax(logits[i, j].tolist())
            v = len(logp)
            row_losses.append(-(1 - eps) * logp[y] - eps / v * sum(logp) + z * lse**2)
        out.append(row_losses)
    return torch.tensor(_aggregate(out, norm, logits.shape[1]), dtype=torch.float64)


# ------------------------------------------------------------------------------------------- token cross entropy


@pytest.mark.parametrize("norm", ["token", "sequence", "sum", "constant"])
@pytest.mark.parametrize(("eps", "z"), [(0.0, 0.0), (0.1, 0.0), (0.0, 1e-2), (0.2, 1e-3)])
def test_token_cross_entropy_matches_loop(norm, eps, z):
    logits, target = _batch()
    got = LF.token_cross_entropy(logits, target, label_smoothing=eps, z_loss=z, normalization=norm)
    torch.testing.assert_close(got.detach(), _ref_token_ce(logits.detach(), target, eps, z, norm))
    module = ll.build_loss("token_cross_entropy", label_smoothing=eps, z_loss=z, normalization=norm)
    torch.testing.assert_close(module(logits=logits, target=target), got)


def test_token_cross_entropy_per_token_equals_torch_and_objective_gives_global_token_mean():
    logits, target = _batch(seed=1)
    per_token = LF.token_cross_entropy(logits, target, label_smoothing=0.1, reduction="none")
    peer = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none", label_smoothing=0.1)
    torch.testing.assert_close(per_token, peer.view_as(per_token))
    # through the objective: "token" normalisation is torch's mean over every valid token of the batch
    out = Objective({"token_cross_entropy": {"label_smoothing": 0.1}})({"logits": logits, "target": target})
    mean = F.cross_entropy(logits.flatten(0, 1), target.flatten(), label_smoothing=0.1)
    torch.testing.assert_close(out.value, mean.detach())
    torch.testing.assert_close(out.loss, mean)
    assert out.weights[2] == 0  # the all-ignored sequence is out of the normaliser
    mask = ll.build_loss("token_cross_entropy").sample_mask(target=target)
    assert mask.tolist() == [True, True, False, True]


def test_token_cross_entropy_edge_cases_and_precision():
    # length-1 sequences, all tokens ignored, saturated logits of +-1e4: finite values and gradients
    logits = torch.tensor([[[1e4, -1e4, 0.0]], [[-1e4, 1e4, 0.0]], [[0.0, 0.0, 0.0]]], requires_grad=True)
    target = torch.tensor([[0], [0], [IGNORE]])
    out = LF.token_cross_entropy(logits, target, z_loss=1e-4, label_smoothing=0.1, normalization="sequence")
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(logits.grad).all()
    assert out[2] == 0 and (logits.grad[2] == 0).all()
    assert math.isclose(float(out[1].detach()), 0.9 * 2e4 + 0.1 / 3 * (2e4 + 0 + 1e4) + 1e-4 * 1e8, rel_tol=1e-5)
    half = LF.token_cross_entropy(logits.detach().to(torch.bfloat16), target)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()


def test_token_cross_entropy_gradcheck():
    logits, target = _batch(n=2, t=3, v=4, seed=2)
    for kw in ({}, {"label_smoothing": 0.2, "z_loss": 0.05, "normalization": "sequence"}):
        assert torch.autograd.gradcheck(lambda x, kw=kw: LF.token_cross_entropy(x, target, **kw), (logits,))


# ------------------------------------------------------------------------------------------- sequence log-probs


def test_sequence_logps_shift_average_and_token_logps():
    logits, target = _batch(seed=3)
    ref, ref_shift = [], []
    for i in range(logits.shape[0]):
        terms = [
            _log_softmax(logits[i, j].tolist())[0][int(target[i, j])]
            for j in range(logits.shape[1])
            if target[i, j] != IGNORE
        ]
        ref.append((sum(terms), len(terms)))
        shifted = [
            _log_softmax(logits[i, j].tolist())[0][int(target[i, j + 1])]
            for j in range(logits.shape[1] - 1)
            if target[i, j + 1] != IGNORE
        ]
        ref_shift.append(sum(shifted))
    got = LF.sequence_logps(logits, target)
    torch.testing.assert_close(got.detach(), torch.tensor([s for s, _ in ref], dtype=torch.float64))
    avg = LF.sequence_logps(logits, target, average=True)
    torch.testing.assert_close(avg.detach(), torch.tensor([s / max(c, 1) for s, c in ref], dtype=torch.float64))
    shift = LF.sequence_logps(logits, target, shift=True)
    torch.testing.assert_close(shift.detach(), torch.tensor(ref_shift, dtype=torch.float64))
    lp, mask = LF.token_logps(logits, target, shift=True)
    assert lp.shape == mask.shape == (4, 4) and (lp[~mask] == 0).all()
    small, small_target = _batch(n=2, t=3, v=4, seed=3)
    assert torch.autograd.gradcheck(lambda x: LF.sequence_logps(x, small_target, average=True), (small,))


# ------------------------------------------------------------------------------------------- DCO


def _mp_dco(s, n):
    p = mpmath.exp(mpmath.mpf(s))
    cover = -mpmath.expm1(n * mpmath.log1p(-p))
    loss = -mpmath.log(cover)
    grad = -(n * p * (1 - p) ** (n - 1) / cover) if cover > 0 else mpmath.mpf(0)
    return float(loss), float(grad)


@pytest.mark.parametrize("n", [1, 2, 4, 16.5, 1e6])
def test_dco_matches_high_precision_reference_over_the_whole_range(n):
    mpmath.mp.dps = 60
    s_values = [-1e-6, -0.01, -0.3, -0.693, -1.0, -3.0, -10.0, -19.99, -20.01, -45.0, -300.0, -1e4]
    s = torch.tensor(s_values, dtype=torch.float64, requires_grad=True)
    loss = LF.dco(s, n=n)
    (grad,) = torch.autograd.grad(loss.sum(), s)
    ref = [_mp_dco(v, n) for v in s_values]
    torch.testing.assert_close(
        loss.detach(), torch.tensor([r[0] for r in ref], dtype=torch.float64), rtol=1e-9, atol=1e-12
    )
    torch.testing.assert_close(grad, torch.tensor([r[1] for r in ref], dtype=torch.float64), rtol=1e-7, atol=1e-12)


def test_dco_edges_float32_and_gradcheck():
    # s = 0 (certain): loss 0, gradient 0; extreme log-probs stay finite in float32 as well
    s = torch.tensor([0.0, -1e-30, -1e4, -1e30], requires_grad=True)
    loss = LF.dco(s, n=4)
    loss.sum().backward()
    assert torch.isfinite(loss).all() and torch.isfinite(s.grad).all()
    assert loss[0] == 0 and s.grad[0] == 0 and math.isclose(float(loss[2].detach()), 1e4 - math.log(4), rel_tol=1e-6)
    assert torch.allclose(LF.dco(torch.tensor([-0.7, -2.0]), n=1), torch.tensor([0.7, 2.0]))  # N = 1 is CE
    x = torch.tensor([-0.01, -0.5, -3.0, -25.0], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: LF.dco(v, n=3.0), (x,))
    assert LF.dco(torch.tensor([-1.0], dtype=torch.bfloat16)).dtype == torch.float32


def test_dco_module_on_token_logits():
    logits, target = _batch(seed=4)
    module = ll.build_loss("dco", n=8)
    got = module(logits=logits, target=target)
    ref = [_mp_dco(float(s), 8)[0] if s < 0 else 0.0 for s in LF.sequence_logps(logits, target).detach()]
    torch.testing.assert_close(got.detach(), torch.tensor(ref, dtype=torch.float64))
    assert module.sample_mask(target=target).tolist() == [True, True, False, True]
    small, small_target = _batch(n=2, t=3, v=4, seed=4)
    assert torch.autograd.gradcheck(lambda x: module(logits=x, target=small_target), (small,))


# ------------------------------------------------------------------------------------------- MixCE


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
def test_mixce_matches_loop_value_and_gradient(eta):
    logits, target = _batch(seed=5)
    got = LF.mixce(logits, target, eta=eta, normalization="sequence")
    ref, grad_ref = [], torch.zeros_like(logits)
    counts = (target != IGNORE).sum(-1).clamp_min(1)
    for i in range(logits.shape[0]):
        row = []
        for j in range(logits.shape[1]):
            y = int(target[i, j])
            if y == IGNORE:
                continue
            logp, _ = _log_softmax(logits[i, j].tolist())
            q = math.exp(logp[y])
            w = eta + (1 - eta) * q  # the model's probability enters as a constant weight (stop-gradient)
            row.append(-w * logp[y])
            for k in range(len(logp)):  # d(-w log q_y)/dz_k = w (softmax_k - [k == y])
                grad_ref[i, j, k] = w * (math.exp(logp[k]) - (k == y)) / float(counts[i])
        ref.append(row)
    torch.testing.assert_close(got.detach(), torch.tensor(_aggregate(ref, "sequence", 5), dtype=torch.float64))
    (grad,) = torch.autograd.grad(got.sum(), logits)
    torch.testing.assert_close(grad, grad_ref)
    if eta == 1.0:
        torch.testing.assert_close(got, LF.token_cross_entropy(logits, target, normalization="sequence"))


# ------------------------------------------------------------------------------------------- EMO


def _ref_emo(logits, target, emb, cap=None):
    """Explicit per-token EMO (value and logit gradient with the dynamic weight held constant), sequence mean."""
    n, t, v = logits.shape
    unit = [[x / math.sqrt(sum(c * c for c in r)) for x in r] for r in emb.tolist()]
    cos = [[sum(a * b for a, b in zip(unit[i], unit[j])) for j in range(v)] for i in range(v)]
    values, grad = [], torch.zeros_like(logits)
    counts = (target != IGNORE).sum(-1).clamp_min(1)
    for i in range(n):
        row = []
        for j in range(t):
            y = int(target[i, j])
            if y == IGNORE:
                continue
            logp, _ = _log_softmax(logits[i, j].tolist())
            q = [math.exp(x) for x in logp]
            mle = -logp[y]
            demd = sum(q[k] * (1 - cos[k][y]) for k in range(v))
            w = mle / max(demd, 1e-10)
            w = w if cap is None else min(w, cap)
            row.append(0.5 * (mle + w * demd))
            for k in range(v):  # d mle / dz_k = q_k - [k == y];  d demd / dz_k = q_k ((1 - cos_ky) - demd)
                d_mle = q[k] - (k == y)
                d_demd = q[k] * ((1 - cos[k][y]) - demd)
                grad[i, j, k] = 0.5 * (d_mle + w * d_demd) / float(counts[i])
        values.append(row)
    return torch.tensor(_aggregate(values, "sequence", t), dtype=torch.float64), grad


@pytest.mark.parametrize("cap", [None, 1.5])
def test_emo_matches_loop_value_and_gradient(cap):
    logits, target = _batch(seed=6)
    emb = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64).requires_grad_(True)
    got = LF.emo(logits, target, emb, max_weight=cap, normalization="sequence")
    ref, grad_ref = _ref_emo(logits.detach(), target, emb.detach(), cap)
    torch.testing.assert_close(got.detach(), ref)
    (grad,) = torch.autograd.grad(got.sum(), logits)
    torch.testing.assert_close(grad, grad_ref)
    assert emb.grad is None  # the cost embedding is frozen
    if cap is None:  # the value equals MLE (the dynamic weight rescales the transport term to MLE's size)
        torch.testing.assert_close(got, LF.token_cross_entropy(logits, target, normalization="sequence"))
    module = ll.build_loss("emo", max_weight=cap, normalization="sequence")
    torch.testing.assert_close(module(logits=logits, target=target, cost_embedding=emb), got)


def test_emo_mixce_extreme_logits_are_finite():
    logits = torch.tensor([[[1e4, -1e4, 0.0], [0.0, 0.0, 0.0]]], requires_grad=True)
    target = torch.tensor([[0, IGNORE]])
    for out in (LF.emo(logits, target, torch.eye(3)), LF.mixce(logits, target, eta=0.2)):
        (g,) = torch.autograd.grad(out.sum(), logits)
        assert torch.isfinite(out).all() and torch.isfinite(g).all() and (g[0, 1] == 0).all()
    wrong = torch.tensor([[1]])
    out = LF.emo(logits[:, :1], wrong, torch.eye(3))  # confident and wrong: large but finite
    assert torch.isfinite(out).all() and float(out.detach()) > 1e4


# ------------------------------------------------------------------------------------------- errors


def test_errors():
    logits, target = torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ConfigurationError, match=r"`n` must be >= 1.0, got 0.5"):
        ll.build_loss("dco", n=0.5)
    with pytest.raises(ConfigurationError, match=r"`eta` must be in \[0.0, 1.0\], got 1.5"):
        ll.build_loss("mixce", eta=1.5)
    with pytest.raises(ConfigurationError, match=r"`max_weight` must be > 0.0, got 0"):
        ll.build_loss("emo", max_weight=0)
    with pytest.raises(ConfigurationError, match=r"`normalization` must be one of `token`, `sequence`, `sum`"):
        ll.build_loss("token_cross_entropy", normalization="mean")
    with pytest.raises(ConfigurationError, match=r"`z_loss` must be >= 0.0, got -1"):
        ll.build_loss("token_ce", z_loss=-1)
    with pytest.raises(ValueError, match=r"`logits` must be a floating tensor \[N, T, V\], got torch.float32 \[2, 4\]"):
        LF.token_cross_entropy(torch.zeros(2, 4), target)
    with pytest.raises(ValueError, match=r"`target` must be an integer tensor \[N, T\] = \[2, 3\] of token ids"):
        LF.token_cross_entropy(logits, target.float())
    with pytest.raises(
        ValueError, match=r"`target` token ids must be in \[0, 3\] \(or `ignore_index`\), got \[4, -1\]"
    ):
        LF.token_cross_entropy(logits, torch.tensor([[0, 4, 0], [-1, 0, IGNORE]]))
    bad = torch.tensor([[0, 9, 0], [0, 0, 0]])
    for name, extra in (("mixce", {}), ("emo", {"cost_embedding": torch.eye(4)}), ("dco", {})):  # modules check ids
        with pytest.raises(
            ValueError, match=r"`target` token ids must be in \[0, 3\] \(or `ignore_index`\), got \[9\]"
        ):
            ll.build_loss(name)(logits=logits, target=bad, **extra)
    with pytest.raises(ValueError, match=r"`reduction` must be one of \('sample', 'none'\), got 'mean'"):
        LF.token_cross_entropy(logits, target, reduction="mean")
    with pytest.raises(ValueError, match=r"`logps` must be a floating tensor \[N\] of sequence log-probs"):
        LF.dco(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"`n` must be >= 1, got 0.5"):
        LF.dco(torch.zeros(2), n=0.5)
    with pytest.raises(ValueError, match=r"`eta` must be in \[0, 1\], got -0.1"):
        LF.mixce(logits, target, eta=-0.1)
    with pytest.raises(
        ValueError, match=r"`cost_embedding` must have one row per vocabulary entry \(4\), got \[3, 2\]"
    ):
        LF.emo(logits, target, torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"`cost_embedding` must be a tensor \[V, D\], got \[4\]"):
        LF.emo(logits, target, torch.zeros(4))
    with pytest.raises(TypeError, match=r"`target` must be a torch.Tensor, got list"):
        LF.sequence_logps(logits, [[0, 0, 0]])


# ------------------------------------------------------------------------------------------- DDP: token entropy control


def _entropy_batches(steps=3, n=5, t=4, v=6):
    batches = []
    for k in range(steps):
        logits, target = _batch(n=n, t=t, v=v, seed=20 + k)
        target[4, 1:] = IGNORE  # uneven valid-token counts across the two ranks
        batches.append((logits.detach(), target))
    return batches


def _entropy_control_run(batches, sizes=None):
    """Token CE + EntropyControl(target, normalization="token") over the steps: beta, global entropy, loss, grads."""
    from lightning_losses.distributed import rank

    cb = ll.EntropyControl(target=1.2, lr=0.5, normalization="token")
    obj = Objective({"token_cross_entropy": {}})
    module = SimpleNamespace(objective_logging_suppressed=False)
    out = []
    for step, (logits, target) in enumerate(batches):
        if sizes is not None:
            lo = sum(sizes[: rank()])
            logits, target = logits[lo : lo + sizes[rank()]], target[lo : lo + sizes[rank()]]
        logits = logits.clone().requires_grad_(True)
        tensors = {"logits": logits, "target": target}
        res = obj(tensors, step=step, extra_terms=cb.extra_terms(module, tensors, step))
        res.loss.backward()
        cb.on_train_batch_end(SimpleNamespace(global_step=step + 1, loggers=[], log_every_n_steps=50), module)
        out.append((float(cb.controller.beta), float(cb.last_entropy), float(res.value), logits.grad))
    return out


def test_ddp_token_entropy_control_equals_one_process(ddp):
    batches = _entropy_batches()
    sizes = (2, 3)
    ranks = ddp.run(_entropy_control_run, batches, sizes)
    single = _entropy_control_run(batches)
    beta = 0.0
    for step, (logits, target) in enumerate(batches):
        # explicit global token-mean entropy and the dual-ascent recursion on it
        p = torch.softmax(logits, -1)
        h = -(p * torch.log_softmax(logits, -1)).sum(-1)
        valid = target != IGNORE
        mean_h = float(h[valid].sum() / valid.sum())
        beta = min(max(beta + 0.5 * (1.2 - mean_h), -1.0), 1.0)
        (b0, h0, v0, g0), (b1, h1, v1, g1) = ranks[0][step], ranks[1][step]
        b, hs, v, g = single[step]
        assert b0 == b1 and h0 == h1 and v0 == v1  # identical on both ranks
        assert math.isclose(b0, b, rel_tol=1e-6) and math.isclose(b, beta, rel_tol=1e-6)
        assert math.isclose(h0, hs, rel_tol=1e-6) and math.isclose(hs, mean_h, rel_tol=1e-6)
        assert math.isclose(v0, v, rel_tol=1e-6)  # beta is float32
        # DDP averages gradients over the 2 ranks: each rank's share times 1/2 is the one-process gradient
        torch.testing.assert_close(torch.cat([g0, g1]) / 2, g)
        if step == 0:  # beta = 0 at step 0: the loss is the global token-mean cross entropy
            ce = F.cross_entropy(logits.flatten(0, 1), target.flatten())
            assert math.isclose(v, float(ce), rel_tol=1e-9)


def test_entropy_control_token_normalization_is_the_global_token_mean():
    logits, target = _batch(seed=7)
    valid = target != IGNORE
    h = -(torch.softmax(logits, -1) * torch.log_softmax(logits, -1)).sum(-1)
    module = SimpleNamespace(objective_logging_suppressed=False)
    for norm, expected in (("token", h[valid].sum() / valid.sum()), ("sequence", None)):
        cb = ll.EntropyControl(beta=0.3, normalization=norm)
        tensors = {"logits": logits, "target": target}
        out = Objective({"token_cross_entropy": {}})(tensors, extra_terms=cb.extra_terms(module, tensors, 0))
        if expected is None:  # per-sequence token mean, then a mean over the counted sequences
            per_seq = (h * valid).sum(-1) / valid.sum(-1).clamp_min(1)
            expected = per_seq[valid.any(-1)].mean()
        torch.testing.assert_close(out.terms["entropy_bonus"], (-0.3 * expected).detach())
    with pytest.raises(ConfigurationError, match=r"`normalization` must be one of `sequence`, `token`, got 'sum'"):
        ll.EntropyControl(target=1.0, normalization="sum")
