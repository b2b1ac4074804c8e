r"""The chunked linear cross-entropy autograd function behind :mod:`lightning_losses.functional.linear_ce`.

For flat hidden states ``x [M, H]``, output weight ``W [V, H]``, optional bias ``b [V]`` and targets ``y [M]`` the
logits :math:`z = \mathrm{cap}(x W^\top + b)` (softcap :math:`s\tanh(\cdot/s)` when set) are only ever formed for one
chunk of ``C`` tokens at a time. The forward keeps the per-token log-sum-exp :math:`\ell = \log\sum_v e^{z_v}` (and
the entropy when asked); the backward recomputes each chunk's logits and accumulates ``grad_x``, ``grad_W`` and
``grad_b`` from the per-token upstream gradients, so any upstream gradient ``[M]`` (per-token weights, per-sequence
normalisation, reweighting) gets the exact gradient. When only ``x`` needs a gradient (a frozen head, as in LoRA),
``grad_x_t = g_t (\partial L_t/\partial z_t) W`` is separable per token: the forward computes the unscaled rows
``[M, H]`` and the backward only scales them (two matmuls in all, as the materialised path).

Per token (valid targets only; 0 elsewhere), with label smoothing :math:`\epsilon` and z-loss coefficient :math:`c`:

.. math:: L = \ell - (1-\epsilon) z_y - \tfrac{\epsilon}{V}\textstyle\sum_v z_v + c\,\ell^2,\qquad
    \partial L/\partial z_v = p_v (1 + 2c\ell) - (1-\epsilon)[v = y] - \epsilon/V

and the entropy :math:`H = \ell - \sum_v p_v z_v` with :math:`\partial H/\partial z_v = -p_v(\log p_v + H)`.
Matmuls run in the input dtype (float32 accumulation for half dtypes); everything after them runs in float32
(float64 for float64 inputs); ``grad_W`` / ``grad_b`` of half inputs are accumulated in float32.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

__all__ = ["ChunkedLinearCE", "default_chunk_size"]

_CHUNK_ELEMENTS = 1 << 25  # logits per chunk: 128 MiB in float32


def default_chunk_size(num_tokens: int, vocab: int) -> int:
    """Tokens per chunk so that a chunk's float32 logits take about 128 MiB (at least 1, at most ``num_tokens``).

    Example:
        >>> default_chunk_size(4096, 131072), default_chunk_size(4096, 32000), default_chunk_size(10, 100)
        (256, 1048, 10)
    """
    return max(1, min(num_tokens, _CHUNK_ELEMENTS // max(1, vocab)))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


class _Buffers:
    """Chunk-sized work buffers allocated once per pass and reused (no allocator churn, no page faults per chunk)."""

    def __init__(self, x: torch.Tensor, w: torch.Tensor, chunk: int, count: int, softcap: float | None) -> None:
        rows, vocab = min(chunk, x.shape[0]), w.shape[0]
        cdtype = _compute_dtype(x.dtype)
        new = lambda dtype: torch.empty(rows, vocab, dtype=dtype, device=x.device)  # noqa: E731
        self.work = [new(cdtype) for _ in range(count)]
        self.half = new(x.dtype) if x.dtype != cdtype else None
        self.deriv = new(cdtype) if softcap is not None else None

    def logits(self, x, w, b, softcap, s, e):
        """Chunk ``[s, e)``'s logits (compute dtype) in ``work[0]``, the softcap derivative in ``deriv``."""
        rows = e - s
        z = self.work[0][:rows]
        out = z if self.half is None else self.half[:rows]
        if b is not None:
            torch.addmm(b, x[s:e], w.t(), out=out)
        else:
            torch.mm(x[s:e], w.t(), out=out)
        if self.half is not None:
            z.copy_(out)
        if softcap is not None:
            t = z.div_(softcap).tanh_()
            d = self.deriv[:rows]
            torch.mul(t, t, out=d).neg_().add_(1.0)
            t.mul_(softcap)
            return z, d
        return z, None

    def project(self, d: torch.Tensor, deriv: torch.Tensor | None, w: torch.Tensor) -> torch.Tensor:
        """``(d * deriv) @ w`` for a chunk's gradient w.r.t. the logits (matmul in the input dtype)."""
        if deriv is not None:
            d.mul_(deriv)
        dm = d if self.half is None else self.half[: d.shape[0]].copy_(d)
        return dm @ w


class ChunkedLinearCE(torch.autograd.Function):
    """``(loss [M], entropy [M] or [0]) = ChunkedLinearCE.apply(x, w, b, y, valid, eps, z_coef, softcap, chunk,
    want_loss, want_entropy)``; ``y`` holds valid class ids (clamped), ``valid`` is the bool mask of counted tokens."""

    @staticmethod
    def forward(ctx, x, w, b, y, valid, eps, z_coef, softcap, chunk, want_loss, want_entropy):
        m, vocab = x.shape[0], w.shape[0]
        cdtype = _compute_dtype(x.dtype)
        lse = torch.empty(m, dtype=cdtype, device=x.device)
        loss = torch.zeros(m if want_loss else 0, dtype=cdtype, device=x.device)
        ent = torch.empty(m if want_entropy else 0, dtype=cdtype, device=x.device)
        # frozen head (only hidden needs a gradient): grad_x_t = g_t * (dL_t/dz_t) @ W is separable per token, so the
        # unscaled rows are computed here and the backward only scales them (no recompute, matmul count as naive)
        eager = (
            ctx.needs_input_grad[0] and not ctx.needs_input_grad[1] and not (b is not None and ctx.needs_input_grad[2])
        )
        gx_l = torch.empty(x.shape if eager and want_loss else 0, dtype=cdtype, device=x.device)
        gx_h = torch.empty(x.shape if eager and want_entropy else 0, dtype=cdtype, device=x.device)
        with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            bufs = _Buffers(x, w, chunk, 2 if want_entropy else 1, softcap) if m else None
            for s in range(0, m, chunk):
                e = min(s + chunk, m)
                z, deriv = bufs.logits(x, w, b, softcap, s, e)
                if want_loss:
                    tok = z.gather(1, y[s:e, None]).squeeze(1).mul_(-(1.0 - eps))
                    if eps:
                        tok.sub_(z.sum(-1), alpha=eps / vocab)
                zmax = z.amax(-1)
                if want_entropy:
                    ex = torch.sub(z, zmax[:, None], out=bufs.work[1][: e - s]).exp_()
                    total = ex.sum(-1)
                    pz = torch.bmm(ex.unsqueeze(1), z.unsqueeze(2)).view(-1).div_(total)
                else:
                    ex = z.sub_(zmax[:, None]).exp_()
                    total = ex.sum(-1)
                lse_c = torch.log(total).add_(zmax)
                lse[s:e] = lse_c
                if want_entropy:
                    ent[s:e] = ent_c = lse_c - pz
                if want_loss:
                    tok.add_(lse_c)
                    if z_coef:
                        tok.add_(lse_c.square(), alpha=z_coef)
                    loss[s:e] = tok.masked_fill_(~valid[s:e], 0.0)
                if eager and want_entropy:  # dH/dz = -p (log p + H), p = ex / total, log p = z - lse
                    d_h = z.sub_(lse_c[:, None]).add_(ent_c[:, None]).mul_(ex).div_(-total[:, None])
                    gx_h[s:e] = bufs.project(d_h, deriv, w)
                if eager and want_loss:  # dL/dz = p (1 + 2c lse) - (1 - eps) onehot(y) - eps / V
                    scale = (1.0 + 2.0 * z_coef * lse_c) / total if z_coef else total.reciprocal()
                    d_l = ex.mul_(scale[:, None])
                    d_l[torch.arange(e - s, device=x.device), y[s:e]] -= 1.0 - eps
                    if eps:
                        d_l.sub_(eps / vocab)
                    gx_l[s:e] = bufs.project(d_l, deriv, w)
            del bufs
        ctx.save_for_backward(x, w, b, y, valid, lse, ent, gx_l, gx_h)
        ctx.opts = (eps, z_coef, softcap, chunk, want_loss, want_entropy, eager)
        ctx.device_type = x.device.type
        ctx.set_materialize_grads(False)
        if not want_loss:
            ctx.mark_non_differentiable(loss)
        if not want_entropy:
            ctx.mark_non_differentiable(ent)
        return loss, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_ent):
        with torch.autocast(ctx.device_type, enabled=False):
            return ChunkedLinearCE._backward(ctx, grad_loss, grad_ent)

    @staticmethod
    def _backward(ctx, grad_loss, grad_ent):
        x, w, b, y, valid, lse, ent, gx_l, gx_h = ctx.saved_tensors
        eps, z_coef, softcap, chunk, want_loss, want_entropy, eager = ctx.opts
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = b is not None and ctx.needs_input_grad[2]
        grad_loss = grad_loss if want_loss else None
        grad_ent = grad_ent if want_entropy else None
        if (grad_loss is None and grad_ent is None) or not (need_x or need_w or need_b):
            return (None,) * 11
        m, vocab = x.shape[0], w.shape[0]
        cdtype = lse.dtype
        if eager:
            gx = torch.zeros(x.shape, dtype=cdtype, device=x.device)
            if grad_loss is not None:
                gx.addcmul_(grad_loss.to(cdtype).masked_fill(~valid, 0.0)[:, None], gx_l)
            if grad_ent is not None:
                gx.addcmul_(grad_ent.to(cdtype)[:, None], gx_h)
            return (gx.to(x.dtype),) + (None,) * 10
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        grad_w = torch.zeros(w.shape, dtype=cdtype, device=w.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=cdtype, device=w.device) if need_b else None
        if grad_loss is not None:  # dL/dz = p * a - (1 - eps) * onehot(y) - eps / V, times the upstream gradient
            g_l = grad_loss.to(cdtype).masked_fill(~valid, 0.0)
            a = g_l * (1.0 + 2.0 * z_coef * lse) if z_coef else g_l
        if grad_ent is not None:
            g_h = grad_ent.to(cdtype)
        bufs = _Buffers(x, w, chunk, 2 if grad_ent is not None else 1, softcap) if m else None
        for s in range(0, m, chunk):
            e = min(s + chunk, m)
            rows = e - s
            z, deriv = bufs.logits(x, w, b, softcap, s, e)
            logp = z.sub_(lse[s:e, None])
            if grad_ent is not None:  # dH/dz = -p * (log p + H), in work[0]; p in work[1]
                p = torch.exp(logp, out=bufs.work[1][:rows])
                g = logp.add_(ent[s:e, None]).mul_(p).mul_(-g_h[s:e, None])
                if grad_loss is not None:
                    g.addcmul_(p, a[s:e, None])
            else:
                g = logp.exp_().mul_(a[s:e, None])
            if grad_loss is not None:
                g[torch.arange(rows, device=x.device), y[s:e]] -= (1.0 - eps) * g_l[s:e]
                if eps:
                    g.sub_(g_l[s:e, None], alpha=eps / vocab)
            if deriv is not None:
                g.mul_(deriv)
            gm = g if bufs.half is None else bufs.half[:rows].copy_(g)
            if need_x:
                torch.mm(gm, w, out=grad_x[s:e])
            if need_w:
                grad_w.addmm_(g.t(), x[s:e].to(cdtype))
            if need_b:
                grad_b.add_(g.sum(0))
        del bufs
        grad_w = grad_w.to(w.dtype) if grad_w is not None else None
        grad_b = grad_b.to(b.dtype) if grad_b is not None else None
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None, None
