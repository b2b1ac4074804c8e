"""SOVR (issue 20): float64 explicit loop of the switching rule, the global-batch selection under DDP, validation."""

from __future__ import annotations

import math

import pytest
import torch

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError


def _reference(logits: torch.Tensor, target: torch.Tensor, fraction: float, ignore_index: int = -100) -> torch.Tensor:
    """Explicit per-sample loop, float64: rank the margins, switch the floor(M * N_valid) smallest to OVR."""
    rows = []
    for i in range(logits.shape[0]):
        if int(target[i]) == ignore_index:
            continue
        z, y = [float(v) for v in logits[i]], int(target[i])
        rows.append((z[y] - max(v for k, v in enumerate(z) if k != y), i))
    k = math.floor(len(rows) * fraction)
    switched = {i for _, i in sorted(rows)[:k]}  # ties by position (the tuples' second entry)
    out = torch.zeros(logits.shape[0], dtype=torch.float64)
    for i in range(logits.shape[0]):
        if int(target[i]) == ignore_index:
            continue
        z, y = [float(v) for v in logits[i]], int(target[i])
        if i in switched:
            value = math.log1p(math.exp(-z[y])) + sum(math.log1p(math.exp(v)) for k2, v in enumerate(z) if k2 != y)
        else:
            value = -(z[y] - math.log(sum(math.exp(v) for v in z)))
        out[i] = value
    return out


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.4, 1.0])
def test_matches_an_explicit_float64_loop(fraction):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(12, 5, generator=g, dtype=torch.float64) * 2
    target = torch.randint(0, 5, (12,), generator=g)
    target[4] = -100
    got = ll.build_loss("sovr", fraction=fraction)(logits=logits, target=target)
    torch.testing.assert_close(got, _reference(logits, target, fraction), rtol=0, atol=1e-12)


def test_small_margin_samples_get_ovr_the_others_cross_entropy():
    logits = torch.tensor([[3.0, 0.0, 0.0], [0.2, 0.1, 0.0], [1.0, 0.0, 0.5], [0.0, 2.0, 0.0]])
    target = torch.tensor([0, 0, 0, 0])  # margins 3.0, 0.1, 0.5, -2.0: the two smallest are samples 3 and 1
    got = ll.build_loss("sovr", fraction=0.5)(logits=logits, target=target)
    ce, ovr = ll.build_loss("cross_entropy"), ll.build_loss("ovr")
    want = torch.where(
        torch.tensor([False, True, False, True]), ovr(logits=logits, target=target), ce(logits=logits, target=target)
    )
    torch.testing.assert_close(got, want)


def test_the_switch_is_not_differentiated_and_gradients_are_finite():
    logits = torch.randn(8, 4, requires_grad=True)
    ll.build_loss("sovr")(logits=logits, target=torch.arange(8) % 4).sum().backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fraction": 1.5}, r"`fraction` must be .*1.*got 1.5"),
        ({"fraction": -0.1}, r"`fraction` must be .*0.*got -0.1"),
        ({"gather": "yes"}, r"`gather` must be a bool"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        ll.build_loss("sovr", **kwargs)


def test_soft_targets_are_refused():
    with pytest.raises(ValueError, match=r"`sovr` takes integer labels"):
        ll.functional.sovr(torch.zeros(2, 3), torch.full((2, 3), 1 / 3))


def _ddp_sovr(logits, target):
    import torch.distributed as dist

    rank = dist.get_rank()
    loss = ll.build_loss("sovr", fraction=0.4)
    local_logits = logits.chunk(2)[rank].clone().requires_grad_(True)
    out = loss(logits=local_logits, target=target.chunk(2)[rank])
    out.sum().backward()
    return out.detach(), local_logits.grad


@pytest.mark.ddp
def test_two_processes_equal_one_process_on_the_global_batch(ddp):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 4, generator=g, dtype=torch.float64)
    target = torch.randint(0, 4, (10,), generator=g)
    target[7] = -100
    per_rank = ddp.run(_ddp_sovr, logits, target)
    whole = logits.clone().requires_grad_(True)
    want = ll.build_loss("sovr", fraction=0.4)(logits=whole, target=target)
    want.sum().backward()
    torch.testing.assert_close(torch.cat([r[0] for r in per_rank]), want.detach())
    torch.testing.assert_close(torch.cat([r[1] for r in per_rank]), whole.grad)
    # a per-rank ranking (gather=False) would differ: the global selection is what is tested
    local = torch.cat(
        [
            ll.build_loss("sovr", fraction=0.4, gather=False)(logits=c, target=t)
            for c, t in zip(logits.chunk(2), target.chunk(2))
        ]
    )
    assert not torch.allclose(local, want.detach())
