r"""Curvature and training-health statistics, as pure functions (used by :class:`~lightning_losses.CurvatureMonitor`).

* :func:`hessian_vector_product`: ``v -> H v`` for a scalar loss and its parameters (double backward; the first
  gradient's graph is kept, so each product costs one extra backward pass).
* :func:`power_iteration`: the Hessian eigenvalue of largest magnitude, :math:`\lambda_{max}`, from Hessian-vector
  products (the Rayleigh quotient :math:`v^\top H v` of the normalised iterate), as PyHessian does; compare
  :math:`\lambda_{max}` with the gradient-descent stability threshold :math:`2/\eta` (*A Loss Curvature Perspective
  on Training Instability in Deep Learning*, Gilmer et al., ICLR 2022; edge of stability: :math:`\eta
  \lambda_{max} / 2 \to 1`).
* :func:`hutchinson_trace`: :math:`\operatorname{tr} H \approx \frac1S \sum_s v_s^\top H v_s` with Rademacher
  :math:`v_s` (Hutchinson, 1989), unbiased.
* :func:`gradient_coherence`: :math:`\alpha = \lVert \mathbb E_z g_z \rVert^2 / \mathbb E_z \lVert g_z \rVert^2` of
  per-sample gradients (*On the Generalization Mystery in Deep Learning*, Chatterjee & Zielinski, 2022): 1 when all
  samples pull the same way, about :math:`1/N` for orthogonal gradients.
* :func:`logit_health`: max logit, mean logit norm, mean max-softmax and the fraction of rows whose float32 softmax is
  one-hot (softmax collapse, *Grokking at the Edge of Numerical Stability*, Prieto et al., ICLR 2025), as sums.
* :func:`cosine`: cosine between two gradients given as lists of tensors (gradient entanglement of preference losses:
  chosen vs rejected log-probability gradients, *A Common Pitfall of Margin-based Language Model Alignment: Gradient
  Entanglement*, 2024).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = [
    "cosine",
    "gradient_coherence",
    "hessian_vector_product",
    "hutchinson_trace",
    "logit_health",
    "power_iteration",
    "rademacher_like",
    "randn_like",
]

Vectors = list[torch.Tensor]
HVP = Callable[[Sequence[torch.Tensor]], Vectors]


def hessian_vector_product(loss: torch.Tensor, params: Sequence[torch.Tensor]) -> HVP:
    """``hvp(v) -> H v`` for the scalar ``loss`` and ``params`` (``v``: one tensor per parameter).

    Parameters that ``loss`` does not depend on get zero rows. The graph of the first gradient is kept until the
    returned function is released.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> hvp = hessian_vector_product((w**3).sum(), [w])  # H = diag(6 w)
        >>> hvp([torch.tensor([1.0, 1.0])])
        [tensor([ 6., 12.])]
    """
    params = list(params)
    grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
    pairs = [(g, p) for g, p in zip(grads, params) if g is not None and g.requires_grad]

    def hvp(vectors: Sequence[torch.Tensor]) -> Vectors:
        by_param = dict(zip(map(id, params), vectors))
        if not pairs:
            return [torch.zeros_like(p) for p in params]
        out = torch.autograd.grad(
            [g for g, _ in pairs],
            [p for _, p in pairs],
            grad_outputs=[by_param[id(p)] for _, p in pairs],
            retain_graph=True,
            allow_unused=True,
        )
        got = {id(p): h for (_, p), h in zip(pairs, out)}
        return [got.get(id(p)) if got.get(id(p)) is not None else torch.zeros_like(p) for p in params]

    return hvp


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    device = a[0].device if len(a) else None
    return sum(
        ((x.double() * y.double()).sum() for x, y in zip(a, b)), torch.zeros((), dtype=torch.float64, device=device)
    )


def randn_like(like: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> Vectors:
    """Standard normal tensors shaped as ``like`` (drawn on the CPU from ``generator``: the same on every device)."""
    return [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.device, p.dtype) for p in like]


def rademacher_like(like: Sequence[torch.Tensor], generator: torch.Generator | None = None) -> Vectors:
    """Random ``±1`` tensors shaped as ``like`` (CPU ``generator``)."""
    return [
        (torch.randint(0, 2, p.shape, generator=generator, dtype=torch.int8).to(p.device, p.dtype) * 2 - 1)
        for p in like
    ]


def power_iteration(
    hvp: HVP,
    like: Sequence[torch.Tensor],
    *,
    iters: int = 20,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, Vectors, int]:
    r"""Eigenvalue of largest magnitude of the symmetric operator ``hvp`` (and its unit eigenvector) by power
    iteration: :math:`v \leftarrow Hv / \lVert Hv \rVert`, estimate :math:`v^\top H v`.

    Stops after ``iters`` products or when the estimate changes by at most ``tol`` relative to it (one host read per
    iteration: the callers run this occasionally; with an ``hvp`` that averages over ranks every rank reads the same
    values and stops at the same iteration).

    Args:
        hvp: ``v -> H v`` on lists of tensors (:func:`hessian_vector_product`).
        like: tensors giving the shapes, dtypes and devices of ``v`` (the parameters).
        iters: most Hessian-vector products. Default 20 (PyHessian's default ``maxIter=100``, ``tol=1e-3``).
        tol: relative change of the estimate that stops the iteration. Default 1e-3.
        generator: CPU generator of the random start.

    Returns:
        ``(eigenvalue float64 scalar, eigenvector, products used)``.

    Example:
        >>> A = torch.diag(torch.tensor([3.0, 1.0]))
        >>> value, _, _ = power_iteration(lambda v: [A @ v[0]], [torch.zeros(2)], iters=100, tol=0.0)
        >>> round(float(value), 4)
        3.0
    """
    v = randn_like(like, generator)
    norm = _dot(v, v).sqrt()
    v = [x / norm.to(x.dtype) for x in v]
    value = torch.zeros((), dtype=torch.float64, device=like[0].device if len(like) else None)
    used = 0
    for used in range(1, iters + 1):
        hv = hvp(v)
        new = _dot(hv, v)
        norm = _dot(hv, hv).sqrt()
        if float(norm) == 0.0:
            return new, v, used
        v = [h / norm.to(h.dtype) for h in hv]
        done = used > 1 and abs(float(new) - float(value)) <= tol * abs(float(new))
        value = new
        if done:
            break
    return value, v, used


def hutchinson_trace(
    hvp: HVP, like: Sequence[torch.Tensor], *, samples: int = 10, generator: torch.Generator | None = None
) -> torch.Tensor:
    r"""Hutchinson's estimate :math:`\frac1S \sum_{s=1}^{S} v_s^\top H v_s`, :math:`v_s` Rademacher (float64 scalar).

    Example:
        >>> A = torch.diag(torch.tensor([2.0, 3.0]))  # diagonal: every Rademacher vector gives the trace
        >>> float(hutchinson_trace(lambda v: [A @ v[0]], [torch.zeros(2)], samples=4))
        5.0
    """
    total = torch.zeros((), dtype=torch.float64, device=like[0].device if len(like) else None)
    for _ in range(samples):
        v = rademacher_like(like, generator)
        total = total + _dot(hvp(v), v)
    return total / samples


def gradient_coherence(grads: torch.Tensor) -> torch.Tensor:
    r""":math:`\lVert \frac1N \sum_i g_i \rVert^2 / (\frac1N \sum_i \lVert g_i \rVert^2)` of per-sample gradients
    ``grads [N, P]`` (0 when every gradient is 0).

    Example:
        >>> round(float(gradient_coherence(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))), 4)  # orthogonal: 1/N
        0.5
    """
    g = grads.double()
    mean_sq = g.pow(2).sum(1).mean()
    return g.mean(0).pow(2).sum() / mean_sq.clamp_min(torch.finfo(torch.float64).tiny)


def logit_health(logits: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over the rows of ``logits [N, C]`` (float64, for reduction over ranks) and the max logit.

    Returns ``{"count", "norm_sum", "max_softmax_sum", "collapsed", "max_logit"}``: rows, the sum of row L2 norms,
    the sum of max-softmax probabilities, the number of rows whose float32 softmax has a probability of exactly 1
    (one-hot to float precision: softmax collapse) and the largest logit.

    Example:
        >>> h = logit_health(torch.tensor([[0.0, 0.0], [200.0, 0.0]]))
        >>> float(h["collapsed"]), float(h["max_logit"])
        (1.0, 200.0)
    """
    z = logits.detach().float().reshape(-1, logits.shape[-1])
    p = torch.softmax(z, -1)
    top = p.amax(-1)
    return {
        "count": torch.tensor(float(z.shape[0]), dtype=torch.float64, device=z.device),
        "norm_sum": z.double().norm(dim=-1).sum(),
        "max_softmax_sum": top.double().sum(),
        "collapsed": (top == 1.0).double().sum(),
        "max_logit": z.amax().double() if z.numel() else torch.tensor(float("-inf"), dtype=torch.float64),
    }


def cosine(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> torch.Tensor:
    """Cosine between two vectors given as lists of tensors (float64; 0 when either is 0).

    Example:
        >>> float(cosine([torch.tensor([1.0, 0.0])], [torch.tensor([1.0, 1.0])]))  # doctest: +ELLIPSIS
        0.7071...
    """
    tiny = torch.finfo(torch.float64).tiny
    return _dot(a, b) / (_dot(a, a).sqrt() * _dot(b, b).sqrt()).clamp_min(tiny)
