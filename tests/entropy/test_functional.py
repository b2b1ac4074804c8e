"""Entropy functions and the registered regularisers against independent references."""

import math

import pytest
import scipy.stats
import torch

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.entropy import (
    confidence_penalty,
    entropy,
    entropy_minimization,
    per_sample_entropy,
    sequence_entropy,
    tsallis_entropy,
)


def _logits(*shape, scale=3.0, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def test_entropy_matches_scipy():
    z = _logits(7, 5)
    p = torch.softmax(z, dim=-1).numpy()
    expected = torch.tensor([scipy.stats.entropy(row) for row in p], dtype=torch.float64)
    torch.testing.assert_close(entropy(z), expected)
    assert entropy(z).dtype == torch.float64
    torch.testing.assert_close(entropy(torch.zeros(2, 6)), torch.full((2,), math.log(6)))


def test_entropy_gradient_closed_form_and_gradcheck():
    z = _logits(4, 6).requires_grad_(True)
    h = entropy(z)
    h.sum().backward()
    p = torch.softmax(z.detach(), -1)
    expected = -p * (torch.log(p) + h.detach().unsqueeze(-1))  # dH/dz_k = -p_k (log p_k + H)
    torch.testing.assert_close(z.grad, expected)
    assert torch.autograd.gradcheck(entropy, (_logits(3, 4, seed=1).requires_grad_(True),))
    assert torch.autograd.gradcheck(lambda x: tsallis_entropy(x, q=1.7), (_logits(3, 4, seed=2).requires_grad_(True),))


@pytest.mark.parametrize("q", [0.5, 2.0, 3.0])
def test_tsallis_matches_definition(q):
    z = _logits(5, 4, seed=3)
    p = torch.softmax(z, -1)
    torch.testing.assert_close(tsallis_entropy(z, q), (1 - (p**q).sum(-1)) / (q - 1))


def test_tsallis_tends_to_shannon():
    z = _logits(5, 4, seed=4)
    torch.testing.assert_close(tsallis_entropy(z, 1.0), entropy(z))
    torch.testing.assert_close(tsallis_entropy(z, 1.0 + 1e-7), entropy(z), atol=1e-5, rtol=1e-5)


def test_sequence_entropy_matches_loop():
    z = _logits(3, 4, 5, seed=5)
    mask = torch.tensor([[1, 1, 0, 1], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    got = sequence_entropy(z, mask)
    for i in range(3):
        hs = [scipy.stats.entropy(torch.softmax(z[i, t], -1).numpy()) for t in range(4) if mask[i, t]]
        expected = sum(hs) / len(hs) if hs else 0.0
        assert got[i].item() == pytest.approx(expected, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(sequence_entropy(z), entropy(z).mean(-1))
    torch.testing.assert_close(per_sample_entropy(z, mask), got)


def test_sequence_tsallis_matches_loop():
    z = _logits(2, 3, 4, seed=9)
    mask = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)
    got = sequence_entropy(z, mask, q=2.0)
    for i in range(2):
        values = [1 - (torch.softmax(z[i, t], -1) ** 2).sum().item() for t in range(3) if mask[i, t]]
        assert got[i].item() == pytest.approx(sum(values) / len(values), rel=1e-10)


def test_sequence_entropy_gradient_ignores_masked_tokens():
    mask = torch.tensor([[True, False, True], [False, False, True]])
    z = _logits(2, 3, 4, seed=10).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: sequence_entropy(x, mask), (z,))
    sequence_entropy(z, mask).sum().backward()
    assert (z.grad[~mask] == 0).all() and (z.grad[mask] != 0).any()


def test_bf16_autocast_logits_through_the_objective():
    """Logits produced under CPU bf16 autocast, saturated: the confidence penalty stays finite and matches fp32."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 5)
    x = torch.randn(6, 8) * torch.tensor([1e3] * 3 + [0.3] * 3).unsqueeze(1)  # 3 saturated rows, 3 moderate
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(x)
    assert z.dtype == torch.bfloat16
    loss = ll.build_loss("confidence_penalty", beta=1.0)(logits=z)
    loss.sum().backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    assert torch.isfinite(layer.weight.grad).all()
    p = torch.softmax(z.detach().double(), -1)
    torch.testing.assert_close(loss.double(), torch.special.xlogy(p, p).sum(-1), atol=1e-6, rtol=1e-5)
    assert (loss[:3] == 0).all() and (loss[3:] < -0.1).all()  # one-hot rows and uncertain rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_extreme_logits_stay_finite(dtype):
    big = 6e4 if dtype == torch.float16 else 1e4
    z = torch.tensor([[big, 0.0, -big], [0.0, 0.0, 0.0], [-big, -big, big]], dtype=dtype).requires_grad_(True)
    h = entropy(z)
    h.sum().backward()
    assert h.dtype == torch.float32
    assert torch.isfinite(h).all() and torch.isfinite(z.grad).all()
    torch.testing.assert_close(h, torch.tensor([0.0, math.log(3), 0.0]), atol=1e-6, rtol=1e-6)
    assert torch.isfinite(tsallis_entropy(z.detach(), 2.0)).all()


def test_masked_classes_minus_inf():
    z = torch.tensor([[0.0, 0.0, float("-inf")], [1.0, float("-inf"), float("-inf")]], requires_grad=True)
    h = entropy(z)
    h.sum().backward()
    torch.testing.assert_close(h.detach(), torch.tensor([math.log(2), 0.0]))
    assert torch.isfinite(z.grad).all()


def test_regularisers_signs_and_hinge():
    z = _logits(6, 4, seed=6)
    h = entropy(z)
    torch.testing.assert_close(confidence_penalty(z, 0.3), -0.3 * h)
    torch.testing.assert_close(entropy_minimization(z, 0.3), 0.3 * h)
    torch.testing.assert_close(confidence_penalty(z, 0.3, threshold=0.8), 0.3 * torch.clamp(0.8 - h, min=0.0))
    assert (confidence_penalty(z, 0.3, threshold=0.8)[h >= 0.8] == 0).all()


def test_registered_losses_in_objective():
    z, y = _logits(8, 5, seed=7).float(), torch.arange(8) % 5
    obj = ll.Objective({"cross_entropy": {}, "confidence_penalty": {"beta": 0.2}})
    out = obj({"logits": z, "target": y})
    ce = torch.nn.functional.cross_entropy(z, y)
    torch.testing.assert_close(out.value, ce - 0.2 * entropy(z).mean())
    obj = ll.Objective({"cross_entropy": {}, "em": {"loss": "entropy_penalty", "beta": 0.5}})
    torch.testing.assert_close(obj({"logits": z, "target": y}).value, ce + 0.5 * entropy(z).mean())


def test_registered_loss_token_mask_from_target():
    z = _logits(2, 3, 4, seed=8).float()
    target = torch.tensor([[1, -100, 2], [-100, -100, 0]])
    got = ll.build_loss("entropy_minimization", beta=1.0)(logits=z, target=target)
    torch.testing.assert_close(got, sequence_entropy(z, target != -100))
    got = ll.build_loss("confidence_penalty", beta=2.0, ignore_index=2)(logits=z, target=target)
    torch.testing.assert_close(got, -2.0 * sequence_entropy(z, target != 2))


def test_errors():
    with pytest.raises(ConfigurationError, match="`beta` must be >= 0.0, got -1.0"):
        ll.build_loss("confidence_penalty", beta=-1.0)
    with pytest.raises(ConfigurationError, match="`threshold` must be >= 0.0"):
        ll.build_loss("confidence_penalty", threshold=-0.5)
    with pytest.raises(ConfigurationError, match="unexpected argument `bta`; did you mean `beta`"):
        ll.build_loss("entropy_minimization", bta=1.0)
    with pytest.raises(ConfigurationError, match="`q` must be > 0.0, got 0.0"):
        tsallis_entropy(torch.zeros(2, 3), q=0.0)
    with pytest.raises(ConfigurationError, match="`q` must be > 0.0, got -1.0"):
        sequence_entropy(torch.zeros(2, 3, 4), q=-1.0)
    with pytest.raises(TypeError, match="`logits` must be a torch.Tensor, got list"):
        entropy([0.0, 1.0])
    with pytest.raises(ValueError, match=r"`logits` must be a floating tensor \[..., C\]"):
        entropy(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"`logits` must have shape \[N, C\] or \[N, T, V\], got \[3\]"):
        per_sample_entropy(torch.zeros(3))
    with pytest.raises(ValueError, match=r"`logits` must have shape \[N, T, V\], got \[2, 3\]"):
        sequence_entropy(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"`mask` must have shape \[N, T\] = \[2, 3\], got \[2\]"):
        sequence_entropy(torch.zeros(2, 3, 4), torch.ones(2, dtype=torch.bool))
