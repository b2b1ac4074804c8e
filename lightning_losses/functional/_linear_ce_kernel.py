r"""The chunked linear cross-entropy autograd function behind :mod:`lightning_losses.functional.linear_ce`.

For flat hidden states ``x [M, H]``, output weight ``W [V, H]``, optional bias ``b [V]`` and targets ``y [M]`` the
logits :math:`z = \mathrm{cap}(x W^\top + b)` (softcap :math:`s\tanh(\cdot/s)` when set) are only ever formed for one
chunk of ``C`` tokens at a time. The forward keeps the per-token log-sum-exp :math:`\ell = \log\sum_v e^{z_v}` (and
the entropy when asked); the backward recomputes each chunk's logits and accumulates ``grad_x``, ``grad_W`` and
``grad_b`` from the per-token upstream gradients, so any upstream gradient ``[M]`` (per-token weights, per-sequence
normalisation, reweighting) gets the exact gradient.

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

_CHUNK_ELEMENTS = 1 << 24  # logits per chunk: 64 MiB in float32


def default_chunk_size(num_tokens: int, vocab: int) -> int:
    """Tokens per chunk so that a chunk's float32 logits take about 64 MiB (at least 1, at most ``num_tokens``).

    Example:
        >>> default_chunk_size(4096, 131072), default_chunk_size(4096, 32000), default_chunk_size(10, 100)
        (128, 524, 10)
    """
    return max(1, min(num_tokens, _CHUNK_ELEMENTS // max(1, vocab)))


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _chunk_logits(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, softcap: float | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(z, dz/draw)`` of one chunk: logits in the compute dtype and the softcap derivative (``None`` without cap)."""
    z = torch.addmm(b, x, w.t()) if b is not None else x @ w.t()
    z = z.to(_compute_dtype(z.dtype))
    if softcap is None:
        return z, None
    t = z.div_(softcap).tanh_()
    deriv = 1.0 - t.square()
    return t.mul_(softcap), deriv


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
        with torch.no_grad():
            for s in range(0, m, chunk):
                e = min(s + chunk, m)
                z, _ = _chunk_logits(x[s:e], w, b, softcap)
                lse[s:e] = torch.logsumexp(z, dim=-1)
                if want_loss:
                    zy = z.gather(1, y[s:e, None]).squeeze(1)
                    tok = lse[s:e] - (1.0 - eps) * zy
                    if eps:
                        tok = tok - (eps / vocab) * z.sum(-1)
                    if z_coef:
                        tok = tok + z_coef * lse[s:e].square()
                    loss[s:e] = torch.where(valid[s:e], tok, torch.zeros_like(tok))
                if want_entropy:
                    p = z.sub(lse[s:e, None]).exp_()
                    ent[s:e] = lse[s:e] - torch.bmm(p.unsqueeze(1), z.unsqueeze(2)).view(-1)
                del z
        ctx.save_for_backward(x, w, b, y, valid, lse, ent)
        ctx.opts = (eps, z_coef, softcap, chunk, want_loss, want_entropy)
        ctx.set_materialize_grads(False)
        if not want_loss:
            ctx.mark_non_differentiable(loss)
        if not want_entropy:
            ctx.mark_non_differentiable(ent)
        return loss, ent

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_ent):
        x, w, b, y, valid, lse, ent = ctx.saved_tensors
        eps, z_coef, softcap, chunk, want_loss, want_entropy = ctx.opts
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = b is not None and ctx.needs_input_grad[2]
        grad_loss = grad_loss if want_loss else None
        grad_ent = grad_ent if want_entropy else None
        if (grad_loss is None and grad_ent is None) or not (need_x or need_w or need_b):
            return (None,) * 11
        m, vocab = x.shape[0], w.shape[0]
        cdtype = lse.dtype
        grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device) if need_x else None
        grad_w = torch.zeros(w.shape, dtype=cdtype, device=w.device) if need_w else None
        grad_b = torch.zeros(vocab, dtype=cdtype, device=w.device) if need_b else None
        # per-token factors: L's gradient is p * a - (1 - eps) * onehot - eps / V, scaled by the upstream gradient
        if grad_loss is not None:
            g_l = torch.where(valid, grad_loss.to(cdtype), torch.zeros((), dtype=cdtype, device=x.device))
            a = g_l * (1.0 + 2.0 * z_coef * lse) if z_coef else g_l
        for s in range(0, m, chunk):
            e = min(s + chunk, m)
            z, deriv = _chunk_logits(x[s:e], w, b, softcap)
            logp = z.sub_(lse[s:e, None])
            p = logp.exp()
            if grad_ent is not None:
                h_term = logp.add_(ent[s:e, None]).mul_(p).mul_(-grad_ent[s:e, None].to(cdtype))
            if grad_loss is not None:
                g = p.mul_(a[s:e, None])
                rows = torch.arange(e - s, device=x.device)
                g[rows, y[s:e]] -= (1.0 - eps) * g_l[s:e]
                if eps:
                    g.sub_((eps / vocab) * g_l[s:e, None])
                if grad_ent is not None:
                    g.add_(h_term)
            else:
                g = h_term
            del p, logp, z
            if deriv is not None:
                g.mul_(deriv)
                del deriv
            gm = g.to(x.dtype)
            if need_x:
                torch.mm(gm, w, out=grad_x[s:e])
            if need_w:
                grad_w.addmm_(g.t(), x[s:e].to(cdtype))
            if need_b:
                grad_b.add_(g.sum(0))
            del g, gm
        grad_w = grad_w.to(w.dtype) if grad_w is not None else None
        grad_b = grad_b.to(b.dtype) if grad_b is not None else None
        return grad_x, grad_w, grad_b, None, None, None, None, None, None, None, None
