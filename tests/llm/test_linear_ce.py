"""Memory-efficient linear cross entropy (chunked, recompute in backward) against materialised logits."""

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional import _cce_backend as CCE
from lightning_losses.functional import linear_ce as LCE
from lightning_losses.objective import Objective

IGNORE = -100


def _naive_logp(h, w, b=None, softcap=None):
    """Materialised logits and an explicit, max-shifted log-softmax: ``(log p [..., V], lse [...])``."""
    z = h @ w.T
    if b is not None:
        z = z + b
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    m = z.max(-1, keepdim=True).values
    lse = (m + torch.log(torch.exp(z - m).sum(-1, keepdim=True))).squeeze(-1)
    return z - lse[..., None], lse


def _naive_ce(h, w, y, b=None, eps=0.0, z_coef=0.0, softcap=None):
    """Per-token ``-(1-eps) log p_y - eps mean_v log p_v + c lse^2``, 0 on ignored tokens."""
    logp, lse = _naive_logp(h, w, b, softcap)
    valid = y != IGNORE
    lp_y = logp.gather(-1, torch.where(valid, y, 0)[..., None]).squeeze(-1)
    tok = -(1 - eps) * lp_y - eps * logp.mean(-1) + z_coef * lse**2
    return torch.where(valid, tok, torch.zeros_like(tok))


def _naive_entropy(h, w, b=None, softcap=None):
    logp, _ = _naive_logp(h, w, b, softcap)
    return -(logp.exp() * logp).sum(-1)


def _data(n=3, t=5, hdim=6, v=11, dtype=torch.float64, seed=0, bias=True, ignore=True):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, t, hdim, generator=g, dtype=dtype).requires_grad_(True)
    w = (torch.randn(v, hdim, generator=g, dtype=dtype) * 0.7).requires_grad_(True)
    b = torch.randn(v, generator=g, dtype=dtype).requires_grad_(True) if bias else None
    y = torch.randint(0, v, (n, t), generator=g)
    if ignore:
        y[0, min(1, t - 1)] = IGNORE
        y[-1, t // 2 :] = IGNORE
    return h, w, b, y


def _grads(out, params, upstream):
    return torch.autograd.grad((out * upstream).sum(), [p for p in params if p is not None])


TOL = {torch.float64: {"atol": 1e-10, "rtol": 1e-10}, torch.float32: {"atol": 2e-5, "rtol": 2e-5}}


# ------------------------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("chunk", [1, 4, 7, None, 1000])
@pytest.mark.parametrize(
    "opts",
    [{}, {"label_smoothing": 0.1, "z_loss": 1e-2}, {"softcap": 2.5, "z_loss": 1e-3}],
    ids=["plain", "ls_z", "cap"],
)
def test_loss_and_grads_match_naive(dtype, chunk, opts):
    h, w, b, y = _data(dtype=dtype)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    kw = {"eps": opts.get("label_smoothing", 0.0), "z_coef": opts.get("z_loss", 0.0), "softcap": opts.get("softcap")}
    ref = _naive_ce(h, w, y, b, **kw)
    out = LCE.linear_cross_entropy(h, w, y, b, chunk_size=chunk, impl="chunked", **opts)
    assert out.shape == y.shape and out.dtype == dtype
    torch.testing.assert_close(out, ref, **TOL[dtype])
    for got, want in zip(_grads(out, (h, w, b), upstream), _grads(ref, (h, w, b), upstream)):
        torch.testing.assert_close(got, want, **TOL[dtype])


def test_no_bias_and_frozen_weight():
    h, w, _, y = _data(bias=False)
    up = torch.rand(y.shape, dtype=torch.float64)
    ref = _naive_ce(h, w, y)
    out = LCE.linear_cross_entropy(h, w, y, chunk_size=4)
    torch.testing.assert_close(_grads(out, (h, w), up), _grads(ref, (h, w), up))
    frozen = w.detach()  # only grad_hidden (e.g. LoRA with a frozen head)
    (gh,) = _grads(LCE.linear_cross_entropy(h, frozen, y, chunk_size=4), (h,), up)
    (gh_ref,) = _grads(_naive_ce(h, frozen, y), (h,), up)
    torch.testing.assert_close(gh, gh_ref)


@pytest.mark.parametrize("opts", [{}, {"label_smoothing": 0.1, "z_loss": 0.02, "softcap": 2.0}], ids=["plain", "all"])
def test_frozen_head_fast_path(opts):
    """Only ``hidden`` needs a gradient: grad rows are computed in the forward and scaled in the backward."""
    h, w, b, y = _data(n=3, t=5, v=13, seed=11)
    w, b = w.detach(), b.detach()
    g = torch.Generator().manual_seed(12)
    up1, up2 = torch.randn(y.shape, generator=g, dtype=torch.float64), torch.randn(y.shape, generator=g).double()
    kw = {"eps": opts.get("label_smoothing", 0.0), "z_coef": opts.get("z_loss", 0.0), "softcap": opts.get("softcap")}
    out = LCE.linear_cross_entropy(h, w, y, b, chunk_size=4, **opts)
    with _CountMatmuls() as count:
        (gh,) = torch.autograd.grad((out * up1).sum(), (h,))
    assert count.calls == 0  # the fast path ran: nothing recomputed
    trainable = w.clone().requires_grad_(True)
    out_t = LCE.linear_cross_entropy(h, trainable, y, b, chunk_size=4, **opts)
    with _CountMatmuls() as count:
        torch.autograd.grad(out_t.sum(), (h,))
    assert count.calls > 0  # (the counter sees the backward's recompute)
    (ref,) = torch.autograd.grad((_naive_ce(h, w, y, b, **kw) * up1).sum(), (h,))
    torch.testing.assert_close(gh, ref)
    cap = opts.get("softcap")
    lp, ent = LCE.linear_log_probs(h, w, y, b, softcap=cap, return_entropy=True, chunk_size=4)
    (gh,) = torch.autograd.grad((lp * up1).sum() + (ent * up2).sum(), (h,))
    ref_f = -_naive_ce(h, w, y, b, softcap=cap) * up1 + _naive_entropy(h, w, b, cap) * up2
    torch.testing.assert_close(gh, torch.autograd.grad(ref_f.sum(), (h,))[0])
    fn = lambda h: LCE.linear_log_probs(h, w, y, b, softcap=cap, return_entropy=True, chunk_size=4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h,))
    hh = h.detach().to(torch.bfloat16).requires_grad_(True)
    (gh,) = torch.autograd.grad(
        LCE.linear_cross_entropy(hh, w.to(torch.bfloat16), y, b.to(torch.bfloat16)).sum(), (hh,)
    )
    assert gh.dtype == torch.bfloat16 and torch.isfinite(gh).all()


def test_token_weights_reduction_none_random_upstream():
    """The failure mode of fused kernels elsewhere: per-token weights and non-uniform upstream gradients."""
    h, w, b, y = _data(n=4, t=6, v=13, seed=3)
    g = torch.Generator().manual_seed(5)
    tw = torch.rand(y.shape, generator=g, dtype=torch.float64).requires_grad_(True)
    up = torch.randn(y.shape, generator=g, dtype=torch.float64)
    out = LCE.linear_cross_entropy(h, w, y, b, token_weight=tw, chunk_size=5, label_smoothing=0.05)
    ref = _naive_ce(h, w, y, b, eps=0.05) * tw
    torch.testing.assert_close(out, ref)
    got = torch.autograd.grad((out * up).sum(), (h, w, b, tw))
    want = torch.autograd.grad((ref * up).sum(), (h, w, b, tw))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)
    # the gradient of a token is its upstream gradient times its weight: zero weight -> no gradient from that token
    tw0 = torch.ones_like(y, dtype=torch.float64)
    tw0[1] = 0.0
    (gh,) = torch.autograd.grad(LCE.linear_cross_entropy(h, w, y, b, token_weight=tw0).sum(), (h,))
    assert gh[1].abs().max() == 0 and gh[0].abs().max() > 0


@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_reductions(reduction):
    h, w, b, y = _data()
    ref_tok = _naive_ce(h, w, y, b, z_coef=1e-3)
    ref = ref_tok.sum() if reduction == "sum" else ref_tok.sum() / (y != IGNORE).sum()
    out = LCE.linear_cross_entropy(h, w, y, b, z_loss=1e-3, reduction=reduction, chunk_size=3)
    torch.testing.assert_close(out, ref)
    for a, e in zip(torch.autograd.grad(out, (h, w, b)), torch.autograd.grad(ref, (h, w, b))):
        torch.testing.assert_close(a, e)


def test_all_tokens_ignored_and_length_one():
    h, w, b, y = _data(t=1)
    out = LCE.linear_cross_entropy(h, w, y, b, chunk_size=2)
    torch.testing.assert_close(out, _naive_ce(h, w, y, b))
    y_all = torch.full_like(y, IGNORE)
    out = LCE.linear_cross_entropy(h, w, y_all, b, chunk_size=2)
    assert out.shape == (3, 1) and bool((out == 0).all())
    gh, gw, gb = torch.autograd.grad(out.sum(), (h, w, b))
    assert all(bool((g == 0).all()) for g in (gh, gw, gb))
    mean = LCE.linear_cross_entropy(h, w, y_all, b, reduction="mean")
    assert float(mean.detach()) == 0.0
    loss = ll.build_loss("linear_cross_entropy")
    assert bool((loss(hidden=h, weight=w, target=y_all) == 0).all())
    assert not loss.sample_mask(target=y_all).any()


def test_gradcheck_float64():
    h, w, b, y = _data(n=2, t=3, hdim=3, v=5)
    for kw in ({}, {"label_smoothing": 0.2, "z_loss": 0.05, "softcap": 1.5}):
        fn = lambda h, w, b, kw=kw: LCE.linear_cross_entropy(h, w, y, b, chunk_size=2, **kw)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (h, w, b))
    fn = lambda h, w, b: LCE.linear_log_probs(h, w, y, b, return_entropy=True, chunk_size=4)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, w, b))
    fn = lambda h, w, b: LCE.linear_entropy(h, w, b, softcap=2.0, chunk_size=5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (h, w, b))


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_log_probs_and_entropy_match_naive(softcap):
    h, w, b, y = _data(n=2, t=7, v=17, seed=4)
    g = torch.Generator().manual_seed(6)
    up1, up2 = torch.randn(y.shape, generator=g, dtype=torch.float64), torch.randn(y.shape, generator=g).double()
    logp, _ = _naive_logp(h, w, b, softcap)
    valid = y != IGNORE
    ref_lp = torch.where(valid, logp.gather(-1, torch.where(valid, y, 0)[..., None]).squeeze(-1), 0.0)
    ref_h = _naive_entropy(h, w, b, softcap)
    lp = LCE.linear_log_probs(h, w, y, b, softcap=softcap, chunk_size=3)
    lp2, ent = LCE.linear_log_probs(h, w, y, b, softcap=softcap, chunk_size=5, return_entropy=True)
    ent_only = LCE.linear_entropy(h, w, b, softcap=softcap, chunk_size=6)
    torch.testing.assert_close(lp, ref_lp)
    torch.testing.assert_close(lp2, ref_lp)
    torch.testing.assert_close(ent, ref_h)
    torch.testing.assert_close(ent_only, ref_h)
    got = torch.autograd.grad((lp2 * up1).sum() + (ent * up2).sum(), (h, w, b))
    want = torch.autograd.grad((ref_lp * up1).sum() + (ref_h * up2).sum(), (h, w, b))
    for a, e in zip(got, want):
        torch.testing.assert_close(a, e)
    for a, e in zip(_grads(ent_only, (h, w, b), up2), _grads(_naive_entropy(h, w, b, softcap), (h, w, b), up2)):
        torch.testing.assert_close(a, e)
    assert torch.allclose(LCE.linear_entropy(torch.zeros(2, 3), torch.randn(8, 3)), torch.tensor(8.0).log())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_computed_in_float32(dtype):
    h, w, b, y = _data(n=2, t=8, hdim=16, v=50, dtype=torch.float32, seed=7)
    hh, wh, bh = (t.detach().to(dtype).requires_grad_(True) for t in (h, w, b))
    out = LCE.linear_cross_entropy(hh, wh, y, bh, chunk_size=5, z_loss=1e-4)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    ref = _naive_ce(hh.float(), wh.float(), y, bh.float(), z_coef=1e-4)
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0.05)
    grads = torch.autograd.grad(out.sum(), (hh, wh, bh))
    assert [g.dtype for g in grads] == [dtype] * 3 and all(torch.isfinite(g).all() for g in grads)
    ent = LCE.linear_entropy(hh, wh, bh)
    assert ent.dtype == torch.float32 and torch.isfinite(ent).all()


class _LargestOutput(TorchDispatchMode):
    """Records the largest number of elements of any op output (what the path materialises)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


class _CountMatmuls(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls += func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_)
        return func(*args, **(kwargs or {}))


def test_never_materialises_all_logits():
    m, hdim, v, chunk = 64, 4, 1000, 8
    h = torch.randn(m, hdim, requires_grad=True)
    w = torch.randn(v, hdim, requires_grad=True)
    y = torch.randint(0, v, (m,))
    with _LargestOutput() as rec:
        LCE.linear_cross_entropy(h, w, y, chunk_size=chunk, label_smoothing=0.1).sum().backward()
    assert rec.largest <= max(chunk * v, v * hdim)  # one chunk's logits, or grad_weight
    with _LargestOutput() as naive:
        _naive_ce(h, w, y).sum().backward()
    assert naive.largest >= m * v  # the check can fail: the materialised path trips it


# ------------------------------------------------------------------------------------------- backends


def test_auto_uses_chunked_on_cpu(monkeypatch):
    h, w, b, y = _data()
    monkeypatch.setattr(CCE, "cce_available", lambda: True)  # even when the package is importable

    def no_cce(*args, **kwargs):
        raise AssertionError("cce backend must not run on CPU inputs")

    monkeypatch.setattr(CCE, "nll", no_cce)
    torch.testing.assert_close(LCE.linear_cross_entropy(h, w, y, b, impl="auto"), _naive_ce(h, w, y, b))
    with pytest.raises(RuntimeError, match=r"`impl='cce'` cannot run: it needs CUDA inputs, got `hidden` on cpu"):
        LCE.linear_cross_entropy(h, w, y, b, impl="cce")


@pytest.mark.skipif(CCE.cce_available(), reason="cut_cross_entropy is installed")
def test_cce_missing_package_error():
    h, w, b, y = _data()
    with pytest.raises(
        RuntimeError, match=r"`impl='cce'` cannot run: the `cut_cross_entropy` package is not installed"
    ):
        LCE.linear_cross_entropy(h, w, y, b, impl="cce")
    with pytest.raises(RuntimeError, match=r"cut_cross_entropy"):
        ll.build_loss("linear_cross_entropy", impl="cce")(hidden=h, weight=w, target=y)


# ------------------------------------------------------------------------------------------- module, objective


def _per_sequence(tok, y, normalization):
    """Explicit per-sequence reduction over valid tokens (the definitions of aggregate_tokens, written out)."""
    valid = (y != IGNORE).double()
    sums, counts = (tok * valid).sum(-1), valid.sum(-1)
    if normalization == "sum":
        return sums
    if normalization == "constant":
        return sums / y.shape[1]
    if normalization == "sequence":
        return sums / counts.clamp_min(1)
    return sums * (counts > 0).sum() / counts.sum()


@pytest.mark.parametrize("normalization", ["sequence", "token", "sum", "constant"])
def test_module_per_sequence(normalization):
    h, w, b, y = _data(n=4, t=5, seed=8)
    tw = torch.rand(y.shape, dtype=torch.float64)
    loss = ll.build_loss("linear_cross_entropy", normalization=normalization, label_smoothing=0.1, chunk_size=3)
    out = loss(hidden=h, weight=w, target=y, bias=b, token_weight=tw)
    ref = _per_sequence(_naive_ce(h, w, y, b, eps=0.1) * tw, y, normalization)
    torch.testing.assert_close(out, ref)
    up = torch.randn(4, dtype=torch.float64)
    for a, e in zip(_grads(out, (h, w, b), up), _grads(ref, (h, w, b), up)):
        torch.testing.assert_close(a, e)
    assert loss.sample_mask(target=y).tolist() == [True] * 4
    assert ll.build_loss("fused_linear_cross_entropy").__class__ is loss.__class__


class TinyLM(ll.LossesMixin, L.LightningModule):
    def __init__(self, vocab=20, dim=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)
        self.configure_objective({"lm": {"loss": "linear_cross_entropy", "z_loss": 1e-4, "chunk_size": 7}})

    def inputs(self, tokens):
        target = tokens[:, 1:].clone()
        target[0, -2:] = IGNORE
        hidden = torch.tanh(self.embed(tokens[:, :-1]))
        return {"hidden": hidden, "weight": self.head.weight, "bias": self.head.bias, "target": target}

    def training_step(self, batch, batch_idx):
        return self.compute_loss(**self.inputs(batch))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


def test_through_objective_and_mixin(tmp_path):
    torch.manual_seed(0)
    model = TinyLM()
    tokens = torch.randint(0, 20, (4, 9))
    loss = model.training_step(tokens, 0)
    loss.backward()
    # reference: the same objective with materialised logits, written out
    hidden = torch.tanh(model.embed(tokens[:, :-1]))
    target = tokens[:, 1:].clone()
    target[0, -2:] = IGNORE
    tok = _naive_ce(hidden.double(), model.head.weight.double(), target, model.head.bias.double(), z_coef=1e-4)
    ref = (tok * (target != IGNORE)).sum() / (target != IGNORE).sum()  # default "token": the global token mean
    torch.testing.assert_close(loss.double(), ref, atol=1e-6, rtol=1e-6)
    (gw,) = torch.autograd.grad(ref, (model.head.weight,))
    torch.testing.assert_close(model.head.weight.grad, gw.float(), atol=1e-6, rtol=1e-5)
    obj = Objective({"linear_cross_entropy": {}})
    out = obj(
        {"hidden": hidden.detach(), "weight": model.head.weight.detach(), "target": torch.full_like(target, -100)}
    )
    assert float(out.loss) == 0.0 and out.weights.sum() == 0
    # and one short fit: logs the term and trains
    trainer = L.Trainer(default_root_dir=tmp_path, accelerator="cpu", max_steps=3, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    fitted = TinyLM()
    with torch.no_grad():
        before = float(fitted.objective(fitted.inputs(tokens)).value)
    trainer.fit(fitted, torch.utils.data.DataLoader(tokens, batch_size=4))
    with torch.no_grad():
        after = float(fitted.objective(fitted.inputs(tokens)).value)
    assert trainer.global_step == 3 and after < before


# ------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_smoothing": 1.0}, r"`label_smoothing` must be in \[0.0, 1.0\), got 1.0"),
        ({"z_loss": -1}, r"`z_loss` must be >= 0.0, got -1"),
        ({"softcap": 0}, r"`softcap` must be > 0.0, got 0"),
        ({"normalization": "mean"}, r"`normalization` must be one of `token`, `sequence`, `sum`, `constant`"),
        ({"chunk_size": 0}, r"`chunk_size` must be an integer >= 1, got 0"),
        ({"impl": "liger"}, r"`impl` must be one of `auto`, `chunked`, `cce`, got 'liger'"),
        ({"ignore_index": 1.5}, r"`ignore_index` must be an integer, got 1.5"),
    ],
)
def test_constructor_validation(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        ll.build_loss("linear_cross_entropy", **kwargs)


def test_input_validation():
    h, w, b, y = _data()
    f = LCE.linear_cross_entropy
    cases = [
        (lambda: f(h[0, 0], w, y), r"`hidden` must be a floating tensor \[\.\.\., H\]"),
        (lambda: f(h, w[:, :4], y), r"`weight` must have shape \[V, H\] with H = 6 .*got \[11, 4\]"),
        (lambda: f(h, w.float(), y), r"`weight` must have the dtype and device of `hidden` \(torch.float64, cpu\)"),
        (lambda: f(h, w, y, b[:3]), r"`bias` must be a torch.float64 tensor of shape \[V\] = \[11\], got"),
        (lambda: f(h, w, y.double()), r"`target` must hold integer token ids \(int64\), got torch.float64"),
        (lambda: f(h, w, y[:, :2]), r"`target` must have shape \[3, 5\] .*got \[3, 2\]"),
        (lambda: f(h, w, y.clamp_min(0) + 11), r"`target` ids must be in \[0, 10\] \(or `ignore_index` = -100\)"),
        (lambda: f(h, w, y, token_weight=torch.ones(3)), r"`token_weight` must have shape \[3, 5\]"),
        (lambda: f(h, w, y, token_weight=torch.ones(3, 5, dtype=torch.long)), r"`token_weight` must be a floating"),
        (lambda: f(h, w, y, reduction="batchmean"), r"`reduction` must be one of \('none', 'sum', 'mean'\)"),
        (lambda: f(h, w, y, impl="x"), r"`impl` must be one of \('auto', 'chunked', 'cce'\), got 'x'"),
        (lambda: f(h, w, y, chunk_size=0), r"`chunk_size` must be a positive integer or None"),
        (lambda: f(h, w, y, label_smoothing=-0.1), r"`label_smoothing` must be in \[0, 1\), got -0.1"),
        (lambda: f(h, w, y, softcap=-1.0), r"`softcap` must be > 0 or None, got -1.0"),
        (lambda: ll.build_loss("linear_cross_entropy")(hidden=h[0], weight=w, target=y[0]), r"`hidden` must be \[N, T"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    with pytest.raises(TypeError, match=r"`weight` must be a torch.Tensor, got list"):
        f(h, [1.0], y)


def test_autocast_casts_like_linear():
    """Under autocast (Lightning's bf16-mixed) a float32 head and bfloat16 hidden states work; softmax in float32."""
    h, w, b, y = _data(n=2, t=6, hdim=16, v=40, dtype=torch.float32, seed=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = LCE.linear_cross_entropy(h.to(torch.bfloat16), w, y, b, chunk_size=5)
        ent = LCE.linear_entropy(h, w, b)
    assert out.dtype == ent.dtype == torch.float32
    hb, wb, bb = (t.detach().to(torch.bfloat16).float() for t in (h, w, b))
    torch.testing.assert_close(out, _naive_ce(hb, wb, y, bb), atol=0.05, rtol=0.02)
    gw, gb = torch.autograd.grad(out.sum() + ent.sum(), (w, b))
    assert gw.dtype == torch.float32 and torch.isfinite(gw).all() and torch.isfinite(gb).all()
    ref_gw = torch.autograd.grad(_naive_ce(h, w, y, b).sum() + _naive_entropy(h, w, b).sum(), (w,))[0]
    torch.testing.assert_close(gw, ref_gw, atol=0.05, rtol=0.05)
    with pytest.raises(ValueError, match=r"\(cast one, or run under torch.autocast\)"):
        LCE.linear_cross_entropy(h.to(torch.bfloat16), w, y)


@pytest.mark.parametrize("normalization", [None, "token", "sequence", "sum", "constant"])
def test_module_equals_token_cross_entropy_on_materialised_logits(normalization):
    """The two token losses agree (same defaults too): hidden/weight through the chunked path == logits [N, T, V]."""
    torch.manual_seed(3)
    hidden, weight = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(11, 8, dtype=torch.float64)
    target = torch.randint(0, 11, (3, 5))
    target[0, 3:] = -100
    target[2, :] = -100
    kw = {} if normalization is None else {"normalization": normalization}
    fused = ll.build_loss("linear_cross_entropy", chunk_size=4, label_smoothing=0.1, **kw)
    naive = ll.build_loss("token_cross_entropy", label_smoothing=0.1, **kw)
    got = fused(hidden=hidden, weight=weight, target=target)
    want = naive(logits=hidden @ weight.T, target=target)
    torch.testing.assert_close(got, want)
    assert torch.equal(fused.sample_mask(target=target), naive.sample_mask(target=target))


def test_linear_log_probs_take_narrow_integer_targets():
    from lightning_losses.functional.linear_ce import linear_log_probs

    g = torch.Generator().manual_seed(0)
    h, w, y = torch.randn(2, 3, 4, generator=g), torch.randn(5, 4, generator=g), torch.tensor([[0, 1, 4], [4, 2, 3]])
    expected = linear_log_probs(h, w, y)
    for dtype in (torch.int32, torch.int16, torch.uint8):
        torch.testing.assert_close(linear_log_probs(h, w, y.to(dtype)), expected)
