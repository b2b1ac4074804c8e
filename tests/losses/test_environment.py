"""irm_v1, vrex and coral: float64 loops of the formulas (values and gradients), the objective, the argument checks,
and 2 processes equal to 1 process on the global batch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lightning_losses as ll


def _data(n: int = 13, c: int = 3, d: int = 4, groups: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=g)
    group = torch.randint(0, groups, (n,), generator=g)
    feats = torch.randn(n, d, generator=g, dtype=torch.float64)
    return logits, target, group, feats


def _irm_loop(logits, target, group, groups, binary=False):
    penalties = []
    for e in range(groups):
        rows = [i for i in range(len(group)) if int(group[i]) == e]
        if not rows:
            continue
        scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
        z, y = logits[rows] * scale, target[rows]
        risk = F.binary_cross_entropy_with_logits(z, y.double()) if binary else F.cross_entropy(z, y)
        (grad,) = torch.autograd.grad(risk, [scale], create_graph=True)
        penalties.append(grad**2)
    return sum(penalties) / len(penalties)


def _vrex_loop(logits, target, group, groups):
    risks = []
    for e in range(groups):
        rows = [i for i in range(len(group)) if int(group[i]) == e]
        if rows:
            risks.append(sum(F.cross_entropy(logits[i : i + 1], target[i : i + 1]) for i in rows) / len(rows))
    mean = sum(risks) / len(risks)
    return sum((r - mean) ** 2 for r in risks) / len(risks)


def _coral_loop(feats, group, groups, cut):
    """DomainBed's CausIRL-CORAL on the environments' samples in batch order, cut at floor(cut_e * n_e)."""
    first, second = [], []
    for e in range(groups):
        rows = [i for i in range(len(group)) if int(group[i]) == e]
        k = int(float(cut[e]) * len(rows))
        first += rows[:k]
        second += rows[k:]
    if len(first) < 2 or len(second) < 2:
        return feats.sum() * 0
    x, y = feats[first], feats[second]
    mx, my = x.mean(0, keepdim=True), y.mean(0, keepdim=True)
    cx, cy = (x - mx).T @ (x - mx) / (len(x) - 1), (y - my).T @ (y - my) / (len(y) - 1)
    return (mx - my).pow(2).mean() + (cx - cy).pow(2).mean()


def _check(loss_value, reference, *inputs):
    torch.testing.assert_close(loss_value, reference)
    got = torch.autograd.grad(loss_value, inputs, retain_graph=True)
    expected = torch.autograd.grad(reference, inputs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("groups", [3, 4])  # 4: an environment absent from the batch
def test_irm_v1_equals_the_dummy_multiplier_gradient_loop(groups):
    logits, target, group, _ = _data()
    logits.requires_grad_(True)
    loss = ll.build_loss("irm_v1", num_groups=groups)
    _check(loss(logits=logits, target=target, group=group), _irm_loop(logits, target, group, groups), logits)
    inferred = ll.build_loss("irm", validate_args=False)(logits=logits, target=target, group=group)
    torch.testing.assert_close(inferred, _irm_loop(logits, target, group, 3))


def test_irm_v1_binary_logits():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True)
    target = (torch.rand(9, generator=g) > 0.5).double()
    group = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1, 1])
    out = ll.build_loss("irm_v1", num_groups=2)(logits=logits, target=target, group=group)
    _check(out, _irm_loop(logits, target, group, 2, binary=True), logits)


def test_vrex_equals_the_variance_of_environment_risks_loop():
    logits, target, group, _ = _data()
    logits.requires_grad_(True)
    target = target.clone()
    target[2] = -100  # ignored: counts nowhere
    keep = [i for i in range(len(target)) if i != 2]
    out = ll.build_loss("vrex", num_groups=3)(logits=logits, target=target, group=group)
    _check(out, _vrex_loop(logits[keep], target[keep], group[keep], 3), logits)


@pytest.mark.parametrize("split", ["half", "random"])
def test_coral_equals_domainbed_causirl_loop(split):
    _, _, group, feats = _data(n=17)
    feats.requires_grad_(True)
    loss = ll.build_loss("coral", num_groups=3, split=split)
    torch.manual_seed(5)
    out = loss(embeddings=feats, group=group)
    torch.manual_seed(5)
    cut = torch.full((3,), 0.5, dtype=torch.float64) if split == "half" else torch.rand(3, dtype=torch.float64)
    _check(out, _coral_loop(feats, group, 3, cut), feats)
    tiny = loss(embeddings=feats[:2], group=group[:2])  # a pool with < 2 samples: 0
    assert float(tiny.detach()) == 0.0


def test_terms_in_an_objective_are_batch_level_and_scheduled():
    logits, target, group, feats = _data()
    objective = ll.Objective(
        {
            "cross_entropy": {},
            "vrex": {"num_groups": 3, "coefficient": {"name": "step", "value": 1.0, "milestones": [2], "gamma": 10.0}},
            "irm_v1": {"num_groups": 3, "coefficient": 0.5},
            "coral": {"num_groups": 3, "split": "half", "inputs": {"embeddings": "features"}},
        }
    )
    tensors = {"logits": logits, "target": target, "group": group, "features": feats}
    out = objective(tensors, step=3)
    expected = (
        F.cross_entropy(logits, target)
        + 10.0 * _vrex_loop(logits, target, group, 3)
        + 0.5 * _irm_loop(logits, target, group, 3)
        + _coral_loop(feats, group, 3, torch.full((3,), 0.5))
    )
    torch.testing.assert_close(out.value, expected.detach())
    assert {"irm_v1", "vrex", "coral"} <= set(ll.list_losses())


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("irm_v1", {"num_groups": 0}, r"`num_groups` must be an integer >= 1, got 0"),
        ("vrex", {"ignore_index": 1.5}, r"`ignore_index` must be an integer, got 1.5"),
        ("coral", {"split": "halves"}, r"`split` must be one of `random`, `half`, got 'halves'"),
    ],
)
def test_arguments_are_validated(name, kwargs, match):
    with pytest.raises(ll.ConfigurationError, match=match):
        ll.build_loss(name, **kwargs)


def test_inputs_are_validated():
    logits, target, group, feats = _data()
    irm = ll.build_loss("irm_v1", num_groups=2)
    with pytest.raises(ValueError, match=r"`group` ids must be in \[0, 2\) \(`num_groups` = 2\), got ids \[2\]"):
        irm(logits=logits, target=target, group=group)
    with pytest.raises(ValueError, match=r"`group` must be integer environment ids of shape \[13\], got \[12\]"):
        irm(logits=logits, target=target, group=group[:12])
    with pytest.raises(ValueError, match=r"`logits` must be \[N, C\] \(or \[N\] binary\) with `target` \[N\]"):
        irm(logits=logits[:, :, None], target=target, group=group)
    with pytest.raises(ValueError, match=r"`embeddings` must be \[N, D\], got \[13\]"):
        ll.build_loss("coral")(embeddings=feats[:, 0], group=group)


def _ddp_terms(shards, seed_by_rank):
    import torch.distributed as dist

    rank = dist.get_rank()
    logits, target, group, feats = (t.clone() for t in shards[rank])
    logits.requires_grad_(True)
    feats.requires_grad_(True)
    torch.manual_seed(seed_by_rank[rank])
    out = {}
    for name, kwargs in (("irm_v1", {"num_groups": 3}), ("vrex", {}), ("coral", {"num_groups": 3})):
        loss = ll.build_loss(name, **kwargs)
        args = {"embeddings": feats} if name == "coral" else {"logits": logits, "target": target}
        value = loss(group=group, **args)
        (grad,) = torch.autograd.grad(value, [feats if name == "coral" else logits])
        out[name] = (value.detach(), grad / dist.get_world_size())  # DDP's average over ranks
    return out


@pytest.mark.ddp
def test_two_processes_equal_one_process_on_the_global_batch(ddp):
    logits, target, group, feats = _data(n=15)
    cut = 6  # uneven shards
    shards = [(t[:cut], t[cut:]) for t in (logits, target, group, feats)]
    shards = [tuple(s[r] for s in shards) for r in range(2)]
    per_rank = ddp.run(_ddp_terms, shards, [7, 99])  # rank 0's random cuts are used
    full_logits, full_feats = logits.clone().requires_grad_(True), feats.clone().requires_grad_(True)
    torch.manual_seed(7)
    for name, kwargs in (("irm_v1", {"num_groups": 3}), ("vrex", {}), ("coral", {"num_groups": 3})):
        loss = ll.build_loss(name, **kwargs)
        args = {"embeddings": full_feats} if name == "coral" else {"logits": full_logits, "target": target}
        value = loss(group=group, **args)
        (grad,) = torch.autograd.grad(value, [full_feats if name == "coral" else full_logits])
        for rank, out in enumerate(per_rank):
            torch.testing.assert_close(out[name][0], value.detach(), msg=name)
            rows = slice(0, cut) if rank == 0 else slice(cut, None)
            torch.testing.assert_close(out[name][1], grad[rows], msg=name)


def test_demo_model_passes_penultimate_features_to_coral():
    from lightning_losses.demo import DigitsClassifier

    torch.manual_seed(0)
    plain = DigitsClassifier(num_features=74, hidden_dim=8, dropout=0.0)
    assert not plain.wants_embeddings() and "embeddings" not in plain.objective_tensors(torch.zeros(2, 10), {})
    model = DigitsClassifier(
        num_features=74, hidden_dim=8, dropout=0.0, objective={"cross_entropy": {}, "coral": {"num_groups": 2}}
    )
    batch = {"x": torch.randn(6, 74), "target": torch.arange(6), "group": torch.tensor([0, 1, 0, 1, 0, 1])}
    tensors = model.objective_tensors(model(batch["x"]), batch)
    torch.testing.assert_close(tensors["embeddings"], model.net[:-1](batch["x"]))
    model.loss_from_batch(model(batch["x"]), batch).backward()
    assert model.net[0].weight.grad is not None


@pytest.mark.parametrize("name", ["irm_v1", "vrex"])
def test_half_logits_are_computed_in_float32(name):
    logits, target, group, _ = _data()
    loss = ll.build_loss(name, num_groups=3)
    half = loss(logits=logits.to(torch.bfloat16), target=target, group=group)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, loss(logits=logits.to(torch.bfloat16).float(), target=target, group=group))


def test_demo_step_still_calls_a_two_argument_loss_from_batch_override():
    """``bench/overhead.py`` overrides ``loss_from_batch(self, logits, batch)``: without an embeddings term, the demo's
    step calls it with two arguments."""
    from lightning_losses.demo import DigitsClassifier

    class Plain(DigitsClassifier):
        def loss_from_batch(self, logits, batch):
            return F.cross_entropy(logits, batch["target"])

    model = Plain(hidden_dim=8)
    model.log = lambda *args, **kwargs: None
    batch = {"x": torch.randn(4, 64), "target": torch.tensor([0, 1, 2, 3])}
    assert model._step(batch, "train").ndim == 0
