"""The chunked linear cross entropy with a sharded output weight (FSDP2: a ``DTensor`` ``[V, H]``) equals the
materialised logits and DDP: values, gradients, and fits of a tiny language model.

The sharded weight is gathered whole once per call (as FSDP2's own unshard of the head would) and its gradient
reduce-scattered, averaged over the ranks; the ``[N*T, V]`` logits stay chunked and local. Tolerances: float64
functional checks to 1e-12; float32 fits to ``_fsdp2``'s 1e-6 (measured: 0).
"""

from __future__ import annotations

import pytest

import lightning_losses as ll

from . import _lm

pytestmark = pytest.mark.ddp


@pytest.mark.parametrize("bias", [False, True])
def test_sharded_weight_values_and_gradients_equal_materialised(ddp, bias):
    for diffs in ddp.run(_lm.sharded_functional, bias):
        assert {"ce", "logp", "entropy", "ce_grad0", "entropy_grad1"} <= set(diffs)
        assert max(diffs.values()) < 1e-12, diffs


def _fits() -> dict[str, tuple[float, float]]:
    """``case -> (|fsdp2 - ddp|, |ddp - initial|)``: the head in its own FSDP2 unit (its weight a sharded DTensor
    when the loss reads it) with SAM, and the head in the root unit (unsharded by the root's forward)."""
    out = {}
    for name, head_unit, callbacks in (
        ("head_unit_sam", True, lambda: [ll.SAM(rho=0.5, sync_ascent=True)]),
        ("root_unit", False, lambda: []),
    ):
        sharded = _lm.fit("fsdp2", callbacks(), head_unit=head_unit)
        replicated = _lm.fit("ddp", callbacks(), head_unit=head_unit)
        start = _lm.initial_weights(head_unit)
        diff = max(float((sharded[k] - replicated[k]).abs().max()) for k in sharded)
        moved = min(float((replicated[k] - start[k]).abs().max()) for k in start)
        out[name] = (diff, moved)
    return out


def test_language_model_fit_under_fsdp2_equals_ddp(ddp):
    for name, (diff, moved) in ddp.run(_fits)[0].items():
        assert diff < 1e-6 and moved > 1e-3, (name, diff, moved)


def test_sharded_hidden_states_are_refused(ddp):
    for message in ddp.run(_lm.hidden_dtensor_error):
        assert message.startswith("`hidden` must be this rank's local hidden states (a torch.Tensor), got a DTensor")
