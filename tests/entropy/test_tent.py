"""Tent: what is adapted, the update against Adam's first step, reset / restore, inference mode, DDP sync."""

import copy

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from lightning_losses.demo import DictDataset, DigitsClassifier
from lightning_losses.distributed import rank
from lightning_losses.entropy import Tent, configure_norm_adaptation
from lightning_losses.errors import ConfigurationError


def _net(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4)
    )
    net.train()
    net(torch.randn(32, 6))  # give the running statistics non-default values
    return net.eval()


def _batch(seed, n=16):
    g = torch.Generator().manual_seed(seed)
    return {"x": torch.randn(n, 6, generator=g) * 2 + 1, "target": torch.randint(0, 4, (n,), generator=g)}


def _state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def _entropy_grads(net, x):
    """Gradient of the mean entropy w.r.t. the norm affine parameters, with batch statistics (explicit formula)."""
    net = copy.deepcopy(net).train()  # train-mode BN = batch statistics
    logits = net(x)
    logp = torch.log_softmax(logits, -1)
    loss = -(logp.exp() * logp).sum(-1).mean()
    params = [net[1].weight, net[1].bias, net[4].weight, net[4].bias]
    return torch.autograd.grad(loss, params)


def test_configure_freezes_all_but_norm_affine_and_restores():
    net = _net()
    before = _state(net)
    params, snapshot = configure_norm_adaptation(net)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"1.weight", "1.bias", "4.weight", "4.bias"}
    assert [p.data_ptr() for p in params] == [
        net[i].get_parameter(k).data_ptr() for i in (1, 4) for k in ("weight", "bias")
    ]
    assert net[1].running_mean is None and not net[1].track_running_stats
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    snapshot.restore(net)
    after = _state(net)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert net[1].track_running_stats and all(p.requires_grad for p in net.parameters())
    only_bn, _ = configure_norm_adaptation(_net(), kind="batch_norm")
    assert len(only_bn) == 2


def test_one_step_equals_adam_first_step_on_entropy_gradient():
    net, batch = _net(), _batch(1)
    grads = _entropy_grads(net, batch["x"])
    originals = [t.detach().clone() for t in (net[1].weight, net[1].bias, net[4].weight, net[4].bias)]
    frozen = {n: p.detach().clone() for n, p in net.named_parameters() if n[0] not in "14"}
    tent = Tent(lr=0.01)
    tent._start(net, "test")
    tent.adapt(net, batch)
    new = [net[1].weight, net[1].bias, net[4].weight, net[4].bias]
    for p, p0, g in zip(new, originals, grads):  # Adam's first step: -lr * g / (|g| + eps)
        torch.testing.assert_close(p.detach(), p0 - 0.01 * g / (g.abs() + 1e-8))
    assert all(torch.equal(net.get_parameter(n), v) for n, v in frozen.items())
    tent.restore()
    assert torch.equal(net[1].weight, originals[0]) and net[1].running_mean is not None


class _Tiny(DigitsClassifier):
    def __init__(self):
        super().__init__(num_features=6, num_classes=4, hidden_dim=8, depth=1, batch_norm=True, dropout=0.0)


class _Probe(L.Callback):
    def __init__(self):
        self.state = None

    def on_test_end(self, trainer, pl_module):
        self.state = _state(pl_module)


def _test(model, callbacks, batches, inference_mode=False):
    data = DataLoader(DictDataset(**{k: torch.cat([b[k] for b in batches]) for k in ("x", "target")}), batch_size=16)
    trainer = L.Trainer(
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
        inference_mode=inference_mode,
        accelerator="cpu",
    )
    return trainer.test(model, data, verbose=False)


@pytest.mark.parametrize("reset", ["never", "batch"])
def test_trainer_run_adapts_online_or_episodically_and_restores(reset):
    torch.manual_seed(0)
    model = _Tiny().eval()
    original = _state(model)
    probe, tent = _Probe(), Tent(lr=0.05, reset=reset)
    _test(model, [probe, tent], [_batch(3)] * 5)  # the same batch five times
    h = tent.entropies
    assert len(h) == 5
    if reset == "never":  # online: each batch starts where the last left off, so entropy keeps falling
        assert all(b < a for a, b in zip(h, h[1:])), h
    else:  # episodic: every batch starts from the original weights
        assert max(h) - min(h) < 1e-6, h
    adapted = probe.state  # captured before Tent restored
    changed = {k for k in original if k in adapted and not torch.equal(original[k], adapted[k])}
    assert "net.1.weight" in changed or reset == "batch"
    assert all(k.startswith("net.1.") for k in changed), changed
    restored = _state(model)
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert model.net[1].track_running_stats and all(p.requires_grad for p in model.parameters())


def test_epoch_reset_and_keep_adaptation():
    torch.manual_seed(0)
    model = _Tiny().eval()
    original = model.net[1].weight.detach().clone()
    tent = Tent(lr=0.05, reset="epoch", restore_on_end=False)
    _test(model, [tent], [_batch(3)] * 2)
    assert torch.equal(model.net[1].weight, original)  # reset at epoch end, but still configured
    assert model.net[1].running_mean is None
    tent.restore(model)
    assert model.net[1].running_mean is not None


class _FailsOnSecondBatch(_Tiny):
    def test_step(self, batch, batch_idx):
        if batch_idx == 1:
            raise RuntimeError("boom")
        return super().test_step(batch, batch_idx)


def test_exception_mid_run_restores_the_original_weights():
    torch.manual_seed(0)
    model = _FailsOnSecondBatch().eval()
    original = _state(model)
    tent = Tent(lr=0.05)
    with pytest.raises(RuntimeError, match="boom"):
        _test(model, [tent], [_batch(3)] * 3)
    assert len(tent.entropies) == 2  # adapted twice (the second batch's step then failed)
    restored = _state(model)
    assert restored.keys() == original.keys() and all(torch.equal(original[k], restored[k]) for k in original)
    assert model.net[1].track_running_stats and all(p.requires_grad for p in model.parameters())


class _Predicts(_Tiny):
    def predict_step(self, batch, batch_idx):
        return self(batch["x"])


def test_predict_loop_adapts_and_restores():
    torch.manual_seed(0)
    model = _Predicts().eval()
    original = _state(model)
    batches = [_batch(3)] * 3
    data = DataLoader(DictDataset(**{k: torch.cat([b[k] for b in batches]) for k in ("x", "target")}), batch_size=16)
    kwargs = dict(logger=False, enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    tent = Tent(lr=0.05)
    preds = L.Trainer(callbacks=[tent], inference_mode=False, **kwargs).predict(model, data)
    h = tent.entropies
    assert len(h) == 3 and h[0] > h[1] > h[2], h  # online: the same batch gets ever more confident
    restored = _state(model)
    assert all(torch.equal(original[k], restored[k]) for k in original)
    with torch.no_grad():
        source = model(batches[0]["x"])  # restored model, running statistics
    assert not torch.allclose(preds[-1], source)  # the predictions came from the adapted model
    with pytest.raises(ConfigurationError, match=r"Tent updates parameters during `predict`"):
        L.Trainer(callbacks=[Tent()], inference_mode=True, **kwargs).predict(model, data)
    assert all(torch.equal(original[k], v) for k, v in _state(model).items())
    skipped = Tent(stages=["test"])  # not adapting in predict: inference mode is fine and nothing changes
    L.Trainer(callbacks=[skipped], inference_mode=True, **kwargs).predict(model, data)
    assert skipped.entropies == []


def test_inference_mode_is_refused_before_touching_the_model():
    model = _Tiny().eval()
    original = _state(model)
    with pytest.raises(ConfigurationError, match=r"create the Trainer with `inference_mode=False`"):
        _test(model, [Tent()], [_batch(3)], inference_mode=True)
    assert all(torch.equal(original[k], v) for k, v in _state(model).items())
    assert all(p.requires_grad for p in model.parameters())


def test_errors():
    with pytest.raises(ConfigurationError, match="has no normalisation layer; add BatchNorm"):
        configure_norm_adaptation(nn.Linear(3, 2))
    with pytest.raises(ConfigurationError, match="`reset` must be one of `never`, `batch`, `epoch`, got 'step'"):
        Tent(reset="step")
    with pytest.raises(ConfigurationError, match="`optimizer` must be one of `adam`, `sgd`, got 'adamw'"):
        Tent(optimizer="adamw")
    with pytest.raises(ConfigurationError, match="`steps` must be an integer >= 0, got -1"):
        Tent(steps=-1)
    with pytest.raises(ConfigurationError, match="`stages\\[\\]` must be one of `test`, `predict`, got 'val'"):
        Tent(stages=["val"])
    with pytest.raises(ConfigurationError, match="`forward_fn` must be callable"):
        Tent(forward_fn=3)
    with pytest.raises(ConfigurationError, match="`lr` must be >= 0.0, got -0.1"):
        Tent(lr=-0.1)
    with pytest.raises(ConfigurationError, match=r"`momentum` must be in \[0.0, 1.0\], got 1.5"):
        Tent(momentum=1.5)
    with pytest.raises(ConfigurationError, match="`norm` must be one of `batch_norm`, `all`, got 'layer'"):
        Tent(norm="layer")
    with pytest.raises(
        ConfigurationError, match="`stages` must be a non-empty list from 'test', 'predict', got 'test'"
    ):
        Tent(stages="test")
    with pytest.raises(ConfigurationError, match="`input_key` must be the batch key of the model input, got ''"):
        Tent(input_key="")
    with pytest.raises(ConfigurationError, match=r"`sync_grads` must be a bool \(True or False\), got 1"):
        Tent(sync_grads=1)
    with pytest.raises(ConfigurationError, match=r"`restore_on_end` must be a bool \(True or False\), got 'yes'"):
        Tent(restore_on_end="yes")


# ---------------------------------------------------------------- DDP


def _ddp_adapt(batches):
    net = _net()
    tent = Tent(lr=0.01)
    tent._start(net, "test")
    tent.adapt(net, batches[rank()])
    return [p.detach().clone() for p in (net[1].weight, net[1].bias, net[4].weight, net[4].bias)]


def test_ddp_adaptation_keeps_copies_identical(ddp):
    batches = [_batch(10), _batch(11)]
    r0, r1 = ddp.run(_ddp_adapt, batches)
    assert all(torch.equal(a, b) for a, b in zip(r0, r1))
    net = _net()
    g0, g1 = _entropy_grads(net, batches[0]["x"]), _entropy_grads(net, batches[1]["x"])
    p0 = [net[1].weight, net[1].bias, net[4].weight, net[4].bias]
    for got, p, a, b in zip(r0, p0, g0, g1):  # Adam's first step on the rank-averaged gradient
        g = (a + b) / 2
        torch.testing.assert_close(got, p.detach() - 0.01 * g / (g.abs() + 1e-8))
