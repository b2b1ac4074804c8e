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
