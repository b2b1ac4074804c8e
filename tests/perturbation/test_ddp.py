"""DDP semantics of the ascent in a real 2-process gloo group (plain ``DistributedDataParallel`` + the engine)."""

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lightning_losses.distributed import rank
from lightning_losses.perturbation import build_perturbation, perturbed_backward
from tests.helpers.ddp import lightning_env

from ._reference import amp_eps, descent_grad, grad_at, sam_eps, tiny_batch, tiny_model

LR = 0.1


def _ddp_steps(method, kwargs, steps=2):
    r = rank()
    model = tiny_model()
    ddp = DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    engine = build_perturbation(method, **kwargs)
    for s in range(steps):
        x, y = tiny_batch(seed=10 + s, n=8)
        xr, yr = x[4 * r : 4 * r + 4], y[4 * r : 4 * r + 4]
        opt.zero_grad()
        perturbed_backward(
            engine,
            ddp,
            lambda xr=xr, yr=yr: nn.functional.cross_entropy(ddp(xr), yr),
            no_sync=ddp.no_sync,
            optimizer=opt,
        )
        opt.step()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _single_process(method, kwargs, steps=2):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9)
    engine = build_perturbation(method, **kwargs)
    for s in range(steps):
        x, y = tiny_batch(seed=10 + s, n=8)
        opt.zero_grad()
        loss_fn = lambda x=x, y=y: nn.functional.cross_entropy(model(x), y)  # noqa: E731
        perturbed_backward(engine, model, loss_fn, optimizer=opt)
        opt.step()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _per_replica_reference(eps_fn, steps=2):
    """Each replica's own ascent on its half batch, then the average of the two descent gradients."""
    model = tiny_model()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=LR, momentum=0.9)
    for s in range(steps):
        x, y = tiny_batch(seed=10 + s, n=8)
        w = {k: v.detach().clone() for k, v in params.items()}
        grads = []
        for r in range(2):
            xr, yr = x[4 * r : 4 * r + 4], y[4 * r : 4 * r + 4]
            eps = eps_fn(model, w, grad_at(model, w, xr, yr), xr, yr)
            grads.append(descent_grad(model, w, eps, xr, yr))
        for k, p in params.items():
            p.grad = (grads[0][k] + grads[1][k]) / 2
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def _same(a, b, atol=1e-12):
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-10, msg=k)


def test_sync_ascent_equals_one_process_on_concatenated_batch(ddp):
    for method, kwargs in (("sam", {"rho": 0.5}), ("adversarial_model_perturbation", {"epsilon": 0.1})):
        results = ddp.run(_ddp_steps, method, {**kwargs, "sync_ascent": True})
        _same(results[0], results[1], atol=0)
        _same(results[0], _single_process(method, kwargs))


def test_per_replica_ascent_then_averaged_descent(ddp):
    cases = (
        ("sam", {"rho": 0.5}, lambda m, w, g, x, y: sam_eps(g, 0.5)),
        ("adversarial_model_perturbation", {"epsilon": 0.1}, lambda m, w, g, x, y: amp_eps(m, w, x, y, 0.1, 1.0, 1)),
    )
    for method, kwargs, eps_fn in cases:
        results = ddp.run(_ddp_steps, method, kwargs)  # sync_ascent=False is the default
        _same(results[0], results[1], atol=0)  # replicas hold identical weights after restore + step
        _same(results[0], _per_replica_reference(eps_fn))
        # and it is a different method from the synchronised ascent (the ascent forward ran without sync)
        assert not torch.allclose(results[0]["0.weight"], _single_process(method, kwargs)["0.weight"], atol=1e-8)


def test_looksam_under_ddp_keeps_replicas_identical(ddp):
    results = ddp.run(_ddp_steps, "sam", {"rho": 0.5, "every_n_steps": 2, "reuse_alpha": 0.7}, 3)
    _same(results[0], results[1], atol=0)


# ---------------------------------------------------------------- the one real 2-process Trainer run


def _lightning_ddp_run(sync_ascent=False):

    import lightning as L

    import lightning_losses as ll

    from ._lightning import Tiny, loader, trainer

    class Recorder(L.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.seen.append((batch[0].double().clone(), batch[1].clone()))

    with lightning_env():
        model, rec = Tiny(), Recorder()
        t = trainer([ll.SAM(rho=0.5, sync_ascent=sync_ascent), rec], max_steps=2, strategy="ddp", devices=2)
        t.fit(model, loader(4, n=16))  # Lightning's DistributedSampler: disjoint shuffled shards
        return {k: v.detach().double().clone() for k, v in model.net.named_parameters()}, rec.seen


def _lightning_references(seen0, seen1):
    """Weights after the two steps: each replica's own ascent with averaged descent, and one ascent on the
    concatenated batch (what ``sync_ascent=True`` and a single process give)."""
    model = tiny_model()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=LR, momentum=0.9)
    synced = tiny_model()
    synced_params = dict(synced.named_parameters())
    synced_opt = torch.optim.SGD(synced_params.values(), lr=LR, momentum=0.9)
    for s in range(2):
        shards = [seen0[s], seen1[s]]
        w = {k: v.detach().clone() for k, v in params.items()}
        grads = []
        for x, y in shards:
            grads.append(descent_grad(model, w, sam_eps(grad_at(model, w, x, y), 0.5), x, y))
        for k, p in params.items():
            p.grad = (grads[0][k] + grads[1][k]) / 2
        opt.step()
        ws = {k: v.detach().clone() for k, v in synced_params.items()}
        x, y = torch.cat([shards[0][0], shards[1][0]]), torch.cat([shards[0][1], shards[1][1]])
        g2 = descent_grad(synced, ws, sam_eps(grad_at(synced, ws, x, y), 0.5), x, y)
        for k, p in synced_params.items():
            p.grad = g2[k]
        synced_opt.step()
    return {k: v.detach() for k, v in params.items()}, {k: v.detach() for k, v in synced_params.items()}


def test_lightning_ddp_callback_ascent_is_per_replica(ddp):
    """The callback under Lightning's DDP strategy: the whole first pass (forward included) runs in
    ``block_backward_sync``, so each replica perturbs with its own gradient; the descent gradient is averaged."""
    (w0, seen0), (w1, seen1) = ddp.run(_lightning_ddp_run)
    _same(w0, w1, atol=0)
    assert len(seen0) == len(seen1) == 2 and not torch.equal(seen0[0][0], seen1[0][0])
    per_replica, synced = _lightning_references(seen0, seen1)
    for k, v in per_replica.items():
        torch.testing.assert_close(w0[k], v, atol=1e-6, rtol=0, msg=k)
    # a synchronised ascent (what a backward-only no_sync gives) is a different method
    assert not torch.allclose(w0["0.weight"], synced["0.weight"], atol=1e-5)


def test_lightning_ddp_sync_ascent_equals_one_process_on_concatenated_batch(ddp):
    """``sync_ascent=True`` in a real 2-process Lightning DDP run: one ascent from the all-reduced gradient, i.e.
    the step of one process on the concatenated batch."""
    (w0, seen0), (w1, seen1) = ddp.run(_lightning_ddp_run, True)
    _same(w0, w1, atol=0)
    per_replica, synced = _lightning_references(seen0, seen1)
    for k, v in synced.items():
        torch.testing.assert_close(w0[k], v, atol=1e-6, rtol=0, msg=k)
    assert not torch.allclose(w0["0.weight"], per_replica["0.weight"], atol=1e-5)


# ---------------------------------------------------------------- SAM variants (descent / direction rules)


def test_sam_variants_sync_ascent_equal_one_process_on_concatenated_batch(ddp):
    """gsam's and wsam's global inner products and norms, friendly_sam's momentum and esam's draws: with
    ``sync_ascent`` two processes equal one on the global batch (3 steps)."""
    cases = (
        ("gsam", {"rho": 0.5, "alpha": 0.4}),
        ("wsam", {"rho": 0.5, "gamma": 0.8}),
        ("friendly_sam", {"rho": 0.5, "lmbda": 0.6}),
        ("esam", {"rho": 0.5, "beta": 0.5, "gamma": 1.0}),
    )
    for method, kwargs in cases:
        results = ddp.run(_ddp_steps, method, {**kwargs, "sync_ascent": True}, 3)
        _same(results[0], results[1], atol=0)
        _same(results[0], _single_process(method, kwargs, 3))


def _gsam_per_replica_reference(rho, alpha, steps=2):
    """Per-replica ascent; the decomposition on the rank-averaged g and g_p (what every replica then applies)."""
    model = tiny_model()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=LR, momentum=0.9)
    for s in range(steps):
        x, y = tiny_batch(seed=10 + s, n=8)
        w = {k: v.detach().clone() for k, v in params.items()}
        gs, gps = [], []
        for r in range(2):
            xr, yr = x[4 * r : 4 * r + 4], y[4 * r : 4 * r + 4]
            g = grad_at(model, w, xr, yr)
            gs.append(g)
            gps.append(descent_grad(model, w, sam_eps(g, rho), xr, yr))
        g = {k: (gs[0][k] + gs[1][k]) / 2 for k in w}
        gp = {k: (gps[0][k] + gps[1][k]) / 2 for k in w}
        dot = sum(float((g[k] * gp[k]).sum()) for k in w)
        gp2 = sum(float((gp[k] ** 2).sum()) for k in w)
        for k, p in params.items():
            p.grad = gp[k] - alpha * (g[k] - dot / (gp2 + 1e-12) * gp[k])
        opt.step()
    return {k: v.detach() for k, v in params.items()}


def test_gsam_per_replica_ascent_decomposes_the_averaged_gradients(ddp):
    results = ddp.run(_ddp_steps, "gsam", {"rho": 0.5, "alpha": 0.4})
    _same(results[0], results[1], atol=0)  # every replica applies the same descent gradient
    _same(results[0], _gsam_per_replica_reference(0.5, 0.4))
