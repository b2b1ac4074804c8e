"""Issue 18 peer losses at logits of ±1e4 and in half precision: finite values and gradients, float32 results (the
README's promise for every loss)."""

from __future__ import annotations

import pytest
import torch

import lightning_losses as ll

BIG = torch.tensor([[1e4, -1e4, 0.0, 3e3], [-1e4, 1e4, 5.0, -3e3]])
LABELS = torch.tensor([0, 2])
MULTI = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 0.0, 1.0]])

CASES = {
    "multi_margin": {"logits": BIG, "target": LABELS},
    "bi_tempered": {"logits": BIG, "target": LABELS},
    "jsd": {"logits": torch.stack([BIG, -BIG, BIG.flip(1)], dim=1), "target": LABELS},
    "sigmoid_poly1": {"logits": BIG, "target": MULTI},
    "jaccard": {"logits": BIG, "target": MULTI},
    "focal_tversky": {"logits": BIG, "target": MULTI},
    "lovasz_hinge": {"logits": BIG, "target": MULTI},
    "lovasz_softmax": {"logits": BIG.reshape(2, 4, 1).expand(2, 4, 3), "target": torch.tensor([[0, 1, 2], [2, 2, 3]])},
    "poisson_nll": {"pred": torch.tensor([10.0, -10.0]), "target": torch.tensor([3.0, 0.0])},
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_finite_at_extreme_logits_and_in_half_precision(name, dtype):
    inputs = dict(CASES[name])
    key = "pred" if "pred" in inputs else "logits"
    x = inputs[key].to(dtype).clone().requires_grad_()
    out = ll.build_loss(name)(**{**inputs, key: x})
    out.sum().backward()
    assert out.shape == (2,) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all(), name


@pytest.mark.parametrize("name", ["jaccard", "focal_tversky"])
def test_softmax_mode_at_extreme_logits(name):
    x = CASES["lovasz_softmax"]["logits"].clone().requires_grad_()
    out = ll.build_loss(name, smooth=0.0)(logits=x, target=CASES["lovasz_softmax"]["target"])
    out.sum().backward()
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


SEG = BIG.reshape(2, 4, 1).expand(2, 4, 3)
SEG_LABELS = torch.tensor([[0, 1, 2], [2, 2, 3]])
# the issue-18 additions that need arguments or another input form
MORE = {
    "ldam": ({"samples_per_class": [100, 20, 5, 1]}, {"logits": BIG, "target": LABELS}),
    "asymmetric_single_label": ({"gamma_pos": 0.5}, {"logits": BIG, "target": LABELS}),
    "bce": ({"label_smoothing": 0.1}, {"logits": BIG, "target": LABELS}),
    "soft_f1": ({"double": True, "reduction": "sample"}, {"logits": SEG, "target": SEG_LABELS}),
    "dice": ({"reduction": "sample", "smooth": 0.0}, {"logits": SEG, "target": SEG_LABELS}),
    "arcface": ({"num_classes": 4, "embedding_size": 4}, {"embeddings": BIG, "target": LABELS}),
    "cosface": ({"num_classes": 4, "embedding_size": 4}, {"embeddings": BIG, "target": LABELS}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", list(MORE))
def test_additions_finite_at_extreme_inputs_and_in_half_precision(name, dtype):
    kwargs, inputs = MORE[name]
    key = "embeddings" if "embeddings" in inputs else "logits"
    x = inputs[key].to(dtype).clone().requires_grad_()
    out = ll.build_loss(name, **kwargs)(**{**inputs, key: x})
    out.sum().backward()
    assert out.shape == (2,) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and torch.isfinite(x.grad).all(), name
