"""Issue 18 "Also": class weights, ``alpha`` and ``pos_weight`` keep their digits in the module's dtype.

They were float32 buffers from construction, so ``loss.double()`` could not recover them (about 5e-8 relative error
against float64 references). Now they are float64 buffers, cast to the input's dtype where used: a ``.double()``
loss matches the float64 reference to 1e-12, and float32 inputs still give float32 losses.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lightning_losses as ll
from lightning_losses import functional as LF

W = [0.3, 1.7, 0.1, 2.9]


def _multiclass():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=g, dtype=torch.float64), torch.randint(0, 4, (8,), generator=g)


def _binary():
    g = torch.Generator().manual_seed(1)
    return torch.randn(8, 4, generator=g, dtype=torch.float64), (torch.rand(8, 4, generator=g) > 0.5).double()


W64 = torch.tensor(W, dtype=torch.float64)
CASES = [
    ("cross_entropy", {"weight": W}, _multiclass, lambda z, y: F.cross_entropy(z, y, weight=W64, reduction="none")),
    ("focal", {"alpha": W}, _multiclass, lambda z, y: LF.focal(z, y, alpha=W64)),
    ("focal", {"alpha": 0.3}, _multiclass, lambda z, y: LF.focal(z, y) * 0.3),
    ("multi_margin", {"weight": W}, _multiclass, lambda z, y: F.multi_margin_loss(z, y, weight=W64, reduction="none")),
    (
        "bce",
        {"pos_weight": W},
        _binary,
        lambda z, y: F.binary_cross_entropy_with_logits(z, y, pos_weight=W64, reduction="none").mean(-1),
    ),
    (
        "bce",
        {"pos_weight": 0.3},
        _binary,
        lambda z, y: LF.bce(z, y, pos_weight=torch.tensor([0.3], dtype=torch.float64)),
    ),
    ("sigmoid_poly1", {"pos_weight": W}, _binary, lambda z, y: LF.sigmoid_poly1(z, y, pos_weight=W64)),
]


@pytest.mark.parametrize(("name", "kwargs", "data", "reference"), CASES)
def test_double_module_matches_float64_reference(name, kwargs, data, reference):
    logits, target = data()
    loss = ll.build_loss(name, **kwargs).double()
    torch.testing.assert_close(loss(logits=logits, target=target), reference(logits, target), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("name", "kwargs", "data", "reference"), CASES)
def test_float32_inputs_give_float32_losses(name, kwargs, data, reference):
    logits, target = data()
    loss = ll.build_loss(name, **kwargs)
    out = loss(logits=logits.float(), target=target if not target.is_floating_point() else target.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, reference(logits, target).float(), rtol=1e-5, atol=1e-6)
