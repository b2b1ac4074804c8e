"""gsam, wsam, friendly_sam, esam: parameter trajectories against pytorch_optimizer 4.1.0 (float64, several steps,
SGD with momentum as the base optimizer) or, for esam, an explicit loop of the paper's formula; validation messages;
state round-trip; composition with every_n_steps / LookSAM / a GradScaler's scale."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import build_perturbation, perturbed_backward

from ._reference import descent_grad, grad_at, norm, tiny_batch, tiny_model

sam_module = pytest.importorskip("pytorch_optimizer.optimizer.sam")

LR, MOMENTUM, STEPS = 0.1, 0.9, 4


def _batches():
    return [tiny_batch(seed=20 + s, n=8) for s in range(STEPS)]


def _ours(method, kwargs, seed=0):
    model = tiny_model(seed)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    engine = build_perturbation(method, **kwargs)
    for x, y in _batches():
        opt.zero_grad()
        loss_fn = lambda x=x, y=y: nn.functional.cross_entropy(model(x), y)  # noqa: E731
        perturbed_backward(engine, model, loss_fn, optimizer=opt)
        opt.step()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _peer(make, closure_first=False, pair=False, seed=0):
    model = tiny_model(seed)
    opt = make(model)
    for x, y in _batches():

        @torch.enable_grad()
        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return (None, loss) if pair else loss  # GSAM's closure returns (outputs, loss)

        if closure_first:  # FriendlySAM: the gradient at w is computed before `step`
            closure()
        else:
            opt.zero_grad()
        opt.step(closure)
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def _same(a, b, atol=1e-12):
    moved = max(float((a[k] - tiny_model(0).state_dict()[k]).abs().max()) for k in a)
    assert moved > 1e-3  # the steps did something
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-9, msg=k)


def _float64_global_norm(param_groups, device=None, *, weight_adaptive=False):
    """pytorch_optimizer's squared global gradient norm without its float32 rounding (it casts the norms to float32,
    a 6e-8 relative error that would otherwise set the tolerance of a float64 comparison)."""
    squares = [
        ((p.grad * p.abs()) if weight_adaptive and g.get("adaptive", False) else p.grad).double().square().sum()
        for g in param_groups
        for p in g["params"]
        if p.grad is not None
    ]
    return torch.stack(squares).sum().reshape(1)


@pytest.fixture(autouse=True)
def _peer_in_float64(monkeypatch):
    monkeypatch.setattr(sam_module, "get_global_gradient_norm", _float64_global_norm)


class _Rho:
    def __init__(self, rho):
        self.rho = rho

    def step(self):
        return self.rho


def test_gsam_trajectory_equals_pytorch_optimizer():
    def make(model):
        base = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
        return sam_module.GSAM(model.parameters(), base, model, _Rho(0.3), alpha=0.4)

    _same(_ours("gsam", {"rho": 0.3, "alpha": 0.4}), _peer(make, pair=True))


def test_gsam_with_alpha_zero_is_sam():
    _same(_ours("gsam", {"rho": 0.3, "alpha": 0.0}), _ours("sam", {"rho": 0.3}), atol=0)


def test_wsam_trajectory_equals_pytorch_optimizer_coupled():
    def make(model):
        return sam_module.WSAM(
            model, model.parameters(), torch.optim.SGD, rho=0.3, gamma=0.8, decouple=False, lr=LR, momentum=MOMENTUM
        )

    _same(_ours("wsam", {"rho": 0.3, "gamma": 0.8, "decouple": False}), _peer(make))


def test_wsam_decoupled_trajectory_equals_pytorch_optimizer():
    """The default (decoupled) form: the optimizer steps on g, the sharpness term as a plain SGD step afterwards."""
    model = tiny_model()
    opt = sam_module.WSAM(model, model.parameters(), torch.optim.SGD, rho=0.3, gamma=0.8, lr=LR, momentum=MOMENTUM)
    mine = tiny_model()
    mine_opt = torch.optim.SGD(mine.parameters(), lr=LR, momentum=MOMENTUM)
    engine = build_perturbation("wsam", rho=0.3, gamma=0.8)
    for x, y in _batches():

        @torch.enable_grad()
        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.zero_grad()
        opt.step(closure)
        mine_opt.zero_grad()
        loss_fn = lambda x=x, y=y: nn.functional.cross_entropy(mine(x), y)  # noqa: E731
        perturbed_backward(engine, mine, loss_fn, optimizer=mine_opt)
        mine_opt.step()
    for (k, a), b in zip(model.named_parameters(), mine.parameters()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9, msg=k)
    coupled = _ours("wsam", {"rho": 0.3, "gamma": 0.8, "decouple": False})
    assert any(not torch.allclose(b, coupled[k]) for k, b in mine.named_parameters())  # momentum: another method


def test_wsam_decoupled_needs_the_optimizer():
    model = tiny_model()
    x, y = tiny_batch()
    with pytest.raises(ConfigurationError, match=r"WSAM's decoupled form \(`decouple=True`\) applies its sharpness"):
        perturbed_backward(build_perturbation("wsam"), model, lambda: nn.functional.cross_entropy(model(x), y))


def test_wsam_coupled_equals_decoupled_for_plain_sgd():
    """The two forms coincide for SGD without momentum (against the reference's default form)."""
    model = tiny_model()
    opt = sam_module.WSAM(model, model.parameters(), torch.optim.SGD, rho=0.3, gamma=0.8, lr=LR)
    mine = tiny_model()
    mine_opt = torch.optim.SGD(mine.parameters(), lr=LR)
    engine = build_perturbation("wsam", rho=0.3, gamma=0.8, decouple=False)
    for x, y in _batches():

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.zero_grad()
        opt.step(closure)
        mine_opt.zero_grad()
        perturbed_backward(engine, mine, lambda x=x, y=y: nn.functional.cross_entropy(mine(x), y))
        mine_opt.step()
    for (k, a), b in zip(model.named_parameters(), mine.parameters()):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-9, msg=k)


def test_wsam_with_gamma_half_is_sam():
    _same(_ours("wsam", {"rho": 0.3, "gamma": 0.5, "decouple": False}), _ours("sam", {"rho": 0.3}), atol=1e-15)


def test_friendly_sam_trajectory_equals_pytorch_optimizer():
    def make(model):
        return sam_module.FriendlySAM(
            model.parameters(), torch.optim.SGD, rho=0.3, sigma=0.7, lmbda=0.6, lr=LR, momentum=MOMENTUM
        )

    _same(_ours("friendly_sam", {"rho": 0.3, "sigma": 0.7, "lmbda": 0.6}), _peer(make, closure_first=True))


def _esam_reference(rho, beta, seed=0):
    """The paper's SWP, explicitly: tensor l kept with the documented draw; eps = rho/beta * g_S / ||g_S||."""
    model = tiny_model()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=LR, momentum=MOMENTUM)
    for step, (x, y) in enumerate(_batches()):
        w = {k: v.detach().clone() for k, v in params.items()}
        g = grad_at(model, w, x, y)
        draw = random.Random(seed * 1_000_003 + step + 7919)
        kept = {k: draw.random() < beta for k in g}
        n = norm([g[k] for k in g if kept[k]])
        eps = {k: (rho / beta) * g[k] / (n + 1e-12) if kept[k] else torch.zeros_like(g[k]) for k in g}
        gp = descent_grad(model, w, eps, x, y)
        for k, p in params.items():
            p.grad = gp[k]
        opt.step()
    return {k: v.detach().clone() for k, v in params.items()}


def test_esam_trajectory_equals_paper_formula():
    _same(_ours("esam", {"rho": 0.3, "beta": 0.5, "gamma": 1.0}), _esam_reference(0.3, 0.5))
    _same(_ours("esam", {"rho": 0.3, "beta": 1.0, "gamma": 1.0}), _ours("sam", {"rho": 0.3}), atol=0)


def test_esam_drops_tensors():
    """beta = 0.5 leaves some tensor unperturbed on some step (the draw is not vacuous)."""
    rngs = [random.Random(s + 7919) for s in range(STEPS)]
    draws = [[rng.random() < 0.5 for _ in range(4)] for rng in rngs]
    assert any(not all(d) for d in draws) and any(any(d) for d in draws)


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("gsam", {"alpha": -0.1}, r"`alpha` must be >= 0.0, got -0.1"),
        ("gsam", {"descent_weight": 0.1}, r"perturbation `gsam` calls `descent_weight` `alpha`: pass `alpha=`"),
        ("gsam", {"descent": "weighted"}, r"perturbation `gsam` fixes `descent`"),
        ("wsam", {"gamma": 1.0}, r"`gamma` must be in \[0.0, 1.0\), got 1.0"),
        ("friendly_sam", {"lmbda": 1.5}, r"`lmbda` must be in \[0.0, 1.0\], got 1.5"),
        ("friendly_sam", {"sigma": -1}, r"`sigma` must be >= 0.0, got -1"),
        ("friendly_sam", {"inner_steps": 2}, r"`direction='friendly'` takes one ascent step, got inner_steps=2"),
        ("esam", {"beta": 0.0}, r"`beta` must be in \(0.0, 1.0\], got 0.0"),
        ("sam", {"decouple": True}, r"`decouple` applies to `descent='weighted'` \(WSAM\) only, got descent='perturb"),
        ("wsam", {"decouple": 1}, r"`decouple` must be true or false, got 1"),
        ("sam", {"sigma": 0.5}, r"`sigma` applies to `direction='friendly'` only, got sigma=0.5"),
        ("sam", {"keep_probability": 0.5}, r"`keep_probability` applies to `direction='stochastic'` only"),
        ("gsam", {"alhpa": 0.1}, r"unexpected argument `alhpa`; did you mean `alpha`\?"),
    ],
)
def test_validation_messages(name, kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        build_perturbation(name, **kwargs)


def test_generic_engine_refuses_unused_descent_weight():
    with pytest.raises(ConfigurationError, match=r"`descent_weight` applies to `descent` 'surrogate_gap' or"):
        ll.Perturbation(descent_weight=0.3)


def test_registered_and_listed():
    names = ll.list_perturbations()
    for name in ("gsam", "wsam", "friendly_sam", "esam"):
        assert name in names
        assert getattr(ll.perturbation, name).__doc__.count("Example") == 1


def _run_engine(engine, model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        perturbed_backward(engine, model, lambda x=x, y=y: nn.functional.cross_entropy(model(x), y), optimizer=opt)
        opt.step()


def test_friendly_sam_state_round_trip():
    """Resume after 2 steps from the engine's state_dict (its momentum) continues exactly; without it, not."""
    batches = _batches()
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    engine = build_perturbation("friendly_sam", rho=0.3, lmbda=0.6)
    _run_engine(engine, model, opt, batches[:2])
    state = engine.state_dict()
    assert len(state["direction_state"]["momentum"]) == 4
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    _run_engine(engine, model, opt, batches[2:])

    resumed = tiny_model()
    resumed.load_state_dict(weights)
    fresh = build_perturbation("friendly_sam", rho=0.3, lmbda=0.6)
    fresh.load_state_dict(state)
    _run_engine(fresh, resumed, torch.optim.SGD(resumed.parameters(), lr=LR), batches[2:])
    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)

    forgotten = tiny_model()
    forgotten.load_state_dict(weights)
    no_state = build_perturbation("friendly_sam", rho=0.3, lmbda=0.6)
    _run_engine(no_state, forgotten, torch.optim.SGD(forgotten.parameters(), lr=LR), batches[2:])
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), forgotten.parameters()))


def test_old_state_without_direction_state_loads():
    engine = build_perturbation("sam")
    engine.load_state_dict({"skipped": 0, "perturbed_steps": 3, "calls": 3, "orthogonal": None})
    assert engine.perturbed_steps == 3 and engine.direction_state == {}


@pytest.mark.parametrize("name", ["gsam", "wsam", "friendly_sam", "esam"])
def test_every_n_steps_and_looksam_compose(name):
    """Plain steps in between (every_n_steps=2) equal plain SGD steps; LookSAM's reuse changes them."""
    extra = {"gamma": 1.0} if name == "esam" else {}
    every = _ours(name, {"rho": 0.3, "every_n_steps": 2, **extra})
    looksam = _ours(name, {"rho": 0.3, "every_n_steps": 2, "reuse_alpha": 0.7, **extra})
    assert any(not torch.equal(every[k], looksam[k]) for k in every)
    every_sam = _ours("sam", {"rho": 0.3, "every_n_steps": 2})
    assert any(not torch.equal(every[k], every_sam[k]) for k in every) or name == "esam"


def test_gsam_descent_under_a_loss_scale():
    """With a GradScaler's scale S on the gradients, .grad ends as S times the unscaled GSAM gradient."""
    x, y = tiny_batch()
    out = {}
    for scale in (1.0, 1024.0):
        model = tiny_model()
        engine = build_perturbation("gsam", rho=0.3, alpha=0.5)

        def forward_backward(phase, model=model, scale=scale):
            loss = nn.functional.cross_entropy(model(x), y)
            (loss * scale).backward()
            return loss.detach()

        engine.step(forward_backward, list(model.named_parameters()), grad_scale=scale)
        out[scale] = [p.grad / scale for p in model.parameters()]
    for a, b in zip(out[1.0], out[1024.0]):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)  # eps in ||g_p||^2 + eps is not scaled


# ---------------------------------------------------------------- ESAM's sharpness-sensitive data selection


def _per_sample_loss(model, weights, x, y):
    from torch.func import functional_call

    return nn.functional.cross_entropy(functional_call(model, weights, (x,)), y, reduction="none")


def _esam_sds_reference(rho, beta, gamma, seed=0):
    """SWP as above, then the descent gradient of the mean loss at w + eps over the floor(gamma B) samples whose loss
    rose most (explicit loop over the paper's steps, float64)."""
    model = tiny_model()
    params = dict(model.named_parameters())
    opt = torch.optim.SGD(params.values(), lr=LR, momentum=MOMENTUM)
    for step, (x, y) in enumerate(_batches()):
        w = {k: v.detach().clone() for k, v in params.items()}
        g = grad_at(model, w, x, y)
        draw = random.Random(seed * 1_000_003 + step + 7919)
        kept = {k: draw.random() < beta for k in g}
        n = norm([g[k] for k in g if kept[k]])
        eps = {k: (rho / beta) * g[k] / (n + 1e-12) if kept[k] else torch.zeros_like(g[k]) for k in g}
        before = _per_sample_loss(model, w, x, y)
        moved = {k: (w[k] + eps[k]).requires_grad_(True) for k in w}
        after = _per_sample_loss(model, moved, x, y)
        sharp = [(float(after[i].detach() - before[i]), i) for i in range(len(y))]
        top = [i for _, i in sorted(sharp, reverse=True)[: int(gamma * len(y))]]
        loss = sum(after[i] for i in top) / len(top)
        grads = torch.autograd.grad(loss, list(moved.values()))
        for p, gk in zip(params.values(), grads):
            p.grad = gk
        opt.step()
    return {k: v.detach().clone() for k, v in params.items()}


def _ours_per_sample(method, kwargs):
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    engine = build_perturbation(method, **kwargs)
    for x, y in _batches():
        opt.zero_grad()
        loss_fn = lambda x=x, y=y: nn.functional.cross_entropy(model(x), y, reduction="none")  # noqa: E731
        perturbed_backward(engine, model, loss_fn)
        opt.step()
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_esam_data_selection_equals_paper_formula():
    ours = _ours_per_sample("esam", {"rho": 0.3, "beta": 0.5, "gamma": 0.5})
    _same(ours, _esam_sds_reference(0.3, 0.5, 0.5))
    assert any(not torch.allclose(ours[k], _esam_reference(0.3, 0.5)[k]) for k in ours)  # the selection mattered
    _same(_ours_per_sample("esam", {"rho": 0.3, "beta": 0.5, "gamma": 1.0}), _esam_reference(0.3, 0.5))


def test_esam_data_selection_needs_per_sample_losses():
    model = tiny_model()
    x, y = tiny_batch()
    with pytest.raises(ValueError, match=r"data selection \(esam's `gamma` = 0.5 < 1\) needs `loss_fn` to return"):
        perturbed_backward(build_perturbation("esam"), model, lambda: nn.functional.cross_entropy(model(x), y))


def test_esam_data_selection_under_the_callback_equals_manual():
    """The callback selects from compute_loss's per-sample losses: its run equals the manual helper's."""
    from ._lightning import Tiny, loader, trainer

    cb_model = Tiny()
    trainer([ll.ESAM(rho=0.3, beta=0.5, gamma=0.5)], max_steps=2).fit(cb_model, loader(8, n=16))

    manual = Tiny()
    opt = torch.optim.SGD(manual.parameters(), lr=0.1, momentum=0.9)
    engine = build_perturbation("esam", rho=0.3, beta=0.5, gamma=0.5)
    for x, y in loader(8, n=16):
        opt.zero_grad()
        loss_fn = lambda x=x, y=y: nn.functional.cross_entropy(manual.net(x), y, reduction="none")  # noqa: E731
        perturbed_backward(engine, manual.net, loss_fn)
        opt.step()
    for a, b in zip(cb_model.parameters(), manual.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_esam_data_selection_refuses_accumulation():
    from ._lightning import Tiny, loader, trainer

    t = trainer([ll.ESAM(gamma=0.5)], max_steps=1, accumulate_grad_batches=2)
    with pytest.raises(ConfigurationError, match=r"ESAM: data selection .* needs accumulate_grad_batches=1, got 2"):
        t.fit(Tiny(), loader(4, n=16))


@pytest.mark.parametrize("name", ["gsam", "wsam", "friendly_sam", "esam"])
def test_two_forward_backward_passes_per_step(name):
    """The README's cost column: each variant costs SAM's two forward-backward passes per optimizer step."""
    model = tiny_model()
    x, y = tiny_batch()
    calls = []

    def forward_backward(phase):
        calls.append(phase)
        loss = nn.functional.cross_entropy(model(x), y, reduction="none")
        loss.mean().backward()
        return loss.mean().detach()

    extra = {"gamma": 1.0} if name == "esam" else {"decouple": False} if name == "wsam" else {}
    build_perturbation(name, **extra).step(forward_backward, list(model.named_parameters()))
    assert calls == ["first", "descent"]
