"""CurvatureMonitor and its functional forms: against the explicit float64 Hessian of a tiny model, in a Trainer,
state_dict round trip, and 2 processes equal to 1 process on the same probe."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lightning_losses as ll
from lightning_losses.demo import DigitsClassifier, DigitsDataModule
from lightning_losses.functional import curvature as C


def _tiny(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    return net, torch.randn(10, 3, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,), generator=g)


def _full_hessian(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The explicit float64 Hessian of the mean cross entropy over all parameters (flattened)."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for p in net.parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in net.parameters()])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params, start = {}, 0
        for name, shape in zip(names, shapes):
            size = shape.numel()
            params[name] = theta[start : start + size].reshape(shape)
            start += size
        return F.cross_entropy(torch.func.functional_call(net, params, (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def _hvp(net, x, y):
    loss = F.cross_entropy(net(x), y)
    return C.hessian_vector_product(loss, list(net.parameters()))


def test_hessian_vector_product_equals_the_full_hessian():
    net, x, y = _tiny()
    H = _full_hessian(net, x, y)
    v = torch.randn(H.shape[0], dtype=torch.float64)
    params = list(net.parameters())
    pieces = list(torch.split(v, [p.numel() for p in params]))
    hv = _hvp(net, x, y)([t.reshape(p.shape) for t, p in zip(pieces, params)])
    torch.testing.assert_close(torch.cat([h.reshape(-1) for h in hv]), H @ v)


def test_power_iteration_finds_the_top_eigenvalue():
    net, x, y = _tiny()
    eig = torch.linalg.eigvalsh(_full_hessian(net, x, y))
    top = eig[eig.abs().argmax()]
    value, vector, used = C.power_iteration(
        _hvp(net, x, y), list(net.parameters()), iters=500, tol=1e-12, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(value, top, rtol=1e-6, atol=1e-8)
    assert used <= 500 and torch.cat([v.reshape(-1) for v in vector]).norm().item() == pytest.approx(1.0)


def test_hutchinson_trace_is_the_mean_quadratic_form_and_converges_to_the_trace():
    net, x, y = _tiny()
    H = _full_hessian(net, x, y)
    params = list(net.parameters())
    # explicit float64 loop over the same Rademacher vectors
    g = torch.Generator().manual_seed(3)
    vs = [torch.cat([v.reshape(-1) for v in C.rademacher_like(params, g)]) for _ in range(7)]
    expected = sum(v @ H @ v for v in vs) / 7
    got = C.hutchinson_trace(_hvp(net, x, y), params, samples=7, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, expected)
    many = C.hutchinson_trace(_hvp(net, x, y), params, samples=3000, generator=torch.Generator().manual_seed(0))
    assert abs(float(many) - float(H.trace())) < 0.05 * float(H.diagonal().abs().sum())


def test_gradient_coherence_cosine_and_logit_health_against_loops():
    g = torch.randn(5, 7, dtype=torch.float64)
    mean = sum(g[i] for i in range(5)) / 5
    expected = mean.dot(mean) / (sum(g[i].dot(g[i]) for i in range(5)) / 5)
    torch.testing.assert_close(C.gradient_coherence(g), expected)
    assert float(C.gradient_coherence(g[:1].repeat(3, 1))) == pytest.approx(1.0)
    a, b = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])], [torch.tensor([0.0, 1.0]), torch.tensor([-1.0])]
    torch.testing.assert_close(C.cosine(a, b), torch.tensor(-1.0 / (14**0.5 * 2**0.5), dtype=torch.float64))
    z = torch.tensor([[1.0, 2.0, 0.0], [120.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    h = C.logit_health(z)
    assert float(h["collapsed"]) == 1.0 and float(h["count"]) == 3.0 and float(h["max_logit"]) == 120.0
    torch.testing.assert_close(h["norm_sum"], z.double().norm(dim=1).sum())
    torch.testing.assert_close(h["max_softmax_sum"], torch.softmax(z, 1).amax(1).double().sum())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": 0}, r"`every_n_steps` and `every_n_epochs` are both 0, so CurvatureMonitor would never run"),
        ({"every_n_steps": -1}, r"`every_n_steps` must be an integer >= 0, got -1"),
        ({"probe_size": 0}, r"`probe_size` must be an integer >= 1, got 0"),
        ({"power_iters": 0}, r"`power_iters` must be an integer >= 1, got 0"),
        ({"tol": -1.0}, r"`tol` must be >= 0.0, got -1.0"),
        ({"hutchinson_samples": -2}, r"`hutchinson_samples` must be an integer >= 0, got -2"),
        ({"coherence": "yes"}, r"`coherence` must be a bool \(True or False\), got 'yes'"),
        ({"loss_fn": 3}, r"`loss_fn` must be callable as loss_fn\(pl_module, batch\) -> \[N\] losses, got 3"),
        ({"preference_fn": "f"}, r"`preference_fn` must be callable as preference_fn\(pl_module, batch\)"),
    ],
)
def test_arguments_are_validated(kwargs, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.CurvatureMonitor(**kwargs)


def test_registered_and_built_by_name():
    assert "curvature_monitor" in ll.list_callbacks()
    (cb,) = ll.build_callbacks({"curvature_monitor": {"every_n_steps": 7}})
    assert isinstance(cb, ll.CurvatureMonitor) and cb.every_n_steps == 7


def _model(seed: int = 0) -> DigitsClassifier:
    torch.manual_seed(seed)
    return DigitsClassifier(hidden_dim=16, dropout=0.1, cosine_schedule=False)


def test_measure_equals_the_explicit_hessian_of_the_probe():
    model = _model().double()
    batch = next(iter(DigitsDataModule(batch_size=12).train_dataloader()))
    batch = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    cb = ll.CurvatureMonitor(probe_size=12, power_iters=300, tol=1e-12, hutchinson_samples=0)
    cb._take_probe(batch)
    model.train()
    out = cb.measure(model)
    assert model.training and model.net[3].training  # modes restored (the probe runs in eval mode)
    model.eval()
    eig = torch.linalg.eigvalsh(_full_hessian(model.net, batch["x"], batch["target"]))
    torch.testing.assert_close(out["curvature/lambda_max"], eig[eig.abs().argmax()], rtol=1e-5, atol=1e-8)
    # coherence against an explicit loop of per-sample gradients
    grads = []
    for i in range(12):
        model.zero_grad()
        F.cross_entropy(model.net(batch["x"][i : i + 1]), batch["target"][i : i + 1]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(out["curvature/coherence"], C.gradient_coherence(torch.stack(grads)))
    logits = model.net(batch["x"])
    torch.testing.assert_close(out["logit_health/max_logit"], logits.max().double().detach())


def _fit(cb, max_steps: int = 6, **trainer_kwargs) -> tuple[L.Trainer, DigitsClassifier]:
    model = _model()
    trainer = L.Trainer(
        max_steps=max_steps,
        callbacks=[cb],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **trainer_kwargs,
    )
    trainer.fit(model, DigitsDataModule(batch_size=32))
    return trainer, model


def test_runs_at_its_cadence_logs_through_lightning_and_round_trips_state(monkeypatch):
    cb = ll.CurvatureMonitor(every_n_steps=3, probe_size=16, power_iters=5, hutchinson_samples=2)
    calls = []
    measure = cb.measure
    monkeypatch.setattr(cb, "measure", lambda m, step=0: calls.append(step) or measure(m, step))
    trainer, _ = _fit(cb, max_steps=7)
    assert calls == [3, 6]  # not on other steps
    keys = {"curvature/lambda_max", "curvature/trace", "curvature/edge_of_stability", "curvature/coherence",
            "curvature/grad_norm", "logit_health/collapsed_fraction", "logit_health/max_logit"}  # fmt: skip
    assert keys <= set(trainer.callback_metrics) and keys <= set(cb.last)
    assert cb.last["curvature/edge_of_stability"] == pytest.approx(cb.last["curvature/lambda_max"] * 3e-3 / 2)
    state = cb.state_dict()
    twin = ll.CurvatureMonitor(every_n_steps=3)
    twin.load_state_dict(state)
    assert torch.equal(twin.probe["x"], cb.probe["x"]) and twin.probe["x"].shape[0] == 16
    with pytest.raises(KeyError, match=r"CurvatureMonitor state_dict mismatch: missing \['seed'\]"):
        twin.load_state_dict({"probe": None, "last_step": 0})


def test_epoch_cadence_and_entanglement():
    def pref(module, batch):
        logp = torch.log_softmax(module(batch["x"]), -1)
        return logp[:, 0], logp[:, 1]

    cb = ll.CurvatureMonitor(every_n_steps=0, every_n_epochs=1, probe_size=8, power_iters=3, preference_fn=pref)
    trainer, _ = _fit(cb, max_steps=-1, max_epochs=1, limit_train_batches=2)
    assert -1.0 <= cb.last["curvature/entanglement"] <= 1.0 and "curvature/entanglement" in trainer.callback_metrics


def _ddp_measure(probe, state):
    torch.manual_seed(0)
    model = _model().double()
    model.load_state_dict(state)
    cb = ll.CurvatureMonitor(probe_size=16, power_iters=40, tol=0.0, hutchinson_samples=3)
    cb.probe = probe
    return cb.measure(model, step=5)


@pytest.mark.ddp
def test_two_processes_equal_one_process_on_the_probe(ddp):
    batch = next(iter(DigitsDataModule(batch_size=16).train_dataloader()))
    probe = {k: v.double() if v.is_floating_point() else v for k, v in batch.items()}
    state = _model().double().state_dict()
    single = _ddp_measure(probe, state)
    per_rank = ddp.run(_ddp_measure, probe, state)
    for out in per_rank:
        assert set(out) == set(single)
        for key in single:
            torch.testing.assert_close(out[key], single[key], msg=key)


def _ddp_probe(batches):
    import torch.distributed as dist

    cb = ll.CurvatureMonitor(probe_size=5)
    cb._take_probe(batches[dist.get_rank()])
    return cb.probe


@pytest.mark.ddp
def test_probe_is_the_global_batch_on_every_rank(ddp):
    batches = [{"x": torch.randn(3, 2), "target": torch.arange(3)}, {"x": torch.randn(4, 2), "target": torch.arange(4)}]
    probes = ddp.run(_ddp_probe, batches)
    expected = torch.cat([batches[0]["x"], batches[1]["x"]])[:5]
    for probe in probes:
        torch.testing.assert_close(probe["x"], expected)
        assert probe["target"].tolist() == [0, 1, 2, 0, 1]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_measure_on_cuda_equals_cpu():
    batch = next(iter(DigitsDataModule(batch_size=16).train_dataloader()))
    cb = ll.CurvatureMonitor(probe_size=16, power_iters=30, tol=0.0, hutchinson_samples=3)
    cb._take_probe(batch)
    model = _model().double()
    cb.probe = {k: v.double() if v.is_floating_point() else v for k, v in cb.probe.items()}
    cpu = cb.measure(model, step=1)
    cuda = cb.measure(model.cuda(), step=1)
    for key in cpu:
        torch.testing.assert_close(cuda[key], cpu[key], rtol=1e-6, atol=1e-8, msg=key)


def test_loss_fn_must_return_per_sample_losses():
    batch = next(iter(DigitsDataModule(batch_size=8).train_dataloader()))
    mean_loss = ll.CurvatureMonitor(loss_fn=lambda m, b: F.cross_entropy(m(b["x"]), b["target"]))
    mean_loss._take_probe(batch)
    with pytest.raises(ValueError, match=r"`loss_fn` must return per-sample losses \[N\], got shape \[\]"):
        mean_loss.measure(_model())
    per_sample = ll.CurvatureMonitor(loss_fn=lambda m, b: F.cross_entropy(m(b["x"]), b["target"], reduction="none"))
    per_sample._take_probe(batch)
    default = ll.CurvatureMonitor()
    default._take_probe(batch)
    model = _model()
    torch.testing.assert_close(per_sample.measure(model), default.measure(model))
