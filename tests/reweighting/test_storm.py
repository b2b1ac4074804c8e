"""STORM (issue 20): weights and the rescaler's meta step against explicit float64 loops, two ranks equal one
process on the global batch, state round trip, masks and non-finite outputs, pinned validation messages."""

from __future__ import annotations

import math

import pytest
import torch

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from lightning_losses.reweighting.meta import storm_rescaler


def _loop_step(omega, hidden, losses, logits, target, embeddings=None, alpha=10.0, per_class=True):
    """Explicit per-sample / per-pair loops (float64, autograd through Omega only): (weights, meta gradient) of
    J = sum_j w_j l_j - alpha sum_{i != j} w_i w_j G_ij, w = Omega / sum Omega."""
    n, c = logits.shape
    omega = omega.detach().clone().requires_grad_(True)
    d = 4
    w1 = [[omega[h * d + k] for k in range(d)] for h in range(hidden)]
    b1 = [omega[hidden * d + h] for h in range(hidden)]
    w2 = [omega[hidden * (d + 1) + h] for h in range(hidden)]
    b2 = omega[-1]
    feats, rs = [], []
    for i in range(n):
        z = [float(v) for v in logits[i]]
        m = max(z)
        e = [math.exp(v - m) for v in z]
        p = [v / sum(e) for v in e]
        y = int(target[i])
        ent = -sum(q * math.log(q) for q in p) / math.log(c)
        feats.append([float(losses[i]), p[y], max(p), ent])
        rs.append([p[k] - (1.0 if k == y else 0.0) for k in range(c)])
    scale = []
    for f in feats:
        acts = [torch.relu(sum(w1[h][k] * f[k] for k in range(d)) + b1[h]) for h in range(hidden)]
        scale.append(torch.sigmoid(sum(w2[h] * acts[h] for h in range(hidden)) + b2))
    if per_class:  # Omega_i / (its label's Omega sum) * (its label's count) / N
        share = []
        for i in range(n):
            peers = [j for j in range(n) if int(target[j]) == int(target[i])]
            share.append(scale[i] / sum(scale[j] for j in peers) * len(peers) / n)
    else:
        total = sum(scale)
        share = [sc / total for sc in scale]
    objective = sum(share[j] * float(losses[j]) for j in range(n))
    for i in range(n):
        for j in range(n):
            if j == i:
                continue
            kk = sum(rs[i][q] * rs[j][q] for q in range(c))
            if embeddings is not None:
                kk *= sum(float(x) * float(yv) for x, yv in zip(embeddings[i], embeddings[j])) + 1.0
            objective = objective - alpha * share[i] * share[j] * kk
    (grad,) = torch.autograd.grad(objective, omega)
    weights = torch.stack([sh.detach() for sh in share]) * n
    return weights, grad


@pytest.mark.parametrize(("with_embeddings", "per_class"), [(False, True), (True, True), (True, False)])
def test_weights_and_meta_step_match_explicit_float64_loops(with_embeddings, per_class):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(7, 3, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 3, (7,), generator=g)
    losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    emb = torch.randn(7, 5, generator=g, dtype=torch.float64) if with_embeddings else None
    r = ll.build_reweighter("storm", meta_lr=0.5, lookahead_lr=3.0, per_class=per_class, hidden=3, seed=2)
    before = r.omega.clone()
    kw = {"embeddings": emb} if with_embeddings else {}
    got = r(losses=losses, logits=logits, target=target, **kw)
    want_w, want_grad = _loop_step(before, 3, losses, logits, target, emb, alpha=3.0, per_class=per_class)
    torch.testing.assert_close(got, want_w, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r.omega, before - 0.5 * want_grad, rtol=1e-10, atol=1e-12)
    assert not torch.equal(r.omega, before)


def test_the_rescaler_learns_to_downweight_samples_against_the_batch():
    # class 0 around +x, class 1 around -x; two samples carry the wrong label (their residual opposes their class)
    g = torch.Generator().manual_seed(0)
    target = torch.tensor([0] * 10 + [1] * 10)
    logits = torch.stack([torch.where(target == 0, 2.0, -2.0), torch.where(target == 0, -2.0, 2.0)], 1).double()
    logits = logits + 0.1 * torch.randn(20, 2, generator=g, dtype=torch.float64)
    noisy = target.clone()
    noisy[[0, 10]] = 1 - noisy[[0, 10]]
    losses = torch.nn.functional.cross_entropy(logits, noisy, reduction="none")
    r = ll.build_reweighter("storm", meta_lr=5.0, seed=0)
    for _ in range(30):
        w = r(losses=losses, logits=logits, target=noisy)
    assert w[[0, 10]].max() < w[noisy == target].min()


def test_masked_and_non_finite_samples_take_no_part():
    logits = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 1.0], [0.5, 0.5]])
    target = torch.tensor([0, 1, 1, 0])
    losses = torch.tensor([0.3, 0.5, 0.3, 0.7])
    r = ll.build_reweighter("storm")
    w = r(losses=losses, logits=logits, target=target, sample_mask=torch.tensor([True, True, True, False]))
    assert w[1] == 0 and w[3] == 0 and torch.isfinite(w).all() and torch.isfinite(r.omega).all()
    torch.testing.assert_close(w[[0, 2]].sum(), torch.tensor(2.0))


def test_state_dict_round_trip_continues_identically():
    g = torch.Generator().manual_seed(3)
    batches = [(torch.rand(6, generator=g), torch.randn(6, 3, generator=g), torch.randint(0, 3, (6,), generator=g))]
    batches = batches * 3
    a = ll.build_reweighter("storm", seed=1)
    a(losses=batches[0][0], logits=batches[0][1], target=batches[0][2])
    b = ll.build_reweighter("storm", seed=1)
    b.load_state_dict(a.state_dict())
    for losses, logits, target in batches[1:]:
        torch.testing.assert_close(
            a(losses=losses, logits=logits, target=target), b(losses=losses, logits=logits, target=target)
        )
    torch.testing.assert_close(a.omega, b.omega)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"meta_lr": -1.0}, r"`meta_lr` must be .*0.*got -1.0"),
        ({"lookahead_lr": -2.0}, r"`lookahead_lr` must be .*0.*got -2.0"),
        ({"hidden": 0}, r"`hidden` must be .*1.*got 0"),
        ({"seed": -1}, r"`seed` must be .*0.*got -1"),
        ({"per_class": "yes"}, r"`per_class` must be a bool"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        ll.build_reweighter("storm", **kwargs)


def test_binary_logits_are_refused():
    with pytest.raises(ValueError, match=r"`storm` needs `logits` of shape \[N, C\] with C >= 2, got \[3\]"):
        ll.build_reweighter("storm")(
            losses=torch.ones(3), logits=torch.zeros(3), target=torch.zeros(3, dtype=torch.long)
        )


def test_recipe_builds_it_through_the_callback():
    (cb,) = ll.build_callbacks({"sample_reweighting": {"strategy": "storm", "meta_lr": 0.5}})
    assert cb.reweighter.strategy == "storm" and cb.reweighter.meta_lr == 0.5


def test_rescaler_output_is_a_probability():
    omega = ll.build_reweighter("storm", hidden=4).omega
    out = storm_rescaler(omega, torch.randn(5, 4, dtype=torch.float64) * 10, 4)
    assert ((out > 0) & (out < 1)).all()


def _ddp_storm(losses, logits, target, emb):
    import torch.distributed as dist

    rank = dist.get_rank()
    r = ll.build_reweighter("storm", meta_lr=2.0, seed=4)
    out = []
    for _ in range(2):
        out.append(
            r(
                losses=losses.chunk(2)[rank],
                logits=logits.chunk(2)[rank],
                target=target.chunk(2)[rank],
                embeddings=emb.chunk(2)[rank],
            )
        )
    return out, r.omega


@pytest.mark.ddp
def test_two_processes_equal_one_process_on_the_global_batch(ddp):
    g = torch.Generator().manual_seed(9)
    logits = torch.randn(10, 3, generator=g, dtype=torch.float64)
    target = torch.randint(0, 3, (10,), generator=g)
    losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    emb = torch.randn(10, 4, generator=g, dtype=torch.float64)
    per_rank = ddp.run(_ddp_storm, losses, logits, target, emb)
    single = ll.build_reweighter("storm", meta_lr=2.0, seed=4)
    for step in range(2):
        want = single(losses=losses, logits=logits, target=target, embeddings=emb)
        torch.testing.assert_close(torch.cat([per_rank[0][0][step], per_rank[1][0][step]]), want)
    torch.testing.assert_close(per_rank[0][1], single.omega)
    torch.testing.assert_close(per_rank[1][1], single.omega)
