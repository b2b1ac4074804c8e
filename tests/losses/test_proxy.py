"""Issue 18 proxy losses (``arcface``, ``cosface``, ``sub_center_arcface``, ``proxy_anchor``): float64 parity with
pytorch-metric-learning 2.9.0 (values and gradients, proxies included), learned proxies seen by the optimizer of a
``LightningModule`` and kept in sync under DDP, and DDP (2 ranks) equal to one process on the global batch."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import reducers as pml_reducers

import lightning_losses as ll
from lightning_losses.distributed import rank
from lightning_losses.functional import proxy as PF
from tests.helpers.ddp import lightning_env

C, D = 4, 5


def _data(n=9, c=C, seed=0, flip=True):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, D, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=g)
    target[:c] = torch.arange(c)
    return emb, target


def _pml(cls, proxies, **kwargs):
    """The peer loss with our proxies (its ``W`` is ``[D, C]``, Proxy-Anchor's ``proxies`` ``[C, D]``)."""
    peer = cls(**kwargs).double()
    with torch.no_grad():
        if hasattr(peer, "W"):
            peer.W.copy_(proxies.T)
        else:
            peer.proxies.copy_(proxies)
    return peer


def _ours(name, proxies, **kwargs):
    loss = ll.build_loss(name, **kwargs).double()
    with torch.no_grad():
        loss.proxies.copy_(proxies)
    return loss


def _compare(ours, peer_fn, emb, target, per_sample=True):
    a, b = emb.clone().requires_grad_(), emb.clone().requires_grad_()
    mine = ours(embeddings=a, target=target)
    theirs = peer_fn(b, target)
    torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
    g = torch.Generator().manual_seed(5)
    upstream = torch.rand(mine.shape, generator=g, dtype=torch.float64) if per_sample else torch.tensor(1.0).double()
    (mine * upstream).sum().backward()
    (theirs * upstream).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-12)
    return ours.proxies.grad


@pytest.mark.parametrize("degrees", [28.6, 10.0])
def test_arcface_matches_pytorch_metric_learning(degrees):
    emb, target = _data()
    proxies = torch.randn(C, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    emb[5] = -3.0 * proxies[target[5]] + 0.2 * emb[5]  # θ > π - m: the monotone branch cos θ - m sin m
    peer = _pml(
        pml_losses.ArcFaceLoss,
        proxies,
        num_classes=C,
        embedding_size=D,
        margin=degrees,
        scale=16.0,
        reducer=pml_reducers.DoNothingReducer(),
    )
    ours = _ours("arcface", proxies, num_classes=C, embedding_size=D, margin=math.radians(degrees), scale=16.0)
    cos_y = PF.proxy_cosine(emb, proxies)[5, target[5]]
    assert cos_y < -math.cos(math.radians(degrees))  # the branch is exercised
    grad = _compare(ours, lambda e, t: peer(e, t)["loss"]["losses"], emb, target)
    torch.testing.assert_close(grad, peer.W.grad.T, rtol=1e-9, atol=1e-12)


def test_arcface_default_reduction_matches_peer_mean():
    emb, target = _data(seed=2)
    proxies = torch.randn(C, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    peer = _pml(pml_losses.ArcFaceLoss, proxies, num_classes=C, embedding_size=D)
    ours = _ours("arcface", proxies, num_classes=C, embedding_size=D, margin=math.radians(28.6))
    out = ll.Objective([ll.objective.Term("arcface", ours, ll.schedules.Constant(1.0))])(
        {"embeddings": emb, "target": target}
    )
    torch.testing.assert_close(out.value, peer(emb, target), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("margin", [0.35, 0.1])
def test_cosface_matches_pytorch_metric_learning(margin):
    emb, target = _data(seed=4)
    proxies = torch.randn(C, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    peer = _pml(
        pml_losses.CosFaceLoss,
        proxies,
        num_classes=C,
        embedding_size=D,
        margin=margin,
        scale=20.0,
        reducer=pml_reducers.DoNothingReducer(),
    )
    ours = _ours("cosface", proxies, num_classes=C, embedding_size=D, margin=margin, scale=20.0)
    grad = _compare(ours, lambda e, t: peer(e, t)["loss"]["losses"], emb, target)
    torch.testing.assert_close(grad, peer.W.grad.T, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3])
def test_sub_center_arcface_matches_pytorch_metric_learning(k):
    emb, target = _data(seed=6)
    proxies = torch.randn(C * k, D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    peer = _pml(
        pml_losses.SubCenterArcFaceLoss,
        proxies,
        num_classes=C,
        embedding_size=D,
        sub_centers=k,
        scale=16.0,
        reducer=pml_reducers.DoNothingReducer(),
    )
    ours = _ours(
        "sub_center_arcface",
        proxies,
        num_classes=C,
        embedding_size=D,
        sub_centers=k,
        margin=math.radians(28.6),
        scale=16.0,
    )
    assert ours.proxies.shape == (C * k, D)
    grad = _compare(ours, lambda e, t: peer(e, t)["loss"]["losses"], emb, target)
    torch.testing.assert_close(grad, peer.W.grad.T, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("margin", "alpha", "classes"), [(0.1, 32.0, C), (0.3, 8.0, C + 2)])
def test_proxy_anchor_matches_pytorch_metric_learning(margin, alpha, classes):
    emb, target = _data(seed=8)  # with classes = C + 2 two proxies have no positive in the batch
    proxies = torch.randn(classes, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    peer = _pml(pml_losses.ProxyAnchorLoss, proxies, num_classes=classes, embedding_size=D, margin=margin, alpha=alpha)
    ours = _ours("proxy_anchor", proxies, num_classes=classes, embedding_size=D, margin=margin, alpha=alpha)
    grad = _compare(ours, peer, emb, target, per_sample=False)
    torch.testing.assert_close(grad, peer.proxies.grad, rtol=1e-9, atol=1e-12)


def test_proxy_anchor_class_holding_the_whole_batch_has_no_negative_term():
    proxies = torch.eye(2, dtype=torch.float64)
    emb, target = torch.eye(2, dtype=torch.float64)[[0, 0]], torch.tensor([0, 0])
    peer = _pml(pml_losses.ProxyAnchorLoss, proxies, num_classes=2, embedding_size=2, alpha=4.0)
    loss = PF.proxy_anchor(emb, target, proxies, alpha=4.0)
    torch.testing.assert_close(loss, peer(emb, target))
    expected = math.log1p(2 * math.exp(4.0 * (0.1 - 1.0))) + math.log1p(2 * math.exp(4.0 * 0.1)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-12)


def test_ignore_index_and_mask():
    emb, target = _data(seed=10)
    target[2] = -100
    loss = ll.build_loss("arcface", num_classes=C, embedding_size=D).double()
    out = loss(embeddings=emb, target=target)
    assert out[2] == 0 and (out[[0, 1, 3]] > 0).all()
    assert loss.sample_mask(target=target).tolist() == [i != 2 for i in range(9)]


def test_float32_and_half_inputs_compute_in_float32():
    loss = ll.build_loss("cosface", num_classes=C, embedding_size=D)
    emb, target = _data(seed=11)
    assert loss(embeddings=emb.float(), target=target).dtype == torch.float32
    assert loss(embeddings=emb.bfloat16(), target=target).dtype == torch.float32
    assert torch.isfinite(loss(embeddings=torch.zeros(2, D), target=torch.tensor([0, 1]))).all()


def test_arcface_gradient_finite_at_cosine_one():
    proxies = torch.eye(3, D)
    emb = proxies.clone().requires_grad_()
    PF.arcface(emb, torch.tensor([0, 1, 2]), proxies).sum().backward()
    assert torch.isfinite(emb.grad).all()


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("arcface", {"num_classes": 0, "embedding_size": D}, r"`num_classes` must be an integer >= 1, got 0"),
        ("arcface", {"num_classes": C, "embedding_size": 0}, r"`embedding_size` must be an integer >= 1, got 0"),
        (
            "arcface",
            {"num_classes": C, "embedding_size": D, "margin": 2.0},
            r"`margin` must be in \[0.0, 1.5707963267948966\], got 2.0",
        ),
        ("cosface", {"num_classes": C, "embedding_size": D, "scale": 0.0}, r"`scale` must be > 0.0, got 0.0"),
        (
            "sub_center_arcface",
            {"num_classes": C, "embedding_size": D, "sub_centers": 0},
            r"`sub_centers` must be an integer >= 1, got 0",
        ),
        ("proxy_anchor", {"num_classes": C, "embedding_size": D, "alpha": -1.0}, r"`alpha` must be > 0.0, got -1.0"),
        (
            "proxy_anchor",
            {"num_classes": C, "embedding_size": D, "gather": "yes"},
            r"`gather` must be a bool \(True or False\), got 'yes'",
        ),
        ("arcface", {"embedding_size": D}, r"loss `arcface` is missing required argument\(s\): `num_classes`"),
    ],
)
def test_argument_validation(name, kwargs, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.build_loss(name, **kwargs)


@pytest.mark.parametrize(
    ("inputs", "error", "match"),
    [
        (
            {"embeddings": torch.randn(3, D + 1), "target": torch.tensor([0, 1, 2])},
            ValueError,
            r"`embeddings` must have D = 5 columns like the proxies \(`embedding_size`\), got \[3, 6\]",
        ),
        (
            {"embeddings": torch.randn(3, D), "target": torch.tensor([0, 1, 4])},
            ValueError,
            r"`target` labels must be in \[0, 3\] \(or `ignore_index`\), got \[4\]",
        ),
        (
            {"embeddings": torch.randn(3, D), "target": torch.tensor([0.0, 1.0, 2.0])},
            ValueError,
            r"`target` must hold integer class labels \(int64\), got torch.float32",
        ),
        (
            {"embeddings": torch.randn(3, D), "target": torch.tensor([0, 1])},
            ValueError,
            r"`target` must have shape \[N\] = \[3\] to match `embeddings`, got \[2\]",
        ),
        (
            {"embeddings": torch.randn(3), "target": torch.tensor([0, 1, 2])},
            ValueError,
            r"`embeddings` must be a floating tensor of shape \[N, D\], got torch.float32 \[3\]",
        ),
    ],
)
@pytest.mark.parametrize("name", ["arcface", "cosface", "sub_center_arcface", "proxy_anchor"])
def test_input_validation(name, inputs, error, match):
    with pytest.raises(error, match=match):
        ll.build_loss(name, num_classes=C, embedding_size=D)(**inputs)


def test_repr_lists_the_arguments():
    assert repr(ll.build_loss("arcface", num_classes=3, embedding_size=2)) == (
        "ArcFace(num_classes=3, embedding_size=2, margin=0.5, scale=64.0, ignore_index=-100)"
    )
    assert "sub_centers=3" in repr(ll.build_loss("sub_center_arcface", num_classes=3, embedding_size=2))


# ---------------------------------------------------------------- the optimizer sees the proxies


class _Embedder(ll.LossesMixin, L.LightningModule):
    def __init__(self, loss: str = "arcface", **kwargs):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(6, D)
        self.configure_objective({loss: {"num_classes": C, "embedding_size": D, **kwargs}})

    def training_step(self, batch, batch_idx):
        x, t = batch
        return self.compute_loss(embeddings=self.net(x), target=t)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.5)


@pytest.mark.parametrize("name", ["arcface", "proxy_anchor"])
def test_lightning_optimizer_updates_the_proxies(name, tmp_path):
    model = _Embedder(name)
    proxies = model.objective.losses[name].proxies
    assert any(p is proxies for p in model.parameters())
    assert f"objective.losses.{name}.proxies" in model.state_dict()
    before = proxies.detach().clone()
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(16, 6, generator=g), torch.randint(0, C, (16,), generator=g))
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=8))
    assert not torch.equal(proxies.detach(), before)


# ---------------------------------------------------------------- DDP: k ranks == one process


def _objective_step(name, inputs, target, weight, proxies):
    """One Objective step on ``embeddings = inputs @ weight``: (value, per_sample, weights, grad_emb, grad_proxies)."""
    loss = (
        _ours(name, proxies, num_classes=C, embedding_size=D, scale=8.0)
        if name != "proxy_anchor"
        else _ours(name, proxies, num_classes=C, embedding_size=D, alpha=8.0)
    )
    emb = inputs @ weight.clone().requires_grad_(True)
    emb.retain_grad()
    out = ll.Objective([ll.objective.Term(name, loss, ll.schedules.Constant(1.0))])(
        {"embeddings": emb, "target": target}
    )
    out.loss.backward()
    return out.value.detach(), out.per_sample.detach(), out.weights, emb.grad, loss.proxies.grad


def _ddp_step(name, inputs, targets, weight, proxies):
    return _objective_step(name, inputs[rank()], targets[rank()], weight, proxies)


@pytest.mark.parametrize("name", ["arcface", "cosface", "sub_center_arcface", "proxy_anchor"])
def test_ddp_equals_one_process(ddp, name):
    g = torch.Generator().manual_seed(20)
    sizes = (5, 7)
    inputs = [torch.randn(n, 6, generator=g, dtype=torch.float64) for n in sizes]
    targets = [torch.randint(0, C, (n,), generator=g) for n in sizes]
    targets[1][2] = -100 if name != "proxy_anchor" else 3
    weight = torch.randn(6, D, generator=g, dtype=torch.float64)
    k = 3 if name == "sub_center_arcface" else 1
    proxies = torch.randn(C * k, D, generator=g, dtype=torch.float64)
    results = ddp.run(_ddp_step, name, inputs, targets, weight, proxies)
    value, per_sample, weights, grad_emb, grad_proxies = _objective_step(
        name, torch.cat(inputs), torch.cat(targets), weight, proxies
    )
    starts = (0, sizes[0])
    for r, (v, ps, wts, ge, _) in enumerate(results):
        rows = slice(starts[r], starts[r] + sizes[r])
        torch.testing.assert_close(v, value)
        torch.testing.assert_close(ps, per_sample[rows])
        torch.testing.assert_close(wts, weights[rows])
        torch.testing.assert_close(ge / 2, grad_emb[rows])  # DDP averages over the 2 ranks
    torch.testing.assert_close((results[0][4] + results[1][4]) / 2, grad_proxies)


def _ddp_train(name, inputs, targets):
    """Two SGD steps of a DDP-wrapped module whose objective holds the proxies; returns (proxies, net weight)."""

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Linear(6, D).double()
            self.objective = ll.Objective({name: {"num_classes": C, "embedding_size": D}}).double()

        def forward(self, x, t):
            return self.objective({"embeddings": self.net(x), "target": t}).loss

    model = Model()
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if torch.distributed.is_initialized() else model
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.5)
    for _ in range(2):
        opt.zero_grad()
        wrapped(inputs[rank()], targets[rank()]).backward()
        opt.step()
    return model.objective.losses[name].proxies.detach().clone(), model.net.weight.detach().clone()


@pytest.mark.parametrize("name", ["arcface", "proxy_anchor"])
def test_ddp_training_keeps_proxies_in_sync_and_equal_to_one_process(ddp, name):
    g = torch.Generator().manual_seed(30)
    inputs = [torch.randn(n, 6, generator=g, dtype=torch.float64) for n in (6, 6)]
    targets = [torch.randint(0, C, (6,), generator=g) for _ in range(2)]
    results = ddp.run(_ddp_train, name, inputs, targets)
    one = _ddp_train(name, [torch.cat(inputs)], [torch.cat(targets)])
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)  # identical on both ranks
    torch.testing.assert_close(results[0][0], one[0])
    torch.testing.assert_close(results[0][1], one[1])


def _fit_embedder(name, batch_size):
    g = torch.Generator().manual_seed(3)
    data = torch.utils.data.TensorDataset(torch.randn(16, 6, generator=g), torch.randint(0, C, (16,), generator=g))
    model = _Embedder(name)
    distributed = torch.distributed.is_initialized()
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        devices=2 if distributed else 1,
        strategy="ddp" if distributed else "auto",
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    # rank r reads samples r, r + 2, ...: each step's two shards together are the 1-process batch of 8
    sampler = torch.utils.data.DistributedSampler(data, shuffle=False) if distributed else None
    trainer.fit(model, torch.utils.data.DataLoader(data, batch_size=batch_size, sampler=sampler))
    return model.objective.losses[name].proxies.detach().clone(), model.net.weight.detach().clone()


def _ddp_fit(name):

    with lightning_env():
        return _fit_embedder(name, batch_size=4)


@pytest.mark.ddp
@pytest.mark.parametrize("name", ["arcface", "proxy_anchor"])
def test_lightning_ddp_trains_the_proxies_in_sync_as_one_process(ddp, name):
    """A 2-process Lightning DDP fit (4 samples per rank and step) leaves the same proxies on both ranks, equal to a
    1-process fit on the 8-sample global batches."""
    (p0, w0), (p1, w1) = ddp.run(_ddp_fit, name)
    torch.testing.assert_close(p0, p1, rtol=0, atol=0)
    one_p, one_w = _fit_embedder(name, batch_size=8)
    assert not torch.equal(one_p, _Embedder(name).objective.losses[name].proxies.detach())  # they were trained
    torch.testing.assert_close(p0, one_p)
    torch.testing.assert_close(w0, one_w)
