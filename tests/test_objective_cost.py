"""The per-step cost of the objective's common case (issue 19): one cross-entropy term, no ignored label, no
reweighter, one process on CPU. Counted in ATen operations (forward and backward), which, unlike timings, a shared
machine cannot blur; the values must equal PyTorch's own mean cross entropy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

import lightning_losses as ll


class _Ops(TorchDispatchMode):
    """Records the name of every ATen operation run inside."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _step(target: torch.Tensor) -> tuple[list[str], ll.ObjectiveOutput, torch.Tensor]:
    logits = torch.randn(16, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    with _Ops() as ops:
        out = ll.Objective({"cross_entropy": {}})({"logits": logits, "target": target})
        out.loss.backward()
    return ops.names, out, logits


def test_common_case_runs_no_weight_vector_and_no_label_reduction():
    target = torch.arange(16) % 5
    names, out, logits = _step(target)
    # the unit weights are one fill (no sum / clamp / divide of a weight vector); the label range is checked by
    # torch's CPU kernel (no aminmax and host reads of our own)
    assert not {"aminmax", "sum", "clamp_min", "div", "_to_copy"} & set(names), names
    assert len(names) <= 16, names
    reference = logits.detach().requires_grad_()
    expected = F.cross_entropy(reference, target)
    expected.backward()
    torch.testing.assert_close(out.value, expected.detach())
    torch.testing.assert_close(logits.grad, reference.grad)
    assert torch.equal(out.weights, torch.ones(16))


def test_an_ignored_label_still_leaves_its_sample_out():
    target = torch.arange(16) % 5
    target[3] = -100
    names, out, logits = _step(target)
    keep = target != -100
    reference = logits.detach().requires_grad_()
    F.cross_entropy(reference, target).backward()  # torch's mean over the labels that count
    torch.testing.assert_close(out.value, F.cross_entropy(logits.detach(), target))
    torch.testing.assert_close(logits.grad, reference.grad)
    assert out.weights.tolist() == keep.float().tolist()


def test_an_out_of_range_label_raises_the_library_message_on_cpu():
    with pytest.raises(
        ValueError, match=r"`target` labels must be in \[0, 4\] \(or `ignore_index`\), got \[7, 7, 7, 7\]"
    ):
        _step(torch.tensor([0, 1, 7, 2] * 4))
