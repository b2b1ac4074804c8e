"""per_class_normalized (PCNGD): the weights against per-class parameter gradients of a float64 linear head computed
one class at a time with autograd, the resulting step direction, argument and input checks, and 2 processes equal to 1
process on the global batch with features."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError


def _head(n=13, c=3, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64)
    weight = torch.randn(c, d, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(c, generator=g, dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 0])[:n]  # imbalanced
    return h, weight, bias, target


def _class_norms(h, weight, bias, target, params):
    """||d S_c / d params|| per class, one autograd call per class (S_c: the sum of class c's cross entropies)."""
    norms = {}
    for c in target.unique().tolist():
        rows = [i for i in range(len(target)) if int(target[i]) == c]
        logits = h[rows] @ weight.T + bias
        s = F.cross_entropy(logits, target[rows], reduction="sum")
        grads = torch.autograd.grad(s, params)
        norms[c] = float(torch.sqrt(sum((g**2).sum() for g in grads)))
    return norms


def _expected_weights(target, norms):
    n = len(target)
    total = sum(1.0 / norms[int(y)] for y in target)
    return torch.tensor([n / norms[int(y)] / total for y in target], dtype=torch.float64)


@pytest.mark.parametrize("with_features", [True, False])
def test_weights_match_per_class_gradient_norms_of_the_output_layer(with_features):
    h, weight, bias, target = _head()
    logits = (h @ weight.T + bias).detach()
    params = [weight, bias] if with_features else [bias]
    norms = _class_norms(h, weight, bias, target, params)
    kwargs = {"features": "embeddings"} if with_features else {}
    r = ll.build_reweighter("per_class_normalized", **kwargs)
    got = r(losses=torch.zeros(len(target), dtype=torch.float64), logits=logits, target=target, embeddings=h)
    torch.testing.assert_close(got, _expected_weights(target, norms))
    assert abs(float(got.mean()) - 1.0) < 1e-12


def test_weighted_mean_steps_along_the_sum_of_unit_class_gradients():
    h, weight, bias, target = _head()
    logits = h @ weight.T + bias
    r = ll.build_reweighter("pcngd", features="embeddings")
    losses = F.cross_entropy(logits, target, reduction="none")
    w = r(losses=losses.detach(), logits=logits.detach(), target=target, embeddings=h)
    objective = (w * losses).sum() / w.sum()
    got = torch.cat([g.flatten() for g in torch.autograd.grad(objective, [weight, bias])])
    unit = 0
    for c in target.unique().tolist():  # sum over classes of the normalised class gradients
        rows = target == c
        s = F.cross_entropy(h[rows] @ weight.T + bias, target[rows], reduction="sum")
        g = torch.cat([x.flatten() for x in torch.autograd.grad(s, [weight, bias])])
        unit = unit + g / g.norm()
    cosine = float(got @ unit / (got.norm() * unit.norm()))
    assert cosine == pytest.approx(1.0, abs=1e-12)


def test_masked_and_out_of_class_samples_count_nowhere():
    h, weight, bias, target = _head()
    logits = (h @ weight.T + bias).detach()
    keep = torch.ones(len(target), dtype=torch.bool)
    keep[[1, 8]] = False
    r = ll.build_reweighter("per_class_normalized")
    got = r(losses=torch.zeros(len(target), dtype=torch.float64), logits=logits, target=target, sample_mask=keep)
    ref = ll.build_reweighter("per_class_normalized")(
        losses=torch.zeros(int(keep.sum()), dtype=torch.float64), logits=logits[keep], target=target[keep]
    )
    torch.testing.assert_close(got[keep], ref)
    assert got[~keep].tolist() == [0.0, 0.0]


def test_state_dict_round_trip():
    r = ll.build_reweighter("per_class_normalized", features="embeddings", eps=1e-9)
    h, weight, bias, target = _head()
    r(losses=torch.zeros(13, dtype=torch.float64), logits=(h @ weight.T + bias).detach(), target=target, embeddings=h)
    fresh = ll.build_reweighter("per_class_normalized", features="embeddings", eps=1e-9)
    fresh.load_state_dict(r.state_dict())
    assert int(fresh.step) == 1
    assert repr(fresh) == "PerClassNormalized(features='embeddings', eps=1e-09)"


def test_argument_and_input_checks():
    with pytest.raises(ConfigurationError, match=r"`features` must be the name of a compute_loss input .* got 3"):
        ll.build_reweighter("per_class_normalized", features=3)
    with pytest.raises(ConfigurationError, match="eps"):
        ll.build_reweighter("per_class_normalized", eps=0.0)
    r = ll.build_reweighter("per_class_normalized", features="embeddings")
    z, y = torch.zeros(3, 2), torch.tensor([0, 1, 0])
    with pytest.raises(ValueError, match=r"reweighter `per_class_normalized` needs `embeddings` in compute_loss"):
        r(losses=torch.zeros(3), logits=z, target=y)
    with pytest.raises(ValueError, match=r"`embeddings` must have shape \[3, D\], got \[3\]"):
        r(losses=torch.zeros(3), logits=z, target=y, embeddings=torch.zeros(3))
    with pytest.raises(ValueError, match=r"`logits` must have shape \[3, C\], got \[3\]"):
        ll.build_reweighter("per_class_normalized")(losses=torch.zeros(3), logits=torch.zeros(3), target=y)
    with pytest.raises(ValueError, match=r"`target` id 2 is out of range for `logits` = 2"):
        ll.build_reweighter("per_class_normalized")(losses=torch.zeros(3), logits=z, target=torch.tensor([0, 2, 1]))


def test_recipe_builds_it_by_name():
    cb = ll.SampleReweighting("per_class_normalised", features="embeddings")
    assert cb.reweighter.strategy == "per_class_normalized"


def _ddp_weights(shards):
    import torch.distributed as dist

    logits, target, h = shards[dist.get_rank()]
    r = ll.build_reweighter("per_class_normalized", features="embeddings")
    return r(losses=torch.zeros(len(target), dtype=torch.float64), logits=logits, target=target, embeddings=h)


@pytest.mark.ddp
def test_two_processes_equal_one_process_on_the_global_batch(ddp):
    h, weight, bias, target = _head()
    logits = (h @ weight.T + bias).detach()
    cut = 5  # uneven shards; rank 1 holds no sample of class 0 but one
    shards = [(logits[:cut], target[:cut], h[:cut]), (logits[cut:], target[cut:], h[cut:])]
    per_rank = ddp.run(_ddp_weights, shards)
    full = ll.build_reweighter("per_class_normalized", features="embeddings")(
        losses=torch.zeros(13, dtype=torch.float64), logits=logits, target=target, embeddings=h
    )
    torch.testing.assert_close(torch.cat(per_rank), full)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    h, weight, bias, target = _head()
    logits = (h @ weight.T + bias).detach()
    expected = ll.build_reweighter("per_class_normalized", features="embeddings")(
        losses=torch.zeros(13, dtype=torch.float64), logits=logits, target=target, embeddings=h
    )
    got = ll.build_reweighter("per_class_normalized", features="embeddings")(
        losses=torch.zeros(13, dtype=torch.float64, device="cuda"),
        logits=logits.cuda(),
        target=target.cuda(),
        embeddings=h.cuda(),
    )
    torch.testing.assert_close(got.cpu(), expected)
