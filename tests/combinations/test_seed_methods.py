"""The newest mechanisms (``useful``, ``storm``, ``sovr``, ``mat``, ``per_class_normalized``) combined with what a real
run meets: gradient accumulation, a perturbation callback (SAM's second pass at :math:`w + e`), a NaN batch / skipped
step, ``ignore_index`` targets, checkpoint resume; each against an independent reference (an explicit loop or the
mechanism alone on an equivalent setup). Model and data: the combination matrix's (``_matrix.py``).

* accumulation: ``sovr`` (global ranking, gathered or not) and ``mat`` (calibration over the batch) are named in the
  ``AccumulationWarning``; ``k = 2`` gives the mean of the micro-batch objectives (explicit loop);
* non-finite: a NaN sample takes no part in ``sovr``'s ranking nor in ``per_class_normalized``'s class gradients;
  ``objective/nonfinite/{term}`` counts ``sovr`` / ``mat`` rows;
* ``storm``: one meta step per optimizer step (SAM's second pass replays; radius 0 equals no SAM bitwise), ``k = 2``
  equals the mechanism alone fed the micro-batches, a NaN micro-batch leaves no trace, resume continues exactly;
* ``useful``: records the outputs of the pass at :math:`w` only (SAM, accumulation), a skipped step records nothing.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader

import lightning_losses as ll
from lightning_losses._accumulation import GlobalTermProbe
from lightning_losses.errors import AccumulationWarning
from lightning_losses.functional.adversarial import sovr
from lightning_losses.losses.mat import MAT

from . import _matrix as M

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
TARGETS = torch.tensor([0, 1, 2, 0, 1, 2])


def _held_out(n: int = M.N) -> torch.Tensor:
    return torch.randn(n, M.CLASSES, generator=torch.Generator().manual_seed(3))


class _Net(M.MatrixNet):
    """The matrix model with an objective given by ``spec`` (``mat``: its held-out table loaded)."""

    def __init__(self, spec=None, **kwargs):
        super().__init__(**kwargs)
        if spec is not None:
            self.configure_objective(spec)
            for term in self.objective.terms:
                if isinstance(term.loss, MAT):
                    term.loss.load_held_out(_held_out())


class _Snapshots(M.Snapshots):
    """Module tensors (MAT's table, an extra state, left out), optimizer, reweighter and USEFUL state per step."""

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step > len(self.steps):
            tensors = pl_module.state_dict().items()
            snap = {f"model/{k}": v.detach().clone() for k, v in tensors if isinstance(v, torch.Tensor)}
            for i, state in trainer.optimizers[0].state_dict()["state"].items():
                snap.update({f"opt/{i}/{k}": v.clone() for k, v in state.items() if isinstance(v, torch.Tensor)})
            for cb in self.callbacks:
                if isinstance(cb, ll.SampleReweighting):
                    snap.update({f"rew/{k}": v.clone() for k, v in cb.reweighter.state_dict().items()})
                elif isinstance(cb, ll.USEFUL):
                    state = cb.state_dict().items()
                    snap.update({f"useful/{k}": v.clone() for k, v in state if isinstance(v, torch.Tensor)})
            self.steps.append(snap)


def _fit(model, k, batch=M.CHUNK, callbacks=(), data=None, **kwargs):
    snaps = _Snapshots(list(callbacks))
    loader = DataLoader(M.MatrixData(nan=data), batch_size=batch, shuffle=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = M.trainer_for([*callbacks, snaps], k, **kwargs)
        trainer.fit(model, loader)
    return snaps.steps, [str(w.message) for w in caught if issubclass(w.category, AccumulationWarning)], trainer


# ---------------------------------------------------------------- accumulation: batch statistics are announced


@pytest.mark.parametrize(
    ("spec", "extra"),
    [
        ({"sovr": {}}, {}),
        ({"sovr": {"gather": False}}, {}),
        ({"mat": {"num_classes": 3, "temperature": 1.0}}, {"index": torch.arange(6), "held_out_logits": "rows"}),
    ],
    ids=["sovr", "sovr_local", "mat"],
)
def test_probe_names_sovr_and_mat(spec, extra):
    g = torch.Generator().manual_seed(0)
    inputs = {"logits": torch.randn(6, 3, generator=g), "target": TARGETS}
    inputs.update({k: torch.randn(6, 3, generator=g) if v == "rows" else v for k, v in extra.items()})
    objective = ll.Objective(spec)
    objective.train()
    probe = GlobalTermProbe(objective)
    objective(inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        probe.report(2)
    assert [str(w.message).split(" are ")[0] for w in caught] == [f"objective term(s) `{next(iter(spec))}`"]


@pytest.mark.parametrize("spec", [{"sovr": {"fraction": 0.5}}, {"mat": {"num_classes": M.CLASSES}}], ids=str)
def test_accumulated_step_is_the_mean_of_micro_batch_objectives_and_warned(spec):
    """k=2: the first step is SGD's ``w - lr * mean_m grad_m`` (first momentum buffer = gradient), each micro-batch's
    objective computed on its own (explicit loop), and the fit warns once naming the term."""
    micro, warned, _ = _fit(_Net(spec), 2, max_epochs=1)
    name = next(iter(spec))
    assert len(warned) == 1 and warned[0].startswith(f"objective term(s) `{name}` are computed over the whole batch")
    reference = _Net(spec)
    params = dict(reference.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in DataLoader(M.MatrixData(), batch_size=M.CHUNK, shuffle=False):
        loss = reference.compute_loss(logits=reference(batch["x"]), target=batch["target"], index=batch["index"])
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            grads[n] += g / 2
    with torch.no_grad():
        expected = {f"model/{n}": p - 0.2 * grads[n] for n, p in params.items()}
    assert not M.differences({k: micro[0][k] for k in expected}, expected, 1e-12)


# ---------------------------------------------------------------- non-finite samples


def test_a_nan_sample_takes_no_part_in_the_sovr_ranking():
    """The other samples get the losses of the batch without the NaN sample (the switch counts finite margins)."""
    g = torch.Generator().manual_seed(1)
    logits, target = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    with_nan = logits.clone()
    with_nan[2, 1] = float("nan")
    keep = torch.tensor([0, 1, 3, 4, 5, 6])
    for fraction in (0.3, 0.5, 0.8):
        got = sovr(with_nan, target, fraction=fraction)
        torch.testing.assert_close(got[keep], sovr(logits[keep], target[keep], fraction=fraction), rtol=0, atol=0)
        assert torch.isnan(got[2])


def test_a_nan_sample_takes_no_part_in_per_class_normalized_weights():
    """Weight 0 for the NaN sample, and the others' weights those of the batch without it (not NaN)."""
    g = torch.Generator().manual_seed(2)
    logits, target = torch.randn(7, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0])
    logits[3, 0] = float("nan")
    losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    keep = torch.tensor([0, 1, 2, 4, 5, 6])
    reweighter, alone = ll.build_reweighter("per_class_normalized"), ll.build_reweighter("per_class_normalized")
    weights = reweighter(losses=losses, logits=logits, target=target)
    expected = alone(losses=losses[keep], logits=logits[keep], target=target[keep])
    assert float(weights[3]) == 0.0
    torch.testing.assert_close(weights[keep], expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(reweighter.class_weights(), alone.class_weights(), rtol=1e-12, atol=0)


class _Diagnostics(M.L.Callback):
    def __init__(self):
        self.seen = []

    def on_train_batch_end(self, trainer, pl_module, *args):
        metrics = trainer.callback_metrics
        self.seen.append({k: float(metrics[k]) for k in metrics if k.startswith("objective/nonfinite")})


def test_objective_nonfinite_counts_the_sovr_and_mat_rows():
    """Batch 1 of ``"nan"`` has 3 NaN samples (skipped by ``training_step``): each term counts its 3 NaN rows, the
    total 3; batch 0 none."""
    spec = {"sovr": {"fraction": 0.5}, "mat": {"num_classes": M.CLASSES, "coefficient": 0.5}}
    diagnostics = _Diagnostics()
    _fit(_Net(spec), 1, callbacks=[diagnostics], data="nan", max_epochs=1, log_every_n_steps=1)
    names = ("objective/nonfinite", "objective/nonfinite/sovr", "objective/nonfinite/mat")
    assert diagnostics.seen == [dict.fromkeys(names, 0.0), dict.fromkeys(names, 3.0)], diagnostics.seen
