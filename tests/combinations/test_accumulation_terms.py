"""Objective terms over the whole batch under gradient accumulation (``lightning_losses._accumulation``).

A batch-level term (``vrex``) or a per-sample term with batch statistics (``auc_pairwise``'s pairs, the ``"token"``
normalisation's token count) is computed per micro-batch: ``k`` micro-batches give the mean of the ``k``
micro-batch objectives, not one batch of ``k*B``. That is documented and announced once per fit by an
``AccumulationWarning`` naming the terms; per-sample objectives (the matrix's) get no warning.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader

import lightning_losses as ll
from lightning_losses import distributed
from lightning_losses._accumulation import GlobalTermProbe
from lightning_losses.errors import AccumulationWarning

from . import _matrix as M

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


class _VRExNet(M.MatrixNet):
    def __init__(self):
        super().__init__()
        self.configure_objective({"ce": {"loss": "cross_entropy"}, "vrex": {"num_groups": 2, "coefficient": 3.0}})


def _fit(model, k, batch, callbacks=()):
    snaps = M.Snapshots([])
    loader = DataLoader(M.MatrixData(), batch_size=batch, shuffle=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        M.trainer_for([*callbacks, snaps], k, max_epochs=1).fit(model, loader)
    return snaps.steps, [w for w in caught if issubclass(w.category, AccumulationWarning)]


def test_batch_level_term_under_accumulation_is_the_mean_of_micro_batch_objectives_and_warned():
    micro, warned = _fit(_VRExNet(), 2, M.CHUNK)
    assert len(warned) == 1, [str(w.message) for w in warned]
    message = str(warned[0].message)
    assert message.startswith("objective term(s) `vrex` are computed over the whole batch, and with ")
    assert "accumulate_grad_batches=2 each micro-batch is its own batch" in message
    # the first step by hand: SGD's first momentum buffer is the gradient, so w1 = w0 - lr * mean_m grad_m
    reference = _VRExNet()
    params = dict(reference.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in DataLoader(M.MatrixData(), batch_size=M.CHUNK, shuffle=False):
        logits = reference(batch["x"])
        loss = reference.compute_loss(logits=logits, target=batch["target"], group=batch["group"])
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            grads[n] += g / 2
    with torch.no_grad():
        expected = {f"model/{n}": p - 0.2 * grads[n] for n, p in params.items()}
    assert not M.differences({k: micro[0][k] for k in expected}, expected, 1e-12)
    large, warned_large = _fit(_VRExNet(), 1, 2 * M.CHUNK)
    assert not warned_large, "no accumulation: no warning"
    assert M.differences(micro[0], large[0], 1e-6, ("model/",)), "vrex is batch-level: k=2 x 8 != 1 x 16"


def test_per_sample_objective_with_reweighting_and_sam_under_accumulation_is_not_warned():
    callbacks = [ll.SampleReweighting("loss_softmax", temperature=1.0), ll.SAM(rho=0.1)]
    _, warned = _fit(M.MatrixNet(), 2, M.CHUNK, callbacks)
    assert not warned, [str(w.message) for w in warned]


@pytest.mark.parametrize(
    ("spec", "inputs", "flagged"),
    [
        ({"auc_pairwise": {}}, {"logits": torch.randn(6), "target": torch.tensor([1.0, 0, 1, 0, 0, 1])}, True),
        ({"token_cross_entropy": {}}, {"logits": torch.randn(6, 3, 4), "target": torch.randint(0, 4, (6, 3))}, True),
        ({"cross_entropy": {}}, {"logits": torch.randn(6, 4), "target": torch.tensor([0, 1, 2, 3, 0, 1])}, False),
        (
            {"token_cross_entropy": {"normalization": "sequence"}},
            {"logits": torch.randn(6, 3, 4), "target": torch.randint(0, 4, (6, 3))},
            False,
        ),
    ],
    ids=["auc_pairwise", "token_mean", "cross_entropy", "sequence_mean"],
)
def test_probe_finds_terms_with_batch_statistics(spec, inputs, flagged):
    objective = ll.Objective(spec)
    probe = GlobalTermProbe(objective)
    before = distributed.global_reductions()
    objective(inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe.report(2)
    assert bool(caught) == flagged, (spec, [str(w.message) for w in caught])
    assert distributed.global_reductions() >= before
    assert not objective.terms[0].loss._forward_hooks, "the probe's hooks are removed"
