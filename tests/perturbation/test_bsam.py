"""bSAM (Möllenhoff & Khan, ICLR 2023): parity with an explicit float64 loop of the authors' update, validation,
state round-trip."""

from __future__ import annotations

import copy

import pytest
import torch

from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation.bsam import BSAM

HP = dict(num_data=50, lr=0.2, betas=(0.8, 0.99), rho=0.05, prior_precision=4.0, damping=0.1, s_init=2.0)


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, generator=g, dtype=torch.float64), torch.randn(16, 1, generator=g, dtype=torch.float64)


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


def _loss(params, x, y):
    w1, b1, w2, b2 = params
    return ((torch.tanh(x @ w1.T + b1) @ w2.T + b2 - y) ** 2).mean()


def _reference(params, x, y, steps, seed):
    """The authors' update (team-approx-bayes/bayesian-sam, build_bsam_optimizer, batchsplit 1), step by step."""
    gen = torch.Generator().manual_seed(seed)
    n, lr, (b1, b2), rho = HP["num_data"], HP["lr"], HP["betas"], HP["rho"]
    delta = HP["prior_precision"] / n
    w = [p.detach().clone() for p in params]
    s = [torch.full_like(p, HP["s_init"]) for p in w]
    m = [torch.zeros_like(p) for p in w]
    for _ in range(steps):
        noisy = [
            (wi + torch.sqrt(1.0 / (n * si)) * torch.randn(wi.shape, dtype=wi.dtype, generator=gen))
            for wi, si in zip(w, s)
        ]
        noisy = [t.requires_grad_() for t in noisy]
        g_noisy = torch.autograd.grad(_loss(noisy, x, y), noisy)
        pert = [(wi + rho * gi / si).requires_grad_() for wi, gi, si in zip(w, g_noisy, s)]
        g_pert = torch.autograd.grad(_loss(pert, x, y), pert)
        gs = [torch.sqrt(si * gi**2) for si, gi in zip(s, g_noisy)]
        m = [b1 * mi + (1 - b1) * (gi + delta * wi) for mi, gi, wi in zip(m, g_pert, w)]
        w = [wi - lr * mi / si for wi, mi, si in zip(w, m, s)]
        s = [b2 * si + (1 - b2) * (gsi + HP["damping"] + delta) for si, gsi in zip(s, gs)]
    return w, s, m


def _run(model, opt, x, y, steps):
    def closure():
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)


def test_bsam_matches_the_authors_update_in_float64():
    x, y = _data()
    model = _model()
    params = [model[0].weight, model[0].bias, model[2].weight, model[2].bias]
    w_ref, s_ref, m_ref = _reference(params, x, y, steps=4, seed=3)
    opt = BSAM(params, generator=torch.Generator().manual_seed(3), **HP)
    _run(model, opt, x, y, steps=4)
    for p, w, s, m in zip(params, w_ref, s_ref, m_ref):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["precision"], s, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(opt.state[p]["momentum"], m, rtol=1e-12, atol=1e-12)
        assert opt.state[p]["step"] == 4
    assert all(not torch.equal(p.detach(), q) for p, q in zip(params, [t.detach() for t in _model().parameters()]))


def test_bsam_ascent_is_not_normalised_and_divides_by_the_precision():
    model = torch.nn.Linear(2, 1, bias=False).double()
    opt = BSAM(model.parameters(), num_data=10**12, rho=0.5, s_init=4.0)  # huge N: the noise vanishes
    w0 = model.weight.detach().clone()
    opt.to_noisy_point()
    model.weight.grad = torch.tensor([[2.0, -8.0]], dtype=torch.float64)
    opt.to_perturbed_point()
    torch.testing.assert_close(model.weight.detach(), w0 + 0.5 * torch.tensor([[2.0, -8.0]], dtype=torch.float64) / 4)
    opt.restore()
    assert torch.equal(model.weight.detach(), w0)


def test_bsam_state_dict_round_trip_continues_identically():
    x, y = _data()
    model = _model()
    opt = BSAM(model.parameters(), generator=torch.Generator().manual_seed(5), **HP)
    _run(model, opt, x, y, steps=2)
    model2 = copy.deepcopy(model)
    opt2 = BSAM(model2.parameters(), generator=torch.Generator().manual_seed(0), **HP)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    opt2.generator.set_state(opt.generator.get_state())
    assert sorted(opt2.state[model2[0].weight]) == ["momentum", "precision", "step"]
    _run(model, opt, x, y, steps=2)
    _run(model2, opt2, x, y, steps=2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["precision"], opt2.state[q]["precision"])


def test_bsam_restores_w_when_the_closure_raises():
    model = _model()
    w0 = [p.detach().clone() for p in model.parameters()]
    opt = BSAM(model.parameters(), num_data=10)

    def closure():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure)
    assert all(torch.equal(p, w) for p, w in zip(model.parameters(), w0))


def test_bsam_needs_a_closure():
    opt = BSAM(_model().parameters(), num_data=10)
    with pytest.raises(
        ValueError,
        match=r"`closure` is required: BSAM evaluates the gradient at two points per step \(or run the `bsam`",
    ):
        opt.step()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_data": 0}, r"`num_data` must be an integer >= 1, got 0"),
        ({"num_data": 2.5}, r"`num_data` must be an integer >= 1, got 2.5"),
        ({"lr": 0.0}, r"`lr` must be > 0.0, got 0.0"),
        ({"betas": (0.9,)}, r"`betas` must be a pair \(beta1, beta2\), got \(0.9,\)"),
        ({"betas": (1.0, 0.9)}, r"`betas\[0\]` must be in \[0.0, 1.0\), got 1.0"),
        ({"betas": (0.9, -0.1)}, r"`betas\[1\]` must be in \[0.0, 1.0\), got -0.1"),
        ({"rho": -1.0}, r"`rho` must be >= 0.0, got -1.0"),
        ({"prior_precision": -1.0}, r"`prior_precision` must be >= 0.0, got -1.0"),
        ({"damping": float("nan")}, r"`damping` must be a finite number >= 0.0, got nan"),
        ({"s_init": 0.0}, r"`s_init` must be > 0.0, got 0.0"),
    ],
)
def test_bsam_validates_its_arguments(kwargs, match):
    args = {"num_data": 10, **kwargs}
    with pytest.raises(ConfigurationError, match=match):
        BSAM(_model().parameters(), **args)


def test_bsam_ascent_phases_leave_the_optimizer_state_unchanged():
    """Only `update` changes s, m and step; the noisy and perturbed points only read s."""
    x, y = _data()
    model = _model()
    opt = BSAM(model.parameters(), generator=torch.Generator().manual_seed(2), **HP)
    _run(model, opt, x, y, steps=1)
    before = copy.deepcopy(opt.state_dict())
    opt.to_noisy_point()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.to_perturbed_point()
    assert str(opt.state_dict()) == str(before)
    opt.restore()
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.update()
    assert all(opt.state[p]["step"] == 2 for p in model.parameters())


def test_bsam_in_a_lightning_automatic_optimization_run(tmp_path):
    """Lightning passes its closure to `BSAM.step`: two passes per step, weights move, the state is checkpointed."""
    import lightning as L

    from tests.perturbation._lightning import loader, trainer

    class Model(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Linear(4, 3)
            self.calls = 0

        def training_step(self, batch, batch_idx):
            self.calls += 1
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return BSAM(self.parameters(), num_data=16, lr=0.05)

    model = Model()
    w0 = model.net.weight.detach().clone()
    t = trainer([], max_steps=2, default_root_dir=tmp_path, enable_checkpointing=False)
    t.fit(model, loader())
    assert model.calls == 4 and not torch.equal(model.net.weight.detach(), w0)
    t.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["optimizer_states"][0]["state"]
    assert state[0]["step"] == 2 and torch.all(state[0]["precision"] > 0)
