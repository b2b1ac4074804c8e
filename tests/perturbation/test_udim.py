"""UDIM: the callback inside a Trainer against an explicit float64 loop (SAM's epsilon, per-sample projected input
ascent at w + epsilon, the lambda-weighted descent gradient); the batch interface, DDP and argument checks."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Subset

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from tests.helpers.ddp import lightning_env

from ._lightning import Tiny, data, data_batches, trainer
from ._reference import grad_at, loss_at, sam_eps, tiny_model


def _input_grad(model, w, x, y):
    x = x.detach().clone().requires_grad_(True)
    return torch.autograd.grad(loss_at(model, w, x, y), x)[0]


def udim_reference(batches, rho, rho_x, lmbda, input_steps, steps=None):
    """Float64, one explicit loop per sample for the input ascent and its projection."""
    model = tiny_model(dtype=torch.float64)
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=0.1, momentum=0.9)
    for x, y in batches[:steps]:
        w = {k: v.detach().clone() for k, v in params.items()}
        eps = sam_eps(grad_at(model, w, x, y), rho)
        wp = {k: w[k] + eps[k] for k in w}
        xt = x.clone()
        for _ in range(input_steps):
            gx = _input_grad(model, wp, xt, y)
            for i in range(len(x)):
                moved = xt[i] + (rho_x / input_steps) * gx[i] / (gx[i].norm() + 1e-12)
                d = moved - x[i]
                if d.norm() > rho_x:
                    d = d * rho_x / d.norm()
                xt[i] = x[i] + d
        g_x, g_t = grad_at(model, wp, x, y), grad_at(model, wp, xt, y)
        for k, p in params.items():
            p.grad = (1 - lmbda) * g_x[k] + lmbda * g_t[k]
        opt.step()
    return {f"net.{k}": v.detach() for k, v in params.items()}


class _Restored(L.Callback):
    """Records whether the batch's input is unchanged after each step (UDIM perturbs it in place)."""

    def __init__(self):
        self.same = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = batch[0].clone()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.same.append(torch.equal(batch[0], self.before))


@pytest.mark.parametrize("lmbda,input_steps", [(1.0, 1), (0.5, 3), (2.0, 2)])
def test_matches_float64_loop(lmbda, input_steps):
    model, probe = Tiny(), _Restored()
    cb = ll.UDIM(rho=0.1, rho_x=0.4, lmbda=lmbda, input_steps=input_steps)
    t = trainer([probe, cb], max_epochs=1, precision="64-true")
    t.fit(model, DataLoader(data(16), batch_size=8, shuffle=False))
    assert t.global_step == 2 and cb.engine.perturbed_steps == 2
    # passes per step: the first, K input passes, the descent at x~ and (lambda != 1) at x
    assert model.training_step_calls == 2 * (2 + input_steps + (lmbda != 1.0))
    expected = udim_reference(data_batches(16, 8), rho=0.1, rho_x=0.4, lmbda=lmbda, input_steps=input_steps)
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k], atol=1e-10, rtol=0, msg=k)
    assert probe.same == [True, True]  # the batch's input is put back exactly
    assert model.logged.count("train/loss") == 2  # the extra passes log nothing


def test_lambda_zero_is_sam_and_the_input_perturbation_matters():
    runs = {}
    for name, cb in (("sam", ll.SAM(rho=0.1)), ("udim0", ll.UDIM(rho=0.1, lmbda=0.0)), ("udim", ll.UDIM(rho=0.1))):
        model = Tiny()
        trainer([cb], max_epochs=1, precision="64-true").fit(model, DataLoader(data(16), batch_size=8))
        runs[name] = model.net[0].weight.detach()
    torch.testing.assert_close(runs["sam"], runs["udim0"], atol=0, rtol=0)
    assert not torch.allclose(runs["sam"], runs["udim"])


class _DictTiny(Tiny):
    def __init__(self, key="image", scale=1.0):
        super().__init__()
        self.key, self.scale = key, scale

    def training_step(self, batch, batch_idx):
        x = batch[self.key] * self.scale  # a transform of the batch's tensor: the input gradient flows back through it
        return self.compute_loss(logits=self.net(x), target=batch["target"])


def _dict_loader(n=16):
    d = data(n)
    rows = [{"image": d.tensors[0][i], "target": d.tensors[1][i]} for i in range(n)]
    return DataLoader(rows, batch_size=8, shuffle=False)


@pytest.mark.parametrize("input", ["image", lambda batch: batch["image"]])
def test_mapping_batches_by_key_or_callable(input):
    model = _DictTiny()
    trainer([ll.UDIM(rho=0.1, rho_x=0.4, input=input)], max_epochs=1, precision="64-true").fit(model, _dict_loader())
    expected = udim_reference(data_batches(16, 8), rho=0.1, rho_x=0.4, lmbda=1.0, input_steps=1)
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k], atol=1e-10, rtol=0, msg=k)


class _Detached(Tiny):
    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.compute_loss(logits=self.net(x.detach().clone()), target=y)


def test_batch_interface_errors():
    run = trainer([ll.UDIM()], max_steps=1)
    with pytest.raises(
        ConfigurationError, match=r"^UDIM `input`='x' is not a key of the batch; the batch has \['image', 'target'\]$"
    ):
        run.fit(_DictTiny(), _dict_loader())
    with pytest.raises(ConfigurationError, match=r"^UDIM perturbs a floating-point input tensor, got torch.int64"):
        trainer([ll.UDIM(input=1)], max_steps=1).fit(Tiny(), DataLoader(data(16), batch_size=8))
    with pytest.raises(ConfigurationError, match=r"^UDIM `input` must index the batch of 2 items, got 5$"):
        trainer([ll.UDIM(input=5)], max_steps=1).fit(Tiny(), DataLoader(data(16), batch_size=8))
    with pytest.raises(ConfigurationError, match=r"^UDIM: the loss has no gradient with respect to the batch's input"):
        trainer([ll.UDIM()], max_steps=1).fit(_Detached(), DataLoader(data(16), batch_size=8))
    with pytest.raises(ConfigurationError, match=r"^UDIM needs accumulate_grad_batches=1, got 2"):
        trainer([ll.UDIM()], max_steps=1, accumulate_grad_batches=2).fit(Tiny(), DataLoader(data(16), batch_size=8))


def test_argument_errors():
    with pytest.raises(ConfigurationError, match=r"`rho_x`"):
        ll.UDIM(rho_x=0.0)
    with pytest.raises(ConfigurationError, match=r"`lmbda`"):
        ll.UDIM(lmbda=-1.0)
    with pytest.raises(ConfigurationError, match=r"`input_steps`"):
        ll.UDIM(input_steps=0)
    with pytest.raises(ConfigurationError, match=r"^UDIM does not take `select_fraction` \(ESAM's data selection\)$"):
        ll.UDIM(select_fraction=0.5)
    with pytest.raises(
        ConfigurationError, match=r"^UDIM `input` must be a key, an index, a callable or None, got 1\.5$"
    ):
        ll.UDIM(input=1.5)
    with pytest.raises(ConfigurationError, match=r"`rho`"):
        ll.UDIM(rho=-1.0)


def test_registered_built_from_a_recipe_and_state_key():
    assert "udim" in ll.list_callbacks()
    (cb,) = ll.build_callbacks([{"name": "udim", "rho": 0.05, "rho_x": 0.5, "sync_ascent": True}])
    assert isinstance(cb, ll.UDIM) and cb.rho_x == 0.5 and cb.engine.sync_ascent
    assert cb.state_key != ll.UDIM(rho_x=0.25).state_key != ll.SAM().state_key


def _ddp_run(lmbda):
    from lightning_losses.distributed import rank

    r = rank()
    with lightning_env():
        model = Tiny()
        cb = ll.UDIM(rho=0.1, rho_x=0.4, lmbda=lmbda, input_steps=2, sync_ascent=True)
        t = trainer([cb], max_epochs=1, strategy="ddp", devices=2, use_distributed_sampler=False, precision="64-true")
        rows = [i for b in range(2) for i in range(8 * b + 4 * r, 8 * b + 4 * r + 4)]  # rank r: its half of each batch
        t.fit(model, DataLoader(Subset(data(16), rows), batch_size=4, shuffle=False))
        return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.ddp
def test_ddp_with_sync_ascent_equals_one_process_on_the_concatenated_batch(ddp):
    for lmbda in (1.0, 0.5):
        w0, w1 = ddp.run(_ddp_run, lmbda)
        expected = udim_reference(data_batches(16, 8), rho=0.1, rho_x=0.4, lmbda=lmbda, input_steps=2)
        for k in w0:
            torch.testing.assert_close(w0[k], w1[k], atol=0, rtol=0, msg=k)
            torch.testing.assert_close(w0[k], expected[k], atol=1e-10, rtol=0, msg=k)


def _first(batch):
    return batch[0]


def test_state_key_is_stable_for_a_callable_input():
    def make():
        return ll.UDIM(input=lambda batch: batch[0])

    assert make().state_key == make().state_key  # two lambdas from the same place: the same checkpoint key
    assert "'_first'" in ll.UDIM(input=_first).state_key


def test_non_finite_input_gradient_leaves_that_sample_unperturbed():
    from lightning_losses.perturbation.udim import project_inputs

    x = torch.zeros(3, 2)
    grad = torch.tensor([[1.0, 0.0], [float("inf"), 1.0], [0.0, float("nan")]])
    out = project_inputs(x.clone(), x, grad, step=0.5, radius=0.5)
    torch.testing.assert_close(out, torch.tensor([[0.5, 0.0], [0.0, 0.0], [0.0, 0.0]]))
