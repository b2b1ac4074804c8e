"""gam and fad under DDP (a real 2-process gloo group): with ``sync_ascent`` two processes equal one on the global
batch; with per-replica ascent every replica applies the same descent gradient, built from the rank-averaged
gradients (an explicit float64 loop)."""

from __future__ import annotations

import torch

from ._reference import grad_at, tiny_batch, tiny_model
from .test_ddp import LR, _ddp_steps, _same, _single_process
from .test_first_order import _unit_step, fad_descent, gam_descent

GAM = {"rho": 0.05, "norm_rho": 0.3, "alpha": 0.6, "beta": 0.2, "gamma": 0.3}
FAD = {"rho": 0.1, "alpha": 0.8, "beta": 0.7}


def test_sync_ascent_equals_one_process_on_concatenated_batch(ddp):
    for method, kwargs in (("gam", GAM), ("fad", FAD)):
        results = ddp.run(_ddp_steps, method, {**kwargs, "sync_ascent": True}, 3)
        _same(results[0], results[1], atol=0)
        _same(results[0], _single_process(method, kwargs, 3))


def _mean(a: dict, b: dict) -> dict:
    return {k: (a[k] + b[k]) / 2 for k in a}


def _per_replica_reference(method, kwargs, steps=2):
    """Each replica's own first ascent (its half batch's g0); g1, g2, g3 averaged over the replicas (synchronised
    passes); g0 averaged before it enters d = g1 - g0 and the descent rule."""
    model = tiny_model()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=LR, momentum=0.9)
    rho_fd = kwargs["rho"]
    rho_norm = kwargs.get("norm_rho", rho_fd)
    for s in range(steps):
        x, y = tiny_batch(seed=10 + s, n=8)
        halves = [(x[4 * r : 4 * r + 4], y[4 * r : 4 * r + 4]) for r in range(2)]
        w = {k: v.detach().clone() for k, v in params.items()}
        g0s = [grad_at(model, w, *h) for h in halves]
        g1 = _mean(
            *[
                grad_at(model, {k: w[k] + e[k] for k in w}, *h)
                for h, e in zip(halves, [_unit_step(g, rho_fd) for g in g0s])
            ]
        )
        g0 = _mean(*g0s)
        w2 = {k: w[k] + v for k, v in _unit_step({k: g1[k] - g0[k] for k in w}, rho_norm).items()}
        g2 = _mean(*[grad_at(model, w2, *h) for h in halves])
        w3 = {k: w2[k] + v for k, v in _unit_step(g2, rho_fd).items()}
        g3 = _mean(*[grad_at(model, w3, *h) for h in halves])
        if method == "gam":
            d = gam_descent(g0, g1, g2, g3, kwargs["alpha"], kwargs["beta"], kwargs["gamma"])
        else:
            d = fad_descent(g0, g1, g2, g3, kwargs["alpha"], kwargs["beta"])
        for k, p in params.items():
            p.grad = d[k]
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def test_per_replica_ascent_uses_the_rank_averaged_gradients(ddp):
    for method, kwargs in (("gam", GAM), ("fad", FAD)):
        results = ddp.run(_ddp_steps, method, kwargs)
        _same(results[0], results[1], atol=0)  # every replica applies the same descent gradient
        _same(results[0], _per_replica_reference(method, kwargs), atol=1e-10)
