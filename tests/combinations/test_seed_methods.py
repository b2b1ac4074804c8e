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
from tests.helpers.ddp import lightning_env

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


def test_every_loss_whose_values_depend_on_the_other_samples_is_announced_under_accumulation():
    """Registry-wide: a per-sample loss whose values on rows ``[0, 2, 3]`` change when the other rows of the batch
    are dropped (on the contract test's inputs) is found by the accumulation probe (``batch_statistics`` or a global
    reduction in its forward), so that ``k`` micro-batches are never silently taken for one batch of ``k*B``."""
    from lightning_losses import distributed
    from lightning_losses.losses.base import LOSSES
    from tests.losses import test_contract as contract

    keep, missed = [0, 2, 3], []
    for name in ll.list_losses():
        loss = ll.build_loss(name, **contract.REQUIRED_ARGS.get(name, {}))
        if loss.batch_level:
            continue
        required, optional = loss.input_names()
        inputs = contract._inputs(
            contract._family(LOSSES.get(name)), required + tuple(k for k in optional if k == "target"), name
        )
        inputs = {k: v.detach() for k, v in inputs.items()}
        before = distributed.global_reductions()
        full = loss(**inputs)
        flagged = loss.batch_statistics or distributed.global_reductions() != before
        rows = {
            k: v[keep] if v.ndim and v.shape[0] == contract.N and k != "cost_embedding" else v
            for k, v in inputs.items()
        }
        if not flagged and not torch.allclose(full[keep], loss(**rows), rtol=1e-5, atol=1e-6, equal_nan=True):
            missed.append(name)
    assert not missed, f"batch-dependent per-sample losses the accumulation probe does not find: {missed}"


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


@pytest.mark.parametrize("k", [1, 2])
def test_objective_nonfinite_counts_the_sovr_and_mat_rows(k):
    """Batch 1 of ``"nan"`` has 3 NaN samples (skipped by ``training_step``): each term counts its 3 NaN rows, the
    total 3; batch 0 none. With k=2 and SAM (the step's two micro-batches, the perturbed pass not counted) the step's
    count after its last micro-batch is 3 as well."""
    spec = {"sovr": {"fraction": 0.5}, "mat": {"num_classes": M.CLASSES, "coefficient": 0.5}}
    diagnostics = _Diagnostics()
    callbacks = [diagnostics] if k == 1 else [ll.SAM(rho=0.1), diagnostics]
    _fit(_Net(spec), k, callbacks=callbacks, data="nan", max_epochs=1, log_every_n_steps=1)
    names = ("objective/nonfinite", "objective/nonfinite/sovr", "objective/nonfinite/mat")
    assert diagnostics.seen == [dict.fromkeys(names, 0.0), dict.fromkeys(names, 3.0)], diagnostics.seen


# ---------------------------------------------------------------- storm


def _storm():
    return ll.SampleReweighting("storm", meta_lr=0.5, lookahead_lr=2.0, seed=1)


def _same(a, b, tol=0.0, prefixes=("model/", "opt/", "rew/", "useful/")):
    assert len(a) == len(b) > 0, (len(a), len(b))
    for s, (x, y) in enumerate(zip(a, b), start=1):
        bad = M.differences(x, y, tol, prefixes)
        assert not bad, f"step {s}: {bad}"


@pytest.mark.parametrize("k", [1, 2])
def test_storm_meta_step_runs_once_per_optimizer_step_under_sam(k):
    """SAM's second pass replays the weights of the pass at ``w``: radius 0 equals no SAM bitwise (a second meta step
    would move omega), and with a radius the first step's omega is the one without SAM."""
    alone, _, _ = _fit(_Net(), k, callbacks=[_storm()])
    zero, _, _ = _fit(_Net(), k, callbacks=[_storm(), ll.SAM(rho=0.0)])
    _same(zero, alone)
    sam, _, _ = _fit(_Net(), k, callbacks=[_storm(), ll.SAM(rho=0.1)])
    assert not M.differences(sam[0], alone[0], 0.0, ("rew/",))
    assert [int(s["rew/step"]) for s in sam] == list(range(1, len(alone) + 1))
    assert M.differences(sam[-1], alone[-1], 1e-6, ("model/",)), "SAM changed nothing"


@pytest.mark.parametrize("strategy", ["storm", "per_class_normalized"])
def test_accumulation_equals_the_reweighter_alone_fed_the_micro_batches(strategy):
    """k=2: the step's state is the standalone reweighter's after both micro-batches at ``w0`` (one commit: STORM's
    omega moves once by the summed meta-gradient), and the parameters are SGD's ``w0 - lr * mean_m grad(weighted mean
    of micro-batch m)`` with its weights (``per_class_normalized``: each micro-batch's class gradients on their own)."""
    build = _storm if strategy == "storm" else lambda: ll.SampleReweighting("per_class_normalized")
    micro, _, _ = _fit(_Net(), 2, callbacks=[build(), ll.SAM(rho=0.0)], max_epochs=1)
    model, reweighter = _Net(), build().reweighter
    reweighter.accumulating = True
    params = dict(model.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    for batch in DataLoader(M.MatrixData(), batch_size=M.CHUNK, shuffle=False):
        logits = model(batch["x"])
        losses = torch.nn.functional.cross_entropy(logits, batch["target"], reduction="none")
        weights = reweighter(losses=losses.detach(), logits=logits.detach(), target=batch["target"])
        loss = (weights * losses).sum() / weights.sum()
        for n, g in zip(params, torch.autograd.grad(loss, list(params.values()))):
            grads[n] += g / 2
    reweighter.commit()
    with torch.no_grad():
        expected = {f"model/{n}": p - 0.2 * grads[n] for n, p in params.items()}
    expected.update({f"rew/{k}": v for k, v in reweighter.state_dict().items()})
    assert not M.differences({k: micro[0][k] for k in expected}, expected, 1e-12)


@pytest.mark.parametrize(("k", "data"), [(1, "nan"), (2, "nan"), (2, "nan_first")])
def test_storm_with_sam_and_a_nan_micro_batch_leaves_no_trace(k, data):
    """The NaN micro-batch's ``training_step`` returns ``None`` after ``compute_loss``: the same as a model that
    returns ``None`` before it (omega, the meta-gradient sum, counters, weights), bitwise."""
    nan, _, _ = _fit(_Net(), k, callbacks=[_storm(), ll.SAM(rho=0.1)], data=data)
    skip, _, _ = _fit(_Net(skip_nonfinite_inputs=True), k, callbacks=[_storm(), ll.SAM(rho=0.1)], data=data)
    _same(nan, skip)


def test_storm_with_sam_and_accumulation_resumes_exactly(tmp_path):
    """One epoch, checkpoint, resume for the second == two epochs uninterrupted (omega, model, optimizer)."""
    whole, _, _ = _fit(_Net(), 2, callbacks=[_storm(), ll.SAM(rho=0.1)])
    first, _, trainer = _fit(_Net(), 2, callbacks=[_storm(), ll.SAM(rho=0.1)], max_epochs=1)
    trainer.save_checkpoint(tmp_path / "epoch0.ckpt")
    snaps = _Snapshots([cb := _storm()])
    snaps.steps = list(first)  # the resumed fit starts at global_step 1
    loader = DataLoader(M.MatrixData(), batch_size=M.CHUNK, shuffle=False)
    trainer = M.trainer_for([cb, ll.SAM(rho=0.1), snaps], 2)
    trainer.fit(_Net(), loader, ckpt_path=tmp_path / "epoch0.ckpt")
    _same(snaps.steps, whole)


# ---------------------------------------------------------------- useful


class _Recorded(_Net):
    """Keeps the logits of every ``compute_loss`` call at the unperturbed weights, by sample index."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.at_w: dict[int, torch.Tensor] = {}

    def compute_loss(self, **tensors):
        if self.current_epoch == 0 and not self.objective_logging_suppressed:
            for i, row in zip(tensors["index"].tolist(), tensors["logits"].detach()):
                self.at_w[i] = row.clone()
        return super().compute_loss(**tensors)


def _useful_fit(model, k, callbacks, data=None, epochs=1, seed=38):
    """``USEFUL(separating_epoch=1)`` over an ``UpsampleSampler`` (seed 38: the ``"nan"`` samples 9, 12, 14 fall in
    batch 1 and the ``"nan_first"`` ones 1, 4 in batch 0 of epoch 0)."""
    useful = ll.USEFUL(separating_epoch=1)
    snaps = _Snapshots([useful])
    sampler = ll.UpsampleSampler(M.N, seed=seed)
    loader = DataLoader(M.MatrixData(nan=data), batch_size=M.CHUNK, sampler=sampler)
    M.trainer_for([useful, *callbacks, snaps], k, max_epochs=epochs).fit(model, loader)
    return useful, snaps.steps


@pytest.mark.parametrize("k", [1, 2])
def test_useful_records_the_outputs_at_w_under_sam_and_splits_them(k):
    """With SAM (and accumulation) the table holds each sample's logits of the pass at ``w`` (never ``w + e``), and
    the split at epoch 1 is ``slow_cluster`` of that table."""
    from lightning_losses.functional.clustering import slow_cluster

    model = _Recorded()
    useful, steps = _useful_fit(model, k, [ll.SAM(rho=0.1)])
    assert sorted(model.at_w) == list(range(M.N))
    outputs = torch.stack([model.at_w[i] for i in range(M.N)]).float()
    target = M.MatrixData().target
    losses = torch.nn.functional.cross_entropy(outputs, target, reduction="none")
    torch.testing.assert_close(useful.outputs, outputs, rtol=0, atol=0)
    torch.testing.assert_close(useful.losses, losses, rtol=0, atol=0)
    assert bool(useful.stamp.all()) and torch.equal(useful.targets, target)
    expected = slow_cluster(outputs, target, losses, torch.ones(M.N, dtype=torch.bool), useful.iterations)
    assert torch.equal(useful.decide(), expected) and bool(expected.any())


@pytest.mark.parametrize(("k", "data"), [(1, "nan"), (2, "nan"), (2, "nan_first")])
def test_useful_with_sam_and_a_nan_micro_batch_records_nothing_of_it(k, data):
    """A micro-batch whose ``training_step`` returns ``None`` after ``compute_loss`` leaves the table (and the count of
    non-finite rows) as a model that returns ``None`` before it (bitwise), and the model as well."""
    useful_nan, nan = _useful_fit(_Net(), k, [ll.SAM(rho=0.1)], data=data)
    useful_skip, skip = _useful_fit(_Net(skip_nonfinite_inputs=True), k, [ll.SAM(rho=0.1)], data=data)
    _same(nan, skip)
    assert int(useful_nan.nonfinite) == int(useful_skip.nonfinite) == 0, "the skipped micro-batch's NaN rows counted"
    assert int(skip[-1]["useful/stamp"].sum()) == M.CHUNK, "one batch recorded"


# ---------------------------------------------------------------- ignore_index targets


@pytest.mark.parametrize("strategy", ["storm", "per_class_normalized"])
@pytest.mark.parametrize(
    "spec",
    [{"ce": {"loss": "cross_entropy"}}, {"sovr": {"fraction": 0.5}, "mat": {"num_classes": M.CLASSES}}],
    ids=["ce", "sovr+mat"],
)
def test_ignored_targets_count_nowhere_in_the_newest_terms_and_reweighters(strategy, spec):
    """Samples labelled ``ignore_index`` change nothing: the loss, its gradient, the other samples' weights and the
    reweighter's state equal those of the batch without them."""
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(10, M.CLASSES, generator=g, dtype=torch.float64)
    target = torch.randint(0, M.CLASSES, (10,), generator=g)
    ignored = torch.tensor([1, 4, 7])
    keep = torch.tensor([0, 2, 3, 5, 6, 8, 9])
    target[ignored] = -100
    full, part = logits.clone().requires_grad_(True), logits[keep].clone().requires_grad_(True)
    results = []
    for z, y, index in ((full, target, torch.arange(10)), (part, target[keep], keep)):
        objective = ll.Objective(spec)
        objective.train()
        for term in objective.terms:
            if isinstance(term.loss, MAT):
                term.loss.load_held_out(_held_out(10))
        reweighter = ll.build_reweighter(strategy)
        out = objective({"logits": z, "target": y, "index": index}, reweighter=reweighter)
        (grad,) = torch.autograd.grad(out.loss, z)
        results.append((out.loss.detach(), grad, out.weights, reweighter.state_dict()))
    (loss, grad, weights, state), (loss_k, grad_k, weights_k, state_k) = results
    torch.testing.assert_close(loss, loss_k, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad[keep], grad_k, rtol=1e-12, atol=1e-15)
    assert not grad[ignored].any() and not weights[ignored].any()
    torch.testing.assert_close(weights[keep], weights_k, rtol=1e-12, atol=0)
    assert not M.differences(state, state_k, 1e-12)


# ---------------------------------------------------------------- DDP


_DDP_SPEC = {"sovr": {"fraction": 0.5}, "mat": {"num_classes": M.CLASSES, "coefficient": 0.5}}


def _ddp_fit(k: int) -> list:
    """storm + SAM (``sync_ascent``) on ``sovr + mat`` under Lightning's DDP on this rank of the session's 2-process
    group, ``k`` micro-batches of ``DDP_CHUNK`` rows per rank (see ``_matrix.ddp_run``)."""

    from lightning_losses.distributed import rank

    r = rank()
    with lightning_env():
        callbacks = [_storm(), ll.SAM(rho=0.1, sync_ascent=True)]
        snaps = _Snapshots(callbacks)
        loader = DataLoader(M.MatrixData(order=M.rank_order(r, M.DDP_CHUNK)), batch_size=M.DDP_CHUNK, shuffle=False)
        trainer = M.trainer_for([*callbacks, snaps], k, strategy="ddp", devices=2, use_distributed_sampler=False)
        trainer.fit(_Net(_DDP_SPEC, chunk=M.DDP_CHUNK), loader)
        return snaps.steps


@pytest.mark.ddp
def test_storm_sovr_mat_with_sam_and_accumulation_under_ddp_equal_one_process(ddp):
    """2 ranks x k=2 micro-batches of 4 rows == one process, k=2 micro-batches of 8 (the ranks' rows concatenated):
    SOVR's ranking and MAT's calibration over the global micro-batch, STORM's meta step from the gathered batch."""
    rank0, rank1 = ddp.run(_ddp_fit, 2)
    # BatchNorm running statistics are per rank (DDP broadcasts rank 0's at each forward): left out
    trained = ("model/inp", "model/mix", "model/head", "model/bn.weight", "model/bn.bias", "opt/", "rew/")
    _same(rank0, rank1, prefixes=trained)
    one, _, _ = _fit(_Net(_DDP_SPEC, chunk=M.DDP_CHUNK), 2, 2 * M.DDP_CHUNK, [_storm(), ll.SAM(rho=0.1)])
    _same(rank0, one, 1e-10, trained)


# ---------------------------------------------------------------- all together, resumed


def _together(tmp_path, epochs, ckpt=None, steps=None):
    """useful + storm + SAM on ``sovr + mat``, k=2, 3 epochs (the split at epoch 1's start)."""
    useful, storm = ll.USEFUL(separating_epoch=1), _storm()
    snaps = _Snapshots([useful, storm])
    snaps.steps = list(steps or [])
    loader = DataLoader(M.MatrixData(), batch_size=M.CHUNK // 2, sampler=ll.UpsampleSampler(M.N, seed=38))
    trainer = M.trainer_for([useful, storm, ll.SAM(rho=0.1), snaps], 2, max_epochs=epochs)
    trainer.fit(_Net(_DDP_SPEC), loader, ckpt_path=ckpt)
    if ckpt is None and epochs < 3:
        trainer.save_checkpoint(tmp_path / "split.ckpt")
    return useful, snaps.steps


def test_useful_storm_sovr_mat_with_sam_and_accumulation_resume_at_the_split_exactly(tmp_path):
    """Checkpoint after the recording epoch (the table, not the split), resume: the split, the upsampled epochs, omega,
    the model and the optimizer equal an uninterrupted run's, bitwise."""
    whole_useful, whole = _together(tmp_path, 3)
    _, first = _together(tmp_path, 1)
    resumed_useful, resumed = _together(tmp_path, 3, tmp_path / "split.ckpt", first)
    assert whole_useful.decided and torch.equal(resumed_useful.upsampled, whole_useful.upsampled)
    assert 0 < int(whole_useful.upsampled.sum()) < M.N
    _same(resumed, whole)


def test_every_reweighter_leaves_a_row_with_nan_logits_out_like_a_masked_sample():
    """Registry-wide: a sample whose logits (hence loss) are NaN gets weight 0, and the other weights and the state
    equal the same calls with that sample masked (the strategies that read ``logits`` must not let its row spread)."""
    from tests.reweighting.helpers import BATCH, STRATEGIES, make_steps

    for name in sorted(STRATEGIES):
        poisoned, masked = ll.build_reweighter(name, **STRATEGIES[name]), ll.build_reweighter(name, **STRATEGIES[name])
        for s, (epoch, inputs) in enumerate(make_steps(4, seed=3)):
            at = (1, 6, 3)[s % 3]
            bad = {**inputs, "logits": inputs["logits"].clone(), "losses": inputs["losses"].clone()}
            bad["logits"][at, 0] = bad["losses"][at] = float("nan")
            mask = torch.ones(BATCH, dtype=torch.bool)
            mask[at] = False
            for r in (poisoned, masked):
                r.set_epoch(epoch)
            got, expected = poisoned(**bad), masked(**inputs, sample_mask=mask)
            assert bool(torch.isfinite(got).all()) and float(got[at]) == 0.0, (name, s, got)
            torch.testing.assert_close(got, expected, msg=f"{name}, step {s}")
        state, reference = poisoned.state_dict(), masked.state_dict()
        assert int(state.pop("nonfinite")) == 4 and int(reference.pop("nonfinite")) == 0, name
        assert not M.differences(state, reference, 1e-12), name


def test_batch_statistics_is_not_an_argument_in_the_repr():
    assert repr(ll.build_loss("sovr", fraction=0.3)) == "SOVR(fraction=0.3, gather=True, ignore_index=-100)"
    assert (
        ll.build_loss("sovr", fraction=0.3).batch_statistics
        and not ll.build_loss("sovr", fraction=1.0).batch_statistics
    )
