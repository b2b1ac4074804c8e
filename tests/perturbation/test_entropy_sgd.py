"""Entropy-SGD: the callback inside a Trainer against an explicit float64 loop of the Langevin inner loop and the
outer step; optimizer state, DDP (replica-local inner loops, ranks identical), resume and argument checks."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Subset

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from tests.helpers.ddp import lightning_env

from ._lightning import Tiny, data, data_batches, trainer
from ._reference import loss_at, tiny_model


def _grad(model, w, x, y):
    w = {k: v.detach().clone().requires_grad_(True) for k, v in w.items()}
    return dict(zip(w, torch.autograd.grad(loss_at(model, w, x, y), list(w.values()))))


def esgd_reference(shards, inner_steps, gamma, scoping, inner_lr, beta1, optimizer="sgd"):
    """Float64: for each outer step, each rank's Langevin loop over its next L batches; the optimizer steps on the
    rank average of x - mu. ``shards``: per rank, the list of its ``(x, y)`` batches in order."""
    model = tiny_model(dtype=torch.float64)
    params = dict(model.named_parameters())
    if optimizer == "adamw":
        opt = torch.optim.AdamW(params.values(), lr=0.1, weight_decay=0.01)
    else:
        opt = torch.optim.SGD(params.values(), lr=0.1, momentum=0.9)
    n_outer = len(shards[0]) // inner_steps
    for t in range(n_outer):
        x0 = {k: v.detach().clone() for k, v in params.items()}
        outers = []
        for batches in shards:
            xp = {k: v.clone() for k, v in x0.items()}
            mu = {k: v.clone() for k, v in x0.items()}
            g_t = gamma * (1 + scoping) ** t
            for xb, yb in batches[t * inner_steps : (t + 1) * inner_steps]:
                g = _grad(model, xp, xb, yb)
                for k in xp:
                    xp[k] = xp[k] - inner_lr * (g[k] - g_t * (x0[k] - xp[k]))
                    mu[k] = beta1 * mu[k] + (1 - beta1) * xp[k]
            outers.append({k: x0[k] - mu[k] for k in x0})
        for k, p in params.items():
            p.grad = sum(o[k] for o in outers) / len(outers)
        opt.step()
    return {f"net.{k}": v.detach() for k, v in params.items()}, opt


KW = dict(inner_steps=3, gamma=0.5, scoping=0.2, inner_lr=0.3, beta1=0.75, noise=0.0)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_matches_float64_loop_and_optimizer_steps_once_per_outer_step(optimizer):
    model = Tiny(optimizer=optimizer)
    cb = ll.EntropySGD(**KW)
    t = trainer([cb], max_epochs=1, precision="64-true")
    t.fit(model, DataLoader(data(24), batch_size=4, shuffle=False))  # 6 batches: 2 outer steps of 3
    assert t.global_step == 2 and cb.outer_steps == 2 and model.training_step_calls == 6
    expected, opt = esgd_reference(
        [data_batches(24, 4)], **{k: v for k, v in KW.items() if k != "noise"}, optimizer=optimizer
    )
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k], atol=1e-10, rtol=0, msg=k)
    if optimizer == "adamw":  # the inner loop never reached the optimizer: its step counter counts outer steps
        state = t.optimizers[0].state
        assert all(int(state[p]["step"]) == 2 for p in model.parameters())
    assert t.accumulate_grad_batches == 1  # put back after fit


def test_noise_is_drawn_and_scaled():
    runs = []
    for noise in (0.0, 1e-2):
        model = Tiny()
        trainer([ll.EntropySGD(**{**KW, "noise": noise})], max_epochs=1).fit(
            model, DataLoader(data(24), batch_size=4, shuffle=False)
        )
        runs.append(model.net[0].weight.detach().clone())
    diff = float((runs[0] - runs[1]).abs().max())
    assert 1e-5 < diff < 1.0  # the noise moves x' (hence mu, hence the step), by about its scale


def _fit(callback, max_epochs, ckpt_in=None, ckpt_out=None):
    model = Tiny()
    t = trainer([callback], max_epochs=max_epochs)
    t.fit(model, DataLoader(data(24), batch_size=4, shuffle=False), ckpt_path=ckpt_in)
    if ckpt_out is not None:
        t.save_checkpoint(ckpt_out)
    return model, callback


def test_crash_and_resume_matches_uninterrupted_run(tmp_path):
    def make():
        return ll.EntropySGD(inner_steps=3, gamma=0.5, scoping=0.2, noise=1e-2, seed=3)

    full, cb_full = _fit(make(), max_epochs=2)  # 4 outer steps; the noise and gamma_t depend on the step
    _fit(make(), max_epochs=1, ckpt_out=tmp_path / "e1.ckpt")
    resumed, cb = _fit(make(), max_epochs=2, ckpt_in=tmp_path / "e1.ckpt")
    for (k, a), b in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    assert cb.outer_steps == cb_full.outer_steps == 4  # the callback's counters came back from the checkpoint
    state = torch.load(tmp_path / "e1.ckpt", weights_only=False)["callbacks"][cb.state_key]
    assert state == {"skipped": 0, "outer_steps": 2}


def test_checkpoint_and_validation_inside_an_outer_step_see_x(tmp_path):
    """A validation run mid outer step (val_check_interval in batches) evaluates x; x' is put back afterwards."""
    seen = []
    initial = Tiny().net[0].weight.detach().double()  # the same seeded initialisation as `model`'s

    class Probe(L.Callback):
        def on_validation_start(self, trainer, pl_module):
            seen.append(pl_module.net[0].weight.detach().clone())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if batch_idx == 1:  # 2 of the first outer step's 3 inner steps taken: the weights are x'
                assert not torch.allclose(pl_module.net[0].weight, initial)
                trainer.save_checkpoint(tmp_path / "mid.ckpt")

    class WithVal(Tiny):
        def validation_step(self, batch, batch_idx):
            return None

    cb = ll.EntropySGD(**KW)
    model = WithVal()
    t = trainer([cb, Probe()], max_epochs=1, val_check_interval=2, num_sanity_val_steps=0, precision="64-true")
    loader = DataLoader(data(24), batch_size=4, shuffle=False)
    t.fit(model, loader, loader)
    expected, _ = esgd_reference([data_batches(24, 4)], **{k: v for k, v in KW.items() if k != "noise"})
    for k, v in model.named_parameters():  # the run is unchanged by the validations in its middle
        torch.testing.assert_close(v.detach(), expected[k], atol=1e-10, rtol=0, msg=k)
    x1, _ = esgd_reference([data_batches(24, 4)[:3]], **{k: v for k, v in KW.items() if k != "noise"})
    # validation after batch 4 (inside the second outer step) sees x after the first outer step
    assert any(torch.allclose(s, x1["net.0.weight"], atol=1e-10, rtol=0) for s in seen)
    saved = torch.load(tmp_path / "mid.ckpt", weights_only=False)["state_dict"]["net.0.weight"]
    torch.testing.assert_close(saved, initial, atol=0, rtol=0)  # the checkpoint holds x, not the Langevin iterate


def _ddp_run(kw):
    from lightning_losses.distributed import rank

    r = rank()
    with lightning_env():
        model = Tiny()
        cb = ll.EntropySGD(**kw)
        t = trainer([cb], max_epochs=1, strategy="ddp", devices=2, use_distributed_sampler=False, precision="64-true")
        shard = Subset(data(24), list(range(12 * r, 12 * r + 12)))
        t.fit(model, DataLoader(shard, batch_size=4, shuffle=False))
        return {k: v.detach().clone() for k, v in model.named_parameters()}, t.global_step


@pytest.mark.ddp
def test_ddp_replica_local_inner_loops_and_averaged_outer_gradient(ddp):
    (w0, s0), (w1, s1) = ddp.run(_ddp_run, KW)
    assert s0 == s1 == 1
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], atol=0, rtol=0, msg=k)  # the ranks stay identical
    shards = [data_batches(24, 4, list(range(12 * r, 12 * r + 12))) for r in range(2)]
    expected, _ = esgd_reference(shards, **{k: v for k, v in KW.items() if k != "noise"})
    for k in w0:
        torch.testing.assert_close(w0[k], expected[k], atol=1e-10, rtol=0, msg=k)
    # with noise, each rank draws its own (replica-local) noise and the ranks still end identical
    (n0, _), (n1, _) = ddp.run(_ddp_run, {**KW, "noise": 1e-2})
    for k in n0:
        torch.testing.assert_close(n0[k], n1[k], atol=0, rtol=0, msg=k)


class _NaNOnce(Tiny):
    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if batch_idx == 1 else loss


def test_non_finite_inner_gradient_skips_the_optimizer_step():
    model = _NaNOnce()
    before = [p.detach().clone() for p in model.parameters()]
    cb = ll.EntropySGD(**KW)
    t = trainer([cb], max_steps=1)
    t.fit(model, DataLoader(data(24), batch_size=4, shuffle=False))
    assert cb.skipped == 1 and t.global_step == 1
    for a, b in zip(before, model.parameters()):  # x restored, no optimizer update (momentum never started)
        torch.testing.assert_close(a, b.detach(), atol=0, rtol=0)
    assert float(t.callback_metrics["entropy_sgd/skipped"]) == 1.0


def test_argument_and_setup_errors():
    with pytest.raises(ConfigurationError, match=r"`inner_steps`"):
        ll.EntropySGD(inner_steps=0)
    with pytest.raises(ConfigurationError, match=r"`beta1`"):
        ll.EntropySGD(beta1=1.0)
    with pytest.raises(ConfigurationError, match=r"`inner_lr`"):
        ll.EntropySGD(inner_lr=0.0)
    with pytest.raises(ConfigurationError, match=r"`noise`"):
        ll.EntropySGD(noise=-1.0)
    loader = DataLoader(data(24), batch_size=4)
    with pytest.raises(
        ConfigurationError,
        match=r"^EntropySGD sets `accumulate_grad_batches` to `inner_steps`=3 \(one Langevin step per batch\), got "
        r"Trainer\(accumulate_grad_batches=2\); leave it at 1$",
    ):
        trainer([ll.EntropySGD(inner_steps=3)], max_steps=1, accumulate_grad_batches=2).fit(Tiny(), loader)
    from lightning.pytorch.plugins.precision import MixedPrecision

    plugin = MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))
    with pytest.raises(ConfigurationError, match=r"^EntropySGD does not support a GradScaler"):
        trainer([ll.EntropySGD(inner_steps=3)], max_steps=1, plugins=[plugin]).fit(Tiny(), loader)
    with pytest.raises(
        ConfigurationError, match=r"^a step plug-in is already attached \(<.*EntropySGD.*\); only one is allowed$"
    ):
        trainer([ll.EntropySGD(inner_steps=3), ll.SAM()], max_steps=1).fit(Tiny(), loader)


def test_registered_and_built_from_a_recipe():
    assert "entropy_sgd" in ll.list_callbacks()
    (cb,) = ll.build_callbacks([{"name": "entropy_sgd", "inner_steps": 5, "gamma": 0.03}])
    assert isinstance(cb, ll.EntropySGD) and cb.inner_steps == 5 and cb.gamma == 0.03
