"""The `bsam` preset: the engine's passes (noisy point, precision-scaled ascent) with the BSAM optimizer give exactly
the optimizer's own closure step (itself checked against the authors' update in test_bsam.py)."""

from __future__ import annotations

import pytest
import torch

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import BSAM, build_perturbation, perturbed_backward

HP = dict(num_data=50, lr=0.2, betas=(0.8, 0.99), rho=0.05, prior_precision=4.0, damping=0.1, s_init=2.0)


def _setup(seed=3):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randn(16, 1, generator=g, dtype=torch.float64)
    return model, BSAM(model.parameters(), generator=torch.Generator().manual_seed(seed), **HP), x, y


def test_bsam_preset_equals_the_optimizers_own_step():
    model_a, opt_a, x, y = _setup()
    model_b, opt_b, _, _ = _setup()
    engine = build_perturbation("bsam", rho=HP["rho"])

    def loss_fn():
        return torch.nn.functional.mse_loss(model_b(x), y)

    def closure():
        loss = torch.nn.functional.mse_loss(model_a(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        opt_a.step(closure)
        opt_b.zero_grad()
        perturbed_backward(engine, model_b, loss_fn, optimizer=opt_b)
        assert all(s["step"] == engine.perturbed_steps - 1 for s in opt_b.state.values())  # untouched by the passes
        opt_b.step()
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(opt_a.state[p]["precision"], opt_b.state[q]["precision"], rtol=1e-12, atol=1e-12)
    assert engine.perturbed_steps == 3 and set(engine.last_stats) >= {"grad_norm", "norm", "radius", "skipped"}


def test_bsam_preset_rho_schedule_overrides_the_optimizers_rho():
    model, opt, x, y = _setup()
    w = [p.detach().clone() for p in model.parameters()]
    engine = build_perturbation("bsam", rho=0.0)  # no ascent: the descent gradient is the one at w
    opt.zero_grad()
    perturbed_backward(engine, model, lambda: torch.nn.functional.mse_loss(model(x), y), optimizer=opt)
    got = [p.grad.clone() for p in model.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w))
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(got, model.parameters()))


def test_bsam_in_the_lightning_callback_equals_the_optimizer_alone(tmp_path):
    import lightning as L

    from tests.perturbation._lightning import loader, trainer

    class Model(ll.LossesMixin, L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Linear(4, 3)
            self.configure_objective({"cross_entropy": {}})
            self.calls = 0

        def training_step(self, batch, batch_idx):
            self.calls += 1
            x, y = batch
            return self.compute_loss(logits=self.net(x), target=y)

        def configure_optimizers(self):
            return BSAM(self.parameters(), num_data=16, lr=0.05, rho=0.02, generator=torch.Generator().manual_seed(4))

    alone, driven = Model(), Model()
    trainer([], max_steps=2, default_root_dir=tmp_path / "a").fit(alone, loader())
    trainer([ll.WeightPerturbation("bsam", rho=0.02)], max_steps=2, default_root_dir=tmp_path / "b").fit(
        driven, loader()
    )
    assert alone.calls == driven.calls == 4
    torch.testing.assert_close(alone.net.weight, driven.net.weight)
    assert not torch.equal(alone.net.weight, Model().net.weight)


def test_bsam_preset_needs_the_bsam_optimizer():
    model, _, x, y = _setup()
    engine = build_perturbation("bsam")
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigurationError, match=r"perturbation `bsam` needs the `BSAM` optimizer .*got SGD"):
        perturbed_backward(engine, model, lambda: torch.nn.functional.mse_loss(model(x), y), optimizer=sgd)
    with pytest.raises(ConfigurationError, match=r"perturbation `bsam` divides its ascent by the BSAM optimizer's"):
        perturbed_backward(engine, model, lambda: torch.nn.functional.mse_loss(model(x), y))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": 2}, r"perturbation `bsam` does not support `every_n_steps` .*got every_n_steps=2"),
        ({"params": ["*weight"]}, r"perturbation `bsam` does not support `params` .*got params=\('\*weight',\)"),
        ({"rho": -0.1}, r"`rho` must be >= 0.0, got -0.1"),
    ],
)
def test_bsam_preset_refuses_what_it_cannot_honour(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        build_perturbation("bsam", **kwargs)


def test_bayes_rule_refuses_other_ascent_settings():
    with pytest.raises(
        ConfigurationError, match=r"perturbation `bsam` does not support `scaling` .*got scaling='adaptive'"
    ):
        ll.Perturbation(rule="bayes", scaling="adaptive")


def test_bsam_preset_is_listed_with_a_documented_example():
    assert "bsam" in ll.list_perturbations()
    assert ll.perturbation.bsam.__doc__.count("Example") == 1


def _bsam_ddp_steps(steps=2):
    """Two ranks, each its own noise (generator seeded by rank) and half batch, per-replica ascent."""
    from torch.nn.parallel import DistributedDataParallel

    from lightning_losses.distributed import rank

    from ._reference import tiny_batch, tiny_model

    r = rank()
    model = tiny_model()
    ddp = DistributedDataParallel(model)
    opt = BSAM(model.parameters(), generator=torch.Generator().manual_seed(100 + r), **HP)
    engine = build_perturbation("bsam", rho=HP["rho"])
    for s in range(steps):
        x, y = tiny_batch(seed=10 + s, n=8)
        xr, yr = x[4 * r : 4 * r + 4], y[4 * r : 4 * r + 4]
        opt.zero_grad()
        loss_fn = lambda xr=xr, yr=yr: torch.nn.functional.cross_entropy(ddp(xr), yr)  # noqa: E731
        perturbed_backward(engine, ddp, loss_fn, no_sync=ddp.no_sync, optimizer=opt)
        opt.step()
    return [p.detach().clone() for p in model.parameters()], [opt.state[p]["precision"] for p in model.parameters()]


def _bsam_m_sharpness_reference(steps=2):
    """The authors' update with batchsplit 2: per sub-batch noise and perturbation, averaged g_p and sqrt(s)|g~|."""
    from torch.func import functional_call

    from ._reference import tiny_batch, tiny_model

    model = tiny_model()
    names = [n for n, _ in model.named_parameters()]
    w = [p.detach().clone() for p in model.parameters()]
    s, m = [torch.full_like(p, HP["s_init"]) for p in w], [torch.zeros_like(p) for p in w]
    gens = [torch.Generator().manual_seed(100 + r) for r in range(2)]
    n, (b1, b2), rho, delta = HP["num_data"], HP["betas"], HP["rho"], HP["prior_precision"] / HP["num_data"]

    def grad(weights, x, y):
        weights = [t.detach().requires_grad_() for t in weights]
        out = functional_call(model, dict(zip(names, weights)), (x,))
        return torch.autograd.grad(torch.nn.functional.cross_entropy(out, y), weights)

    for step in range(steps):
        x, y = tiny_batch(seed=10 + step, n=8)
        gs, gp = [torch.zeros_like(t) for t in w], [torch.zeros_like(t) for t in w]
        for r in range(2):
            xr, yr = x[4 * r : 4 * r + 4], y[4 * r : 4 * r + 4]
            noisy = [
                wi + torch.randn(wi.shape, dtype=wi.dtype, generator=gens[r]) / torch.sqrt(n * si)
                for wi, si in zip(w, s)
            ]
            g_noisy = grad(noisy, xr, yr)
            g_pert = grad([wi + rho * gi / si for wi, gi, si in zip(w, g_noisy, s)], xr, yr)
            gs = [a + torch.sqrt(si) * gi.abs() / 2 for a, si, gi in zip(gs, s, g_noisy)]
            gp = [a + gi / 2 for a, gi in zip(gp, g_pert)]
        m = [b1 * mi + (1 - b1) * (gi + delta * wi) for mi, gi, wi in zip(m, gp, w)]
        w = [wi - HP["lr"] * mi / si for wi, mi, si in zip(w, m, s)]
        s = [b2 * si + (1 - b2) * (g + HP["damping"] + delta) for si, g in zip(s, gs)]
    return w, s


def test_bsam_under_ddp_is_the_authors_m_sharpness_and_keeps_ranks_identical(ddp):
    results = ddp.run(_bsam_ddp_steps)
    w_ref, s_ref = _bsam_m_sharpness_reference()
    for w, s in results:
        for a, b in zip(w + s, w_ref + s_ref):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_bsam_preset_under_a_grad_scaler_equals_the_unscaled_step():
    """The noisy gradient is unscaled before the ascent and the precision term; `scaler.step` unscales g_p."""
    model_a, opt_a, x, y = _setup()
    model_b, opt_b, _, _ = _setup()
    engine_a, engine_b = build_perturbation("bsam", rho=HP["rho"]), build_perturbation("bsam", rho=HP["rho"])
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    for _ in range(2):
        opt_a.zero_grad()
        perturbed_backward(engine_a, model_a, lambda: torch.nn.functional.mse_loss(model_a(x), y), optimizer=opt_a)
        opt_a.step()
        opt_b.zero_grad()
        perturbed_backward(
            engine_b,
            model_b,
            lambda: torch.nn.functional.mse_loss(model_b(x), y),
            backward=lambda loss: scaler.scale(loss).backward(),
            grad_scaler=scaler,
            optimizer=opt_b,
        )
        scaler.step(opt_b)
        scaler.update()
    for p, q in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(opt_a.state[p]["precision"], opt_b.state[q]["precision"], rtol=1e-10, atol=1e-12)
