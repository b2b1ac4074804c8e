"""⊥Grad (``perp_grad``) against explicit float64 loops: the projection, and inside a Trainer alone, after SAM's
perturbed step, before gradient clipping, under a GradScaler and gradient accumulation; DDP and FSDP2 against one
process."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.precision import MixedPrecision

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation.perp_grad import orthogonalize_gradients_

from ._lightning import Tiny, data, loader, trainer
from ._reference import descent_grad, grad_at, norm, sam_eps, tiny_model


def _project_loop(w: torch.Tensor, g: torch.Tensor, rescale: bool = True, eps: float = 1e-30) -> torch.Tensor:
    """The authors' per-tensor rule over plain floats."""
    ws, gs = [float(v) for v in w.reshape(-1)], [float(v) for v in g.reshape(-1)]
    ww = sum(a * a for a in ws)
    wg = sum(a * b for a, b in zip(ws, gs))
    perp = [b - wg / (ww + eps) * a for a, b in zip(ws, gs)]
    if rescale:
        scale = math.sqrt(sum(b * b for b in gs)) / (math.sqrt(sum(q * q for q in perp)) + eps)
        perp = [q * scale for q in perp]
    return torch.tensor(perp, dtype=torch.float64).reshape(g.shape)


def _params(dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    shapes = [(4, 3), (5,), (2, 2, 3), (3,), (2,)]
    params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]
    for p in params[:4]:
        p.grad = torch.randn(p.shape, generator=gen, dtype=dtype) + 0.7 * p.detach()  # partly along the weight
    params[2].data.zero_()  # a zero weight: nothing to remove
    params[3].grad.zero_()  # a zero gradient stays zero
    return params  # params[4] has no gradient


@pytest.mark.parametrize("rescale", [True, False])
def test_projection_matches_loop(rescale):
    params = _params()
    before = [(p.detach().clone(), None if p.grad is None else p.grad.clone()) for p in params]
    removed = orthogonalize_gradients_(params, rescale=rescale)
    num = den = 0.0
    for p, (w, g) in zip(params, before):
        if g is None:
            assert p.grad is None
            continue
        torch.testing.assert_close(p.grad, _project_loop(w, g, rescale))
        assert abs(float((p.grad * w).sum())) < 1e-12  # orthogonal to the weight
        if rescale:
            torch.testing.assert_close(p.grad.norm(), g.norm())  # per-tensor norm kept
        ww, wg = float((w * w).sum()), float((w * g).sum())
        num, den = num + wg * wg / (ww + 1e-30), den + float((g * g).sum())
    torch.testing.assert_close(removed, torch.tensor(math.sqrt(num / den), dtype=torch.float64))
    assert float(removed) > 0.3  # the gradients had a large parallel part: the test is not vacuous


def test_low_precision_and_non_contiguous_and_non_finite():
    # bfloat16 weights and gradients: sums in float32, the result near the float64 loop
    params = _params(torch.bfloat16)
    expected = [_project_loop(p.detach().double(), p.grad.double()) for p in params[:4]]
    orthogonalize_gradients_(params)
    for p, e in zip(params, expected):
        assert p.grad.dtype == torch.bfloat16
        torch.testing.assert_close(p.grad.double(), e, atol=3e-2, rtol=3e-2)
    # a non-contiguous gradient is edited in place (not a flattened copy)
    w = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    w.grad = torch.randn(3, 4, dtype=torch.float64).t()
    assert not w.grad.is_contiguous()
    g0 = w.grad.clone()
    orthogonalize_gradients_([w])
    torch.testing.assert_close(w.grad, _project_loop(w.detach(), g0))
    # a non-finite gradient is left as it is, the others are projected
    bad, good = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.tensor([1.0, 0.0]))
    bad.grad, good.grad = torch.tensor([1.0, float("inf"), 2.0]), torch.tensor([3.0, 4.0])
    orthogonalize_gradients_([bad, good])
    assert bad.grad[1] == float("inf") and bad.grad[0] == 1.0
    torch.testing.assert_close(good.grad, torch.tensor([0.0, 5.0]))
    assert orthogonalize_gradients_([torch.nn.Parameter(torch.ones(2))]) is None  # no gradient at all


# ------------------------------------------------------------------------------------------- in a Trainer


def _batches(batch_size, n=16):
    d = data(n)
    return [
        (d.tensors[0][i : i + batch_size].double(), d.tensors[1][i : i + batch_size]) for i in range(0, n, batch_size)
    ]


def _reference(batches, rho=None, clip=None, algorithm="norm", against_perturbed=False, order="project_first"):
    """float64 steps of SGD(momentum 0.9, lr 0.1): the gradient (SAM's at w + e when ``rho``), projected per tensor
    against the weights w (``against_perturbed``: wrongly against w + e), then clipped (``order``)."""
    model = tiny_model(dtype=torch.float64)
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=0.1, momentum=0.9)
    for x, y in batches:
        w = {k: v.detach().clone() for k, v in params.items()}
        g = grad_at(model, w, x, y)
        eps = {k: torch.zeros_like(v) for k, v in w.items()}
        if rho is not None:
            eps = sam_eps(g, rho)
            g = descent_grad(model, w, eps, x, y)

        def project(grads, w=w, eps=eps):
            return {k: _project_loop(w[k] + eps[k] if against_perturbed else w[k], v) for k, v in grads.items()}

        def clip_(grads):
            if clip is None:
                return grads
            if algorithm == "value":
                return {k: v.clamp(-clip, clip) for k, v in grads.items()}
            coef = min(1.0, clip / (norm(grads.values()) + 1e-6))
            return {k: v * coef for k, v in grads.items()}

        g = clip_(project(g)) if order == "project_first" else project(clip_(g))
        for k, p in params.items():
            p.grad = g[k].clone()
        opt.step()
    return {f"net.{k}": v.detach() for k, v in params.items()}


def _assert_weights(module, expected, atol=1e-6):
    for k, v in module.named_parameters():
        torch.testing.assert_close(v.detach().double(), expected[k], atol=atol, rtol=0)


def _max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_plain_step_and_logging():
    model = Tiny()
    t = trainer([ll.PerpGrad()], max_steps=2)
    t.fit(model, loader(8))
    _assert_weights(model, _reference(_batches(8)))
    assert 0.0 < float(t.callback_metrics["perp_grad/removed_fraction"]) < 1.0
    assert _max_diff(_reference(_batches(8)), _reference_without_projection(_batches(8))) > 1e-4


def _reference_without_projection(batches):
    model = tiny_model(dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return {f"net.{k}": v.detach() for k, v in model.named_parameters()}


@pytest.mark.parametrize("sam_first", [True, False])
def test_after_sam_the_descent_gradient_is_projected_against_the_restored_weights(sam_first):
    """The callbacks' order does not matter: ⊥Grad runs after SAM's whole closure, the weights restored."""
    callbacks = [ll.SAM(rho=0.5), ll.PerpGrad()]
    model = Tiny()
    t = trainer(callbacks if sam_first else callbacks[::-1], max_steps=2)
    t.fit(model, loader(8))
    expected = _reference(_batches(8), rho=0.5)
    _assert_weights(model, expected)
    assert model.training_step_calls == 4  # SAM ran: two passes per step
    assert _max_diff(expected, _reference(_batches(8), rho=0.5, against_perturbed=True)) > 1e-4
    assert _max_diff(expected, _reference(_batches(8))) > 1e-4  # SAM changed the step


@pytest.mark.parametrize(("algorithm", "clip"), [("norm", 0.05), ("value", 0.01)])
def test_projection_comes_before_gradient_clipping(algorithm, clip):
    model = Tiny()
    t = trainer([ll.PerpGrad()], max_steps=2, gradient_clip_val=clip, gradient_clip_algorithm=algorithm)
    t.fit(model, loader(8))
    expected = _reference(_batches(8), clip=clip, algorithm=algorithm)
    _assert_weights(model, expected)
    other_order = _reference(_batches(8), clip=clip, algorithm=algorithm, order="clip_first")
    if algorithm == "norm":  # each tensor keeps its norm, so norm clipping commutes with ⊥Grad
        assert _max_diff(expected, other_order) < 1e-12
    else:
        assert _max_diff(expected, other_order) > 1e-4
    assert _max_diff(expected, _reference(_batches(8))) > 1e-4  # the clipping was active


def test_under_a_grad_scaler_and_gradient_accumulation():
    """16-mixed: the hook sees the unscaled gradient (the projection is scale-free anyway); accumulation: the summed
    gradient of both micro-batches is projected once."""
    plugin = MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))
    model = Tiny()
    t = trainer([ll.PerpGrad()], max_steps=2, plugins=[plugin])
    t.fit(model, loader(8))
    assert t.precision_plugin.scaler.get_scale() >= 2.0**15
    _assert_weights(model, _reference(_batches(8)), atol=2e-3)
    model = Tiny()
    t = trainer([ll.PerpGrad()], max_steps=2, accumulate_grad_batches=2)
    t.fit(model, loader(4))
    _assert_weights(model, _reference(_batches(8)))


# ------------------------------------------------------------------------------------------- DDP / FSDP2


class _Recorder(Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.seen.append((batch[0].clone(), batch[1].clone()))


def _distributed_runs() -> dict[str, float]:
    import torch.distributed as dist

    from lightning_losses.distributed import rank
    from tests.sharded import _fsdp2

    recorder, acc_recorder = _Recorder(), _Recorder()
    ddp = _fsdp2.fit("ddp", [ll.PerpGrad(), recorder])
    fsdp2 = _fsdp2.fit("fsdp2", [ll.PerpGrad()])
    plain = _fsdp2.fit("ddp", [])
    sam_ddp = _fsdp2.fit("ddp", [ll.SAM(rho=0.5, sync_ascent=True), ll.PerpGrad()])
    sam_fsdp2 = _fsdp2.fit("fsdp2", [ll.SAM(rho=0.5, sync_ascent=True), ll.PerpGrad()])
    accumulated = _fsdp2.fit("ddp", [ll.PerpGrad(), acc_recorder], trainer_kw={"accumulate_grad_batches": 2})

    def one_process(seen, k):
        """One process on the concatenated batches of both ranks, k micro-batches per step."""
        shards = [None, None]
        dist.all_gather_object(shards, seen)
        model = _fsdp2.Net()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        for step in range(len(seen) // k):
            parts = [b for shard in shards for b in shard[step * k : (step + 1) * k]]
            opt.zero_grad()
            x, y = torch.cat([b[0] for b in parts]), torch.cat([b[1] for b in parts])
            torch.nn.functional.cross_entropy(model(x), y).backward()
            orthogonalize_gradients_(model.parameters())
            opt.step()
        return {n: p.detach().double() for n, p in model.named_parameters()}

    single = one_process(recorder.seen, 1)
    return {
        "ddp_vs_one_process": _max_diff(ddp, single),
        "accumulated_vs_one_process": _max_diff(accumulated, one_process(acc_recorder.seen, 2)),
        "fsdp2_vs_ddp": _max_diff(fsdp2, ddp),
        "moved": _max_diff(ddp, plain),
        "sam_fsdp2_vs_ddp": _max_diff(sam_fsdp2, sam_ddp),
        "sam_moved": _max_diff(sam_ddp, ddp),
        "steps": len(recorder.seen),
        "rank": rank(),
    }


@pytest.mark.ddp
def test_ddp_equals_one_process_and_fsdp2_equals_ddp(ddp):
    for result in ddp.run(_distributed_runs):
        assert result["ddp_vs_one_process"] < 1e-6 and result["accumulated_vs_one_process"] < 1e-6, result
        assert result["fsdp2_vs_ddp"] < 1e-6 and result["sam_fsdp2_vs_ddp"] < 1e-6, result
        assert result["moved"] > 1e-4 and result["sam_moved"] > 1e-4 and result["steps"] == 3, result


# ------------------------------------------------------------------------------------------- configuration


def test_configuration_registry_and_state():
    assert "perp_grad" in ll.list_callbacks()
    (cb,) = ll.build_callbacks({"perp_grad": {"rescale": False}})
    assert isinstance(cb, ll.PerpGrad) and cb.rescale is False
    assert cb.state_dict() == {}  # stateless: nothing in checkpoints
    with pytest.raises(ConfigurationError, match=r"`eps` must be > 0.0, got 0.0"):
        ll.PerpGrad(eps=0.0)
    with pytest.raises(ConfigurationError, match=r"`rescale` must be a bool \(True or False\), got 'yes'"):
        ll.PerpGrad(rescale="yes")
    with pytest.raises(ConfigurationError, match=r"callbacks.perp_grad.*got an unexpected argument `rescal`"):
        ll.build_callbacks({"perp_grad": {"rescal": False}})
    with pytest.raises(ConfigurationError, match=r"PerpGrad does not support the `object` strategy; supported:"):
        ll.PerpGrad().setup(SimpleNamespace(strategy=object()), None, "fit")
