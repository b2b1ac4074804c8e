"""MESA (the EMA-teacher trajectory loss): a Trainer run against an explicit float64 loop of the paper's formula,
validation messages, the EMA's state round-trip."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn
from torch.func import functional_call

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError

from ._lightning import loader, trainer
from ._reference import tiny_model

LR = 0.1


class Model(ll.LossesMixin, L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = tiny_model(dtype=torch.float64)
        self.configure_objective({"cross_entropy": {}})

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch[0].double(), batch[1]
        return self.compute_loss(logits=self(x), target=y, inputs=x)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=LR, momentum=0.9)


def _reference(steps, coefficient, temperature, decay):
    """CE + lambda T^2 KL(softmax(t/T) || softmax(z/T)) with t from the EMA weights; EMA after every SGD step."""
    model = tiny_model(dtype=torch.float64)
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=LR, momentum=0.9)
    ema = {k: v.detach().clone() for k, v in params.items()}
    batches = [(x.double(), y) for x, y in loader(4, n=16)]
    for s in range(steps):
        x, y = batches[s % len(batches)]
        with torch.no_grad():
            t = functional_call(model, ema, (x,))
        z = model(x)
        pt = torch.softmax(t / temperature, -1)
        kl = (pt * (torch.log(pt) - torch.log_softmax(z / temperature, -1))).sum(-1)
        loss = (nn.functional.cross_entropy(z, y, reduction="none") + coefficient * temperature**2 * kl).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        for k, v in params.items():
            ema[k] = decay * ema[k] + (1 - decay) * v.detach()
    return {k: v.detach() for k, v in params.items()}, ema


def test_mesa_equals_the_papers_formula():
    model = Model()
    cb = ll.MESA(coefficient=0.5, temperature=2.0, decay=0.5, start_epoch=0)
    trainer([cb], max_steps=6).fit(model, loader(4, n=16))
    weights, ema = _reference(6, 0.5, 2.0, 0.5)
    for k, v in weights.items():
        torch.testing.assert_close(model.net.state_dict()[k], v, atol=1e-12, rtol=1e-10, msg=k)
        torch.testing.assert_close(cb.ema[f"net.{k}"], ema[k], atol=1e-12, rtol=1e-10, msg=k)
    assert cb.updates == 6
    plain, _ = _reference(6, 0.0, 2.0, 0.5)
    assert any(not torch.allclose(weights[k], plain[k]) for k in plain)  # the term mattered


def test_mesa_inactive_before_start_epoch_is_plain_training():
    model = Model()
    trainer([ll.MESA(decay=0.5, start_epoch=1)], max_steps=4).fit(model, loader(4, n=16))
    plain, _ = _reference(4, 0.0, 5.0, 0.5)
    for k, v in plain.items():
        torch.testing.assert_close(model.net.state_dict()[k], v, atol=1e-12, rtol=1e-10, msg=k)


def test_mesa_state_round_trip():
    cb = ll.MESA(decay=0.5, start_epoch=0)
    trainer([cb], max_steps=2).fit(Model(), loader(4, n=16))
    other = ll.MESA(decay=0.5, start_epoch=0)
    other.load_state_dict(cb.state_dict())
    assert other.updates == 2 and all(torch.equal(other.ema[k], v) for k, v in cb.ema.items())
    with pytest.raises(KeyError, match=r"MESA `mesa` state_dict mismatch: missing \['updates'\]"):
        other.load_state_dict({"ema": None})


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"decay": 1.0}, r"`decay` must be in \[0.0, 1.0\), got 1.0"),
        ({"start_epoch": 5, "end_epoch": 5}, r"`end_epoch` must be an integer >= 6, got 5"),
        ({"temperature": 0}, r"`temperature` must be > 0.0, got 0"),
        ({"inputs": ""}, r"`inputs` must be a non-empty string, got ''"),
    ],
)
def test_mesa_validation(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        ll.MESA(**kwargs)


def test_mesa_needs_the_model_input():
    class NoInputs(Model):
        def training_step(self, batch, batch_idx):
            return self.compute_loss(logits=self(batch[0].double()), target=batch[1])

    with pytest.raises(ValueError, match=r"MESA needs `logits` and `inputs` \(the model input\) in compute_loss"):
        trainer([ll.MESA(start_epoch=0)], max_steps=1).fit(NoInputs(), loader(4, n=16))


def test_mesa_listed():
    assert "mesa" in ll.list_callbacks()
