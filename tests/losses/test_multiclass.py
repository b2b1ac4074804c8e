"""Shared checks for every multi-class loss of the catalog (robust, surrogates, links, logit-scale terms).

Per case: ``[N]`` output, functional == module, parity with the independent loop in :mod:`tests.losses._refs`,
float64 gradcheck, finite values and gradients at logits of +-1e4 (fp32) and over the fp16 / bf16 ranges (also under
autocast), ``ignore_index``, and call-time input validation. Family files pin each constructor's messages.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch

import lightning_losses as ll
from lightning_losses import functional as LF
from tests.losses import _refs as R


@dataclass
class Case:
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    ref: Callable[..., float] | None = None
    labels: bool = True  # takes `target`
    extreme: bool = True  # finite at +-1e4 (False where the maths overflows, e.g. comp_sum with tau < 1)
    functional: Callable[..., torch.Tensor] | None = None

    @property
    def id(self) -> str:
        return self.name + ("" if not self.kwargs else "-" + "-".join(f"{k}={v}" for k, v in self.kwargs.items()))

    def call_functional(self, logits, target):
        if self.functional is not None:
            return self.functional(logits, target, **self.kwargs)
        fn = getattr(LF, self.name)
        return fn(logits, target, **self.kwargs) if self.labels else fn(logits, **self.kwargs)

    def call_module(self, loss, logits, target):
        return loss(logits=logits, target=target) if self.labels else loss(logits=logits)

    def call_ref(self, row, y):
        return self.ref(row, y, **self.kwargs) if self.labels else self.ref(row, **self.kwargs)


def _clip_functional(logits, target, tau=1.0, p=2.0, base="cross_entropy"):
    return LF.cross_entropy(LF.clip_logits(logits, tau=tau, p=p), target)


CASES = [
    Case("cross_entropy", {}, R.ref_cross_entropy),
    Case("cross_entropy", {"label_smoothing": 0.1}, R.ref_cross_entropy),
    Case("focal", {}, R.ref_focal),
    Case("focal", {"gamma": 0.5}, R.ref_focal),
    Case("focal", {"gamma": 0.25, "alpha": 0.25}, R.ref_focal),
    Case("gce", {}, R.ref_gce),
    Case("gce", {"q": 0.3}, R.ref_gce),
    Case("mae", {}, R.ref_mae),
    Case("sce", {}, R.ref_sce),
    Case("sce", {"alpha": 6.0, "beta": 0.1, "A": math.log(1e-4)}, R.ref_sce),
    Case("apl", {}, R.ref_apl),
    Case("apl", {"active": "nfl", "passive": "mae", "alpha": 2.0, "beta": 0.5}, R.ref_apl),
    Case("apl", {"active": "nfl", "passive": "rce", "gamma": 0.5}, R.ref_apl),
    Case("apl", {"active": "nce", "passive": "mae"}, R.ref_apl),
    Case("poly1", {}, R.ref_poly1),
    Case("poly1", {"epsilon": -1.0, "label_smoothing": 0.1}, R.ref_poly1),
    Case("poly_focal", {}, R.ref_poly_focal),
    Case("poly_focal", {"gamma": 0.5, "epsilon": 2.0}, R.ref_poly_focal),
    Case("comp_sum", {"tau": 1.0}, R.ref_comp_sum),
    Case("comp_sum", {"tau": 1.7}, R.ref_comp_sum),
    Case("comp_sum", {"tau": 2.0}, R.ref_comp_sum),
    Case("comp_sum", {"tau": 0.5}, R.ref_comp_sum, extreme=False),
    Case("comp_sum", {"tau": 0.0}, R.ref_comp_sum, extreme=False),
    Case("taylor_ce", {}, R.ref_taylor_ce),
    Case("taylor_ce", {"order": 5}, R.ref_taylor_ce),
    Case("squentropy", {}, R.ref_squentropy),
    Case("ovr", {}, R.ref_ovr),
    Case("ldr_kl", {}, R.ref_ldr_kl),
    Case("ldr_kl", {"lam": 0.5, "margin": 1.0, "normalize": False}, R.ref_ldr_kl),
    Case("stablemax_cross_entropy", {}, R.ref_stablemax_cross_entropy),
    Case("spherical_z_loss", {"a": 1.5, "b": 2.0}, R.ref_spherical_z_loss),
    Case("z_loss", {}, R.ref_z_loss, labels=False),
    Case("z_loss", {"coef": 0.5}, R.ref_z_loss, labels=False),
    Case("spectral_decoupling", {"lam": 0.1}, R.ref_spectral_decoupling, labels=False),
    Case("spectral_decoupling", {"lam": 0.3, "gamma": 1.0}, R.ref_spectral_decoupling, labels=False),
    Case("logit_clip", {}, R.ref_logit_clip, functional=_clip_functional),
    Case("logit_clip", {"tau": 0.25, "p": 1.0}, R.ref_logit_clip, functional=_clip_functional),
    Case("logit_clip", {"tau": 0.5, "p": "inf"}, None, functional=_clip_functional),
]
IDS = [c.id for c in CASES]


def _inputs(n=7, c=4, scale=3.0, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(n, c, generator=g, dtype=dtype) * scale).requires_grad_()
    target = torch.randint(0, c, (n,), generator=g)
    return logits, target


def _extreme_logits(c=4, big=1e4, dtype=torch.float32):
    rows = [
        [big] + [-big] * (c - 1),  # saturated, correct (label 0)
        [-big] + [big] + [-big] * (c - 2),  # saturated, wrong (label 0)
        [big] * c,  # saturated, tied
        [-big] * c,  # all very negative
        [0.0] * c,  # uniform
        [big, big] + [-big] * (c - 2),  # two-way tie on the label
    ]
    return torch.tensor(rows, dtype=dtype).requires_grad_(), torch.zeros(len(rows), dtype=torch.long)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_per_sample_shape_and_functional_equals_module(case):
    logits, target = _inputs(dtype=torch.float32)
    loss = ll.build_loss(case.name, **case.kwargs)
    assert isinstance(loss, ll.Loss) and loss.family == "multiclass"
    out = case.call_module(loss, logits, target)
    assert out.shape == (7,) and out.dtype == torch.float32
    torch.testing.assert_close(out, case.call_functional(logits, target))


@pytest.mark.parametrize("case", [c for c in CASES if c.ref is not None], ids=[c.id for c in CASES if c.ref])
def test_parity_with_reference_loop(case):
    logits, target = _inputs()
    out = case.call_module(ll.build_loss(case.name, **case.kwargs), logits, target)
    expected = [case.call_ref(row, int(y)) for row, y in zip(logits.tolist(), target)]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradcheck_float64(case):
    logits, target = _inputs(n=3, c=3, scale=1.5, seed=1)
    loss = ll.build_loss(case.name, **case.kwargs)
    assert torch.autograd.gradcheck(lambda z: case.call_module(loss, z, target), (logits,))


@pytest.mark.parametrize("case", [c for c in CASES if c.extreme], ids=[c.id for c in CASES if c.extreme])
def test_finite_at_saturated_logits_fp32(case):
    logits, target = _extreme_logits()
    out = case.call_module(ll.build_loss(case.name, **case.kwargs), logits, target)
    assert torch.isfinite(out).all(), out
    out.sum().backward()
    assert torch.isfinite(logits.grad).all(), logits.grad


@pytest.mark.parametrize("dtype,big", [(torch.float16, 6e4), (torch.float16, 10.0), (torch.bfloat16, 1e4)])
@pytest.mark.parametrize("case", [c for c in CASES if c.extreme], ids=[c.id for c in CASES if c.extreme])
def test_finite_in_half_precision(case, dtype, big):
    logits, target = _extreme_logits(big=big, dtype=dtype)
    out = case.call_module(ll.build_loss(case.name, **case.kwargs), logits, target)
    assert out.dtype == torch.float32 and torch.isfinite(out).all(), out
    out.sum().backward()
    assert logits.grad.dtype == dtype and torch.isfinite(logits.grad).all(), logits.grad


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_finite_under_autocast(case, dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 5)
    with torch.no_grad():
        layer.weight.mul_(300.0)  # logits in the thousands: saturated softmax
    x, target = torch.randn(6, 8), torch.randint(0, 5, (6,))
    loss = ll.build_loss(case.name, **case.kwargs)
    with torch.autocast("cpu", dtype=dtype):
        logits = layer(x)
        out = case.call_module(loss, logits, target)
    assert logits.dtype == dtype and out.shape == (6,)
    if case.extreme:
        assert torch.isfinite(out).all(), out
        out.sum().backward()
        assert torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("case", [c for c in CASES if c.labels], ids=[c.id for c in CASES if c.labels])
def test_ignore_index(case):
    logits, target = _inputs(dtype=torch.float32)
    target[2] = -100
    loss = ll.build_loss(case.name, **case.kwargs)
    out = case.call_module(loss, logits, target)
    assert out[2] == 0 and torch.isfinite(out).all()
    assert loss.sample_mask(logits=logits, target=target).tolist() == [i != 2 for i in range(7)]
    out.sum().backward()
    assert (logits.grad[2] == 0).all()


@pytest.mark.parametrize("case", [c for c in CASES if c.labels], ids=[c.id for c in CASES if c.labels])
def test_label_inputs_validated(case):
    loss = ll.build_loss(case.name, **case.kwargs)
    logits = torch.zeros(3, 4)
    with pytest.raises(ValueError, match=r"`target` labels must be in \[0, 3\] \(or `ignore_index`\), got \[4\]"):
        loss(logits=logits, target=torch.tensor([0, 4, 1]))
    with pytest.raises(
        ValueError, match=r"`target` must have shape \[N\] = \[3\] to match `logits` \[3, 4\], got \[2\]"
    ):
        loss(logits=logits, target=torch.tensor([0, 1]))
    with pytest.raises(
        ValueError, match=r"`logits` must be a floating tensor of shape (\[N\] or )?\[N, C\], got torch.int64 \[3\]"
    ):
        loss(logits=torch.zeros(3, dtype=torch.long), target=torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match=r"`target` must be a torch.Tensor, got list"):
        loss(logits=logits, target=[0, 1, 2])
    loss(logits=logits, target=torch.tensor([0, 9, 1]).clamp_max(3))  # in range: fine


SOFT = ("cross_entropy", "poly1", "logit_clip")  # these take soft targets
HARD = [c for c in CASES if c.labels and c.name not in SOFT]


@pytest.mark.parametrize("case", HARD, ids=[c.id for c in HARD])
def test_soft_targets_rejected(case):
    loss = ll.build_loss(case.name, **case.kwargs)
    msg = rf"`{case.name}` takes integer labels `target \[N\]`; soft targets are not supported"
    with pytest.raises(ValueError, match=msg):
        loss(logits=torch.zeros(2, 3), target=torch.full((2, 3), 1 / 3))


@pytest.mark.parametrize("case", [c for c in CASES if not c.labels], ids=[c.id for c in CASES if not c.labels])
def test_logit_penalties_validate_logits(case):
    loss = ll.build_loss(case.name, **case.kwargs)
    with pytest.raises(
        ValueError, match=r"`logits` must be a floating tensor of shape \[N, C\], got torch.float32 \[3\]"
    ):
        loss(logits=torch.zeros(3))


@pytest.mark.parametrize("name", ["apl", "squentropy", "spherical_z_loss", "stablemax_cross_entropy"])
def test_needs_two_classes(name):
    kwargs = {"a": 1.0, "b": 1.0} if name == "spherical_z_loss" else {}
    with pytest.raises(ValueError, match=rf"`{name}` needs at least 2 classes, got `logits` with C = 1"):
        ll.build_loss(name, **kwargs)(logits=torch.zeros(2, 1), target=torch.zeros(2, dtype=torch.long))
