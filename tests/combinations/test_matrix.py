"""Issue 14: every combination exact, every fault clean.

Perturbation {none, sam, asam, adversarial_model_perturbation, awp, saf, sam every 2nd step} x reweighter {none,
loss_softmax, group_dro, per_sample_ema, jtt} x ``accumulate_grad_batches`` {1, 2} x EntropyControl {off, on} on a
float64 model with a tied weight and BatchNorm (see ``_matrix.py``), 2 epochs of 16 samples in batches of 8 (k=2:
one accumulated step per epoch). Invariants:

* radius 0 (``rho`` / ``epsilon`` / ``gamma`` = 0, SAF's coefficient 0) equals the unperturbed run **bitwise**
  after every optimizer step: weights (both names of the tied weight), BatchNorm buffers, optimizer, reweighter and
  entropy-controller state (also with a short last micro-batch, SAM only: the mechanism is the presets' common one);
* accumulation: ``k = 2`` micro-batches of 8 equal one batch of 16 where the library claims it (weights uniform
  within the step: every perturbation (the callback re-evaluates all micro-batches at ``w + delta``), SAF, the
  entropy bonus, ``jtt`` in its identification epoch; and for every strategy, the reweighter / controller state
  after the first step ("K micro-batches of B reach the state of one batch of K*B"));
* a batch with NaN losses for some samples, on which ``training_step`` returns ``None``, leaves every state
  (weights, optimizer, reweighter, controller, entropy window, perturbation counters, SAF table) exactly as in a run
  whose ``training_step`` returns ``None`` on that batch without computing the loss;
* 2-process DDP equals one process on the concatenated batch (a representative subset, ``sync_ascent=True``);
* a checkpoint written during the perturbed pass holds the unperturbed weights (tied names included) and BatchNorm
  statistics.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from . import _matrix as M

STATE = ("model/", "opt/", "rew/", "ent/")  # what a perturbation at radius 0 must leave as without it
EVERYTHING = (*STATE, "pert/", "saf/")
PERTURBED = tuple(p for p in M.PERTURBATIONS if p != "none")
ENT_IDS = {False: "ent_off", True: "ent_on"}

# Lightning warns about the skipped (None) steps and the tiny data set, 500 times
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _cells(perts, ks=(1, 2)):
    return [
        pytest.param(p, r, k, e, id=f"{p}-{r}-k{k}-{ENT_IDS[e]}")
        for p, r, k, e in itertools.product(perts, M.REWEIGHTERS, ks, (False, True))
    ]


def _first_difference(runs_a, runs_b, tol, prefixes, steps=None):
    """``None``, or a message naming the first optimizer step (1-based) where the runs differ and the keys."""
    if len(runs_a) != len(runs_b):
        return f"{len(runs_a)} vs {len(runs_b)} optimizer steps"
    for s, (a, b) in enumerate(zip(runs_a, runs_b), start=1):
        if steps is not None and s not in steps:
            continue
        bad = M.differences(a, b, tol, prefixes)
        if bad:
            return f"step {s}: " + ", ".join(bad)
    return None


# ---------------------------------------------------------------- radius 0


@pytest.mark.parametrize(("pert", "rew", "k", "ent"), _cells(PERTURBED))
def test_radius_zero_equals_unperturbed_bitwise(pert, rew, k, ent):
    zero = M.run(pert, True, rew, k, M.CHUNK, ent)
    base = M.run("none", False, rew, k, M.CHUNK, ent)
    assert len(base) == M.EPOCHS * (M.N // M.CHUNK) // k
    problem = _first_difference(zero, base, 0.0, STATE)
    assert problem is None, f"{pert}(radius 0) + {rew} + k={k} + {ENT_IDS[ent]} differs from no perturbation: {problem}"


@pytest.mark.parametrize(("pert", "rew", "k", "ent"), _cells(("sam",), ks=(2,)))
def test_radius_zero_equals_unperturbed_with_a_short_last_micro_batch(pert, rew, k, ent):
    """12 samples: the accumulated step has micro-batches of 8 and 4 rows."""
    zero = M.run(pert, True, rew, k, M.CHUNK, ent, data="ragged")
    base = M.run("none", False, rew, k, M.CHUNK, ent, data="ragged")
    problem = _first_difference(zero, base, 0.0, STATE)
    assert problem is None, f"{pert}(radius 0) + {rew} + k={k} + {ENT_IDS[ent]}, ragged data: {problem}"


# ---------------------------------------------------------------- accumulation


def _accumulation_claim(rew):
    """(steps whose whole state is claimed, steps whose reweighter / controller / BatchNorm state is claimed)."""
    every = set(range(1, M.EPOCHS * M.N // (2 * M.CHUNK) + 1))
    if rew == "none":  # uniform weights: the step's gradient is the mean over its samples either way
        return every, every
    if rew == "jtt":  # weights 1 in the identification epoch (epoch 0), error-set weights after
        epoch0 = set(range(1, M.N // (2 * M.CHUNK) + 1))
        return epoch0, epoch0
    # loss_softmax / per_sample_ema: weights normalised per micro-batch; group_dro: micro-batch m weighted with the
    # state of micro-batches 1..m (documented): the parameters differ, the state after the first step must not
    return set(), {1}


@pytest.mark.parametrize(("pert", "rew", "k", "ent"), _cells(M.PERTURBATIONS, ks=(2,)))
def test_accumulation_equals_one_large_batch(pert, rew, k, ent):
    micro = M.run(pert, False, rew, k, M.CHUNK, ent)
    large = M.run(pert, False, rew, 1, k * M.CHUNK, ent)
    # the controller accumulates entropies in float32: with it, beta (and the weights after it) agree to float32
    tol = 1e-6 if ent else 1e-10
    full, state = _accumulation_claim(rew)
    problem = _first_difference(micro, large, tol, EVERYTHING, full)
    if problem is None:
        problem = _first_difference(micro, large, tol, ("rew/", "ent/", "pert/", "saf/", "model/bn.running"), state)
    assert problem is None, f"{pert} + {rew} + {ENT_IDS[ent]}: k=2 x {M.CHUNK} != 1 x {2 * M.CHUNK}: {problem}"
    if pert != "none":  # the perturbation really acts (so the checks above cannot pass by accident)
        plain = M.run("none", False, rew, k, M.CHUNK, ent)
        assert M.differences(micro[-1], plain[-1], 1e-6, ("model/",)), f"{pert} changed nothing"


#: logged statistics over the samples since the last log (not of the last micro-batch alone)
INTERVAL_LOGS = ("log/reweight/group_", "log/reweight/worst_group_acc", "log/reweight/nonfinite", "log/entropy/")
INTERVAL_LOGS += ("log/objective/",)


@pytest.mark.parametrize(
    ("pert", "rew", "ent"),
    [
        ("sam", "group_dro", True),
        ("none", "loss_softmax", False),
        ("saf", "jtt", False),
        ("asam", "per_sample_ema", True),
    ],
)
def test_accumulation_logs_the_interval_statistics_of_one_large_batch(pert, rew, ent):
    """On the first step (the same weights in both runs) the statistics over the step's samples (per-group accuracy
    and loss, the entropy window, the non-finite counts) equal one large batch's: none is logged from a micro-batch
    that did not step (a row at step 0 with half the samples, and the step's row with the other half, before)."""
    micro = M.run(pert, False, rew, 2, M.CHUNK, ent, log=True)
    large = M.run(pert, False, rew, 1, 2 * M.CHUNK, ent, log=True)
    assert any(key.startswith("log/reweight/group_acc/") for key in micro[0])
    problem = _first_difference(micro, large, 1e-6, INTERVAL_LOGS, steps={1})
    assert problem is None, f"{pert} + {rew} + {ENT_IDS[ent]}: k=2 x {M.CHUNK} != 1 x {2 * M.CHUNK}: {problem}"


# ---------------------------------------------------------------- a NaN batch / a skipped step


def _nan_cells():
    last = [pytest.param(*c.values, "nan", id=c.id) for c in _cells(M.PERTURBATIONS)]
    # the NaN micro-batch re-run by the callbacks: the presets share that path, one of each mechanism suffices
    mechanisms = ("none", "sam", "sam_every_2", "saf")
    first = [pytest.param(*c.values, "nan_first", id=f"{c.id}-first") for c in _cells(mechanisms, ks=(2,))]
    return last + first


@pytest.mark.parametrize(("pert", "rew", "k", "ent", "data"), _nan_cells())
def test_nan_batch_skipped_by_training_step_leaves_all_state(pert, rew, k, ent, data):
    """``data="nan"``: the NaN samples are in the second batch (k=2: the last micro-batch of the step),
    ``"nan_first"``: in the first (k=2: the first micro-batch, re-run by the perturbation callbacks)."""
    nan = M.run(pert, False, rew, k, M.CHUNK, ent, data=data)
    skip = M.run(pert, False, rew, k, M.CHUNK, ent, data=data.replace("nan", "skip"))
    problem = _first_difference(nan, skip, 0.0, EVERYTHING)
    assert problem is None, f"{pert} + {rew} + k={k} + {ENT_IDS[ent]}: the NaN batch left a trace: {problem}"
    for key, value in nan[-1].items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), f"{key} is not finite after the run"


#: what a NaN batch logs by design: the objective's counts of its NaN samples, and the values the skipped batch's
#: `compute_loss` logged before `training_step` returned None (Lightning keeps them)
NAN_LOGGED = ("log/objective/nonfinite", "log/train/")


@pytest.mark.parametrize(
    ("pert", "rew", "k", "ent"),
    [
        ("sam", "group_dro", 1, True),
        ("sam", "group_dro", 2, True),
        ("saf", "jtt", 2, False),
        ("asam", "loss_softmax", 1, False),
    ],
)
def test_nan_batch_leaves_no_trace_in_the_logged_statistics(pert, rew, k, ent):
    """Logged every step: the weight and group statistics, the entropy window and the perturbation's statistics of a
    run with a NaN batch (skipped after ``compute_loss``) equal those of the run that skips it before."""
    nan = M.run(pert, False, rew, k, M.CHUNK, ent, data="nan", log=True)
    skip = M.run(pert, False, rew, k, M.CHUNK, ent, data="skip", log=True)
    counted = [s.get("log/objective/nonfinite") for s in nan]
    assert any(c is not None and float(c) > 0 for c in counted)  # the NaN samples were seen (and counted)
    strip = [{key: v for key, v in s.items() if not key.startswith(NAN_LOGGED)} for s in nan]
    kept = [{key: v for key, v in s.items() if not key.startswith(NAN_LOGGED)} for s in skip]
    problem = _first_difference(strip, kept, 0.0, ("log/",))
    assert problem is None, f"{pert} + {rew} + k={k} + {ENT_IDS[ent]}: the NaN batch shows in the logs: {problem}"


# ---------------------------------------------------------------- DDP


DDP_CELLS = [
    pytest.param("sam", "group_dro", 2, True, id="sam-group_dro-k2-ent_on"),
    pytest.param("asam", "loss_softmax", 1, False, id="asam-loss_softmax-k1-ent_off"),
    pytest.param("none", "jtt", 1, False, id="none-jtt-k1-ent_off"),
    pytest.param("saf", "per_sample_ema", 2, True, id="saf-per_sample_ema-k2-ent_on"),
    pytest.param("gsam", "group_dro", 2, True, id="gsam-group_dro-k2-ent_on"),
    pytest.param("wsam", "loss_softmax", 2, False, id="wsam-loss_softmax-k2-ent_off"),
    pytest.param("gam", "group_dro", 2, True, id="gam-group_dro-k2-ent_on"),
    pytest.param("fad", "per_sample_ema", 1, False, id="fad-per_sample_ema-k1-ent_off"),
]
# DDP broadcasts rank 0's buffers: BatchNorm running statistics are per rank (no SyncBatchNorm). The entropy window
# is a local sum, but its state dict holds it summed over the ranks (a checkpoint is written from rank 0): compared
# with the one-process window like the rest of the state
LOCAL = ("model/bn.running_mean", "model/bn.running_var", "model/bn.num_batches_tracked")


def _split_local(steps):
    return [{k: v for k, v in s.items() if not k.startswith(LOCAL)} for s in steps]


@pytest.mark.ddp
@pytest.mark.parametrize(("pert", "rew", "k", "ent"), DDP_CELLS)
def test_ddp_equals_one_process_on_concatenated_batch(ddp, pert, rew, k, ent):
    """Every state and every logged step statistic (``log/``: weight statistics, group accuracy, entropy, the
    perturbation's norms, cosine and sharpness, the objective's counts, ``train/*``), at every step."""
    rank0, rank1 = (_split_local(r) for r in ddp.run(M.ddp_run, pert, rew, k, ent, True))
    assert _first_difference(rank0, rank1, 0.0, (*EVERYTHING, "log/")) is None, "ranks disagree"
    one = _split_local(M.run(pert, False, rew, k, 2 * M.DDP_CHUNK, ent, chunk=M.DDP_CHUNK, log=True))
    assert any(key.startswith("log/reweight/") for key in one[-1]) == (rew != "none")  # the statistics are there
    tol = 1e-6 if ent else 1e-10
    problem = _first_difference(rank0, one, tol, EVERYTHING) or _first_difference(rank0, one, 1e-6, ("log/",))
    assert problem is None, f"DDP {pert} + {rew} + k={k} + {ENT_IDS[ent]} != one process: {problem}"


# ---------------------------------------------------------------- a checkpoint written in the perturbed pass


class _Expected(M.L.Callback):
    """The weights at the start of each step; the BatchNorm buffers at its end (as the first pass left them)."""

    def __init__(self):
        self.params, self.buffers = [], []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.params.append({k: v.clone() for k, v in pl_module.named_parameters(remove_duplicate=False)})

    def on_train_batch_end(self, trainer, pl_module, *args):
        self.buffers.append({k: v.clone() for k, v in pl_module.named_buffers()})


@pytest.mark.parametrize("pert", ["sam", "asam", "adversarial_model_perturbation", "awp"])
def test_checkpoint_written_in_perturbed_pass_is_unperturbed(pert):
    model, expected = M.MatrixNet(), _Expected()
    model.dump_in_perturbed_pass = True
    cb = M.perturbation(pert, zero=False)
    trainer = M.trainer_for([cb, expected], 1, max_epochs=1, max_steps=2)
    trainer.fit(model, M.DataLoader(M.MatrixData(), batch_size=M.CHUNK))
    assert len(model.dumped) == 2
    for s, state in enumerate(model.dumped):
        want = {**expected.params[s], **expected.buffers[s]}
        assert "mix2.weight" in want and "bn.running_mean" in want
        bad = M.differences({k: state[k] for k in want}, want, 0.0)
        assert not bad, f"step {s + 1}: checkpoint written at w + delta holds perturbed {bad}"


# ---------------------------------------------------------------- the peer presets (issue 18) in the same cells


@pytest.mark.parametrize(("pert", "rew", "k", "ent"), _cells(M.PEER_PERTURBATIONS, ks=(2,)))
def test_peer_presets_radius_zero_accumulation_and_nan_batch(pert, rew, k, ent):
    """gsam / wsam / friendly_sam / gam / fad with a reweighter, accumulation k=2, entropy control: radius 0 equals no
    perturbation (bitwise; GSAM and GAM to rounding), k=2 equals one batch of 2x (as the presets above), a NaN
    micro-batch leaves no trace."""
    zero = M.run(pert, True, rew, k, M.CHUNK, ent)
    base = M.run("none", False, rew, k, M.CHUNK, ent)
    # GSAM's orthogonal part g - (<g, g_p> / |g_p|^2) g_p at g_p = g is 0 up to rounding (1e-14), not bitwise; so
    # are GAM's alpha g + (1 - alpha) g and its orthogonal part
    problem = _first_difference(zero, base, 1e-12 if pert in ("gsam", "gam") else 0.0, STATE)
    assert problem is None, f"{pert}(radius 0) + {rew} + {ENT_IDS[ent]}: {problem}"
    micro = M.run(pert, False, rew, k, M.CHUNK, ent)
    large = M.run(pert, False, rew, 1, k * M.CHUNK, ent)
    full, state = _accumulation_claim(rew)
    tol = 1e-6 if ent else 1e-10
    problem = _first_difference(micro, large, tol, EVERYTHING, full)
    assert problem is None, f"{pert} + {rew} + {ENT_IDS[ent]}: k=2 x {M.CHUNK} != 1 x {2 * M.CHUNK}: {problem}"
    nan = M.run(pert, False, rew, k, M.CHUNK, ent, data="nan_first")
    skip = M.run(pert, False, rew, k, M.CHUNK, ent, data="skip_first")
    problem = _first_difference(nan, skip, 0.0, EVERYTHING)
    assert problem is None, f"{pert} + {rew} + {ENT_IDS[ent]}: the NaN micro-batch left a trace: {problem}"
