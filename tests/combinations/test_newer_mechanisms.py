"""The newer mechanisms in the combination matrix's cells (model, data and snapshots of ``_matrix.py``).

* ``perp_grad`` (⊥Grad) after SAM with gradient clipping: ``k = 2`` micro-batches equal one batch of ``2B``; a NaN
  micro-batch leaves no trace; the tied weight is projected once (its final gradient is orthogonal to it);
* ``curvature_monitor`` at every step during a SAM + ``group_dro`` + entropy-control fit with accumulation: the
  trajectory (weights, BatchNorm statistics, optimizer, reweighter, controller, global RNG) is bitwise unchanged;
* ``bsam`` (``WeightPerturbation("bsam")`` with the ``BSAM`` optimizer): ``k = 2`` equals one batch of ``2B`` (the
  noisy pass re-evaluates every micro-batch at the noisy point); a NaN micro-batch leaves no trace;
* ``mesa`` with SAM and ``loss_softmax``: ``k = 2`` equals one batch of ``2B``, a NaN micro-batch leaves no trace, a
  skipped step does not move the EMA, and the teacher pass keeps a frozen (eval) submodule frozen.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

import lightning_losses as ll
from lightning_losses.perturbation import BSAM
from tests.helpers.ddp import lightning_env

from . import _matrix as M

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
EVERYTHING = ("model/", "opt/", "rew/", "ent/", "pert/", "saf/", "rng/")
WEIGHTS = ("model/inp", "model/mix", "model/head", "model/bn.weight", "model/bn.bias", "opt/")


class _Net(M.MatrixNet):
    """The matrix model passing ``inputs`` (MESA's teacher input); ``bsam``: the BSAM optimizer."""

    bsam = False

    def training_step(self, batch, batch_idx):
        logits = self(batch["x"]) * batch["scale"].unsqueeze(1)
        if self.skip_nonfinite_inputs and not bool(torch.isfinite(batch["scale"]).all()):
            return None
        inputs = {"logits": logits, "target": batch["target"], "index": batch["index"], "group": batch["group"]}
        loss = self.compute_loss(**inputs, inputs=batch["x"])
        return loss if bool(torch.isfinite(loss)) else None

    def configure_optimizers(self):
        if self.bsam:
            return BSAM(self.parameters(), num_data=M.N, lr=0.05, rho=0.01)
        return super().configure_optimizers()


class _Snapshots(M.Snapshots):
    """The matrix's snapshots plus the global RNG state and MESA's EMA."""

    def on_train_batch_end(self, trainer, pl_module, *args):
        if trainer.global_step > len(self.steps):
            snap = M.snapshot(trainer, pl_module, self.callbacks)
            snap["rng/torch"] = torch.get_rng_state().clone()
            for cb in self.callbacks:
                if isinstance(cb, ll.MESA) and cb.ema is not None:
                    snap.update({f"mesa/{k}": v.clone() for k, v in cb.ema.items()})
            self.steps.append(snap)


EXTRA = {
    "perp_grad": lambda: ll.PerpGrad(),
    "monitor": lambda: ll.CurvatureMonitor(every_n_steps=1, probe_size=8, power_iters=3, hutchinson_samples=2),
    "bsam": lambda: ll.WeightPerturbation("bsam", rho=0.01),
    "mesa": lambda: ll.MESA(coefficient=0.5, temperature=2.0, decay=0.5, start_epoch=0),
    "wsam": lambda: ll.WSAM(rho=0.1, gamma=0.9, decouple=False),
}


def fit(extra=(), pert="none", rew="none", k=1, batch=M.CHUNK, ent=False, data="clean", **trainer_kwargs):
    """Snapshots after each optimizer step of one matrix fit with the ``extra`` callbacks (names of ``EXTRA``)."""
    callbacks = [*M.callbacks_for(pert, False, rew, ent), *(EXTRA[name]() for name in extra)]
    snaps = _Snapshots(callbacks)
    model = _Net(skip_nonfinite_inputs=data.startswith("skip"))
    model.bsam = "bsam" in extra
    nan = {"skip": "nan", "skip_first": "nan_first"}.get(data, data if data.startswith("nan") else None)
    loader = DataLoader(M.MatrixData(nan=nan), batch_size=batch, shuffle=False)
    torch.manual_seed(0)
    M.trainer_for([*callbacks, snaps], k, **trainer_kwargs).fit(model, loader)
    return snaps.steps


def first_difference(a, b, tol, prefixes):
    assert len(a) == len(b) == M.EPOCHS * M.N // (2 * M.CHUNK) or len(a) == len(b) == M.EPOCHS * M.N // M.CHUNK
    for s, (x, y) in enumerate(zip(a, b), start=1):
        bad = M.differences(x, y, tol, prefixes)
        if bad:
            return f"step {s}: " + ", ".join(bad)
    return None


# ---------------------------------------------------------------- perp_grad


def test_perp_grad_after_sam_with_clipping_accumulation_equals_one_large_batch():
    micro = fit(["perp_grad"], "sam", k=2, gradient_clip_val=0.05)
    large = fit(["perp_grad"], "sam", k=1, batch=2 * M.CHUNK, gradient_clip_val=0.05)
    assert (problem := first_difference(micro, large, 1e-10, EVERYTHING)) is None, problem
    plain = fit(["perp_grad"], "none", k=2, gradient_clip_val=0.05)
    assert M.differences(micro[-1], plain[-1], 1e-6, ("model/",)), "SAM changed nothing under perp_grad"


@pytest.mark.parametrize("data", ["nan", "nan_first"])
def test_perp_grad_with_sam_and_a_nan_micro_batch_leaves_no_trace(data):
    k = 2 if data == "nan_first" else 1
    nan = fit(["perp_grad"], "sam", "group_dro", k=k, data=data)
    skip = fit(["perp_grad"], "sam", "group_dro", k=k, data=data.replace("nan", "skip"))
    assert (problem := first_difference(nan, skip, 0.0, EVERYTHING)) is None, problem


class _Grads(M.L.Callback):
    """The tied weight and its gradient as the optimizer gets them (listed after ``PerpGrad``)."""

    def __init__(self):
        self.seen = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        w = pl_module.mix1.weight
        self.seen.append((w.detach().clone(), w.grad.clone()))


def test_perp_grad_projects_a_tied_weight_once():
    """The tied weight (``mix1.weight`` is ``mix2.weight``) is one parameter of the optimizer: its final gradient is
    orthogonal to it and has the norm of the gradient summed over both uses."""
    model, grads = _Net(), _Grads()
    names = [n for n, p in model.named_parameters(remove_duplicate=False) if p is model.mix1.weight]
    assert names == ["mix1.weight", "mix2.weight"]
    plain = _Net()
    M.trainer_for([ll.PerpGrad(), grads], 1, max_epochs=1, max_steps=2).fit(model, DataLoader(M.MatrixData(), 8))
    w, g = grads.seen[0]
    assert abs(float((w * g).sum())) < 1e-12 * float(w.norm() * g.norm())
    loss = plain.compute_loss(**_first_batch_inputs(plain))
    reference = torch.autograd.grad(loss, plain.mix1.weight)[0]  # both uses summed
    torch.testing.assert_close(g.norm(), reference.norm(), rtol=1e-12, atol=0.0)


def _first_batch_inputs(model):
    batch = next(iter(DataLoader(M.MatrixData(), batch_size=M.CHUNK)))
    logits = model(batch["x"]) * batch["scale"].unsqueeze(1)
    return {"logits": logits, "target": batch["target"], "index": batch["index"], "group": batch["group"]}


# ---------------------------------------------------------------- curvature_monitor


@pytest.mark.parametrize(
    ("pert", "rew", "k", "ent"), [("sam", "group_dro", 2, True), ("saf", "per_sample_ema", 1, False)]
)
def test_curvature_monitor_at_every_step_leaves_the_trajectory_bitwise(pert, rew, k, ent):
    watched = fit(["monitor"], pert, rew, k=k, ent=ent)
    alone = fit([], pert, rew, k=k, ent=ent)
    assert (problem := first_difference(watched, alone, 0.0, EVERYTHING)) is None, problem


# ---------------------------------------------------------------- bsam


def test_bsam_accumulation_equals_one_large_batch():
    """The noisy pass re-evaluates the step's earlier micro-batches at the noisy point (before the fix the noisy
    gradient mixed the earlier micro-batches' gradients at ``w`` with the last one's at the noisy point). BatchNorm
    running statistics are left out: the earlier micro-batches updated them at ``w`` (documented)."""
    micro = fit(["bsam"], k=2)
    large = fit(["bsam"], k=1, batch=2 * M.CHUNK)
    assert (problem := first_difference(micro, large, 1e-10, (*WEIGHTS, "rng/"))) is None, problem


@pytest.mark.parametrize("data", ["nan", "nan_first"])
def test_bsam_with_reweighting_and_a_nan_micro_batch_leaves_no_trace(data):
    k = 2 if data == "nan_first" else 1
    nan = fit(["bsam"], rew="loss_softmax", k=k, data=data)
    skip = fit(["bsam"], rew="loss_softmax", k=k, data=data.replace("nan", "skip"))
    assert (problem := first_difference(nan, skip, 0.0, EVERYTHING)) is None, problem


# ---------------------------------------------------------------- mesa


def test_mesa_with_sam_accumulation_equals_one_large_batch_and_nan_leaves_no_trace():
    micro = fit(["mesa"], "sam", k=2)
    large = fit(["mesa"], "sam", k=1, batch=2 * M.CHUNK)
    assert (problem := first_difference(micro, large, 1e-10, (*EVERYTHING, "mesa/"))) is None, problem
    nan = fit(["mesa"], "sam", "loss_softmax", k=2, data="nan_first")
    skip = fit(["mesa"], "sam", "loss_softmax", k=2, data="skip_first")
    assert (problem := first_difference(nan, skip, 0.0, (*EVERYTHING, "mesa/"))) is None, problem


def test_mesa_does_not_move_the_ema_on_a_skipped_step():
    """``data="nan"``, k=1: step 2's ``training_step`` returns ``None`` (weights unchanged): the EMA and
    ``updates`` stay as after step 1."""
    mesa = ll.MESA(coefficient=0.5, temperature=2.0, decay=0.5, start_epoch=0)
    snaps = _Snapshots([mesa])
    loader = DataLoader(M.MatrixData(nan="nan"), batch_size=M.CHUNK, shuffle=False)
    M.trainer_for([mesa, snaps], 1, max_epochs=1).fit(_Net(), loader)
    assert len(snaps.steps) == 2
    ema = {k: v for k, v in snaps.steps[1].items() if k.startswith("mesa/")}
    assert not M.differences(ema, {k: snaps.steps[0][k] for k in ema}, 0.0), "the skipped step moved the EMA"
    assert mesa.updates == 1


def test_mesa_teacher_keeps_a_frozen_submodule_in_eval_mode():
    model = _Net()
    model.bn.eval()  # a frozen BatchNorm inside a training model
    ll.MESA().teacher_logits(model, torch.randn(M.CHUNK, M.FEATURES, dtype=torch.float64))
    assert model.training and not model.bn.training


def test_perp_grad_refuses_wsam_decoupled_and_projects_wsam_coupled():
    """WSAM's default ``decouple=True`` applies its sharpness term after ``optimizer.step()``, outside the gradient
    ⊥Grad projects: refused at setup. ``decouple=False`` puts it in the gradient: k=2 equals one batch of 2B."""
    trainer = M.trainer_for([ll.WSAM(rho=0.1, gamma=0.9), ll.PerpGrad()], 1, max_steps=1)
    with pytest.raises(ll.ConfigurationError, match=r"PerpGrad cannot project .*WSAM.*`decouple=True`.*decouple=False"):
        trainer.fit(_Net(), DataLoader(M.MatrixData(), batch_size=M.CHUNK))
    micro = fit(["wsam", "perp_grad"], k=2)
    large = fit(["wsam", "perp_grad"], k=1, batch=2 * M.CHUNK)
    assert (problem := first_difference(micro, large, 1e-10, EVERYTHING)) is None, problem


def _bsam_ddp_run(k: int) -> tuple:
    """bsam (``sync_ascent=True``) under Lightning's DDP on this rank of the session's 2-process group, ``k``
    micro-batches of ``DDP_CHUNK`` rows per rank (see ``_matrix.ddp_run``)."""

    from lightning_losses.distributed import rank

    r = rank()
    with lightning_env():
        callbacks = [ll.WeightPerturbation("bsam", rho=0.01, sync_ascent=True)]
        snaps = _Snapshots(callbacks)
        model = _Net(chunk=M.DDP_CHUNK)
        model.bsam = True
        loader = DataLoader(M.MatrixData(order=M.rank_order(r, M.DDP_CHUNK)), batch_size=M.DDP_CHUNK, shuffle=False)
        torch.manual_seed(0)
        trainer = M.trainer_for([*callbacks, snaps], k, strategy="ddp", devices=2, use_distributed_sampler=False)
        trainer.fit(model, loader)
        return tuple(snaps.steps)


@pytest.mark.ddp
def test_bsam_sync_ascent_under_ddp_with_accumulation_equals_one_process(ddp):
    """With ``sync_ascent=True`` every rank draws the same noise (same seed), so 2 ranks x k=2 micro-batches of 4
    rows equal one process on batches of 16 (the noisy gradient of all micro-batches averaged over the ranks)."""
    rank0, rank1 = ddp.run(_bsam_ddp_run, 2)
    assert len(rank0) == len(rank1) == 2
    assert first_difference(rank0, rank1, 0.0, WEIGHTS) is None, "ranks disagree"
    model = _Net(chunk=M.DDP_CHUNK)
    model.bsam = True
    snaps = _Snapshots([cb := ll.WeightPerturbation("bsam", rho=0.01)])
    torch.manual_seed(0)
    loader = DataLoader(M.MatrixData(), batch_size=4 * M.DDP_CHUNK, shuffle=False)
    M.trainer_for([cb, snaps], 1).fit(model, loader)
    assert (problem := first_difference(rank0, snaps.steps, 1e-10, WEIGHTS)) is None, problem
