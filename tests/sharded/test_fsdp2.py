"""FSDP2 (Lightning's ``ModelParallelStrategy``, ``fully_shard`` on a 1-D data-parallel mesh) against DDP on the
same data, two CPU processes over gloo: every perturbation preset, LookSAM, a tied weight, reweighting with the
objective's normalisation. All fits run in the session's one 2-process group (``ddp`` fixture).

Tolerance: float32 weights after 3 SGD-momentum steps agree to ``ATOL = 1e-6`` (measured: a few 1e-8; the norms
of sharded tensors are sums of per-shard squares, DDP's are taken whole, so bit-equality is not expected).
"""

from __future__ import annotations

import time

import pytest
import torch

import lightning_losses as ll
from tests.helpers.trainers import LoggedMetrics

from . import _fsdp2

ATOL = 1e-6

pytestmark = pytest.mark.ddp

_SYNC = {"sync_ascent": True}
#: name -> (callbacks, fit arguments)
CASES = {
    "sam": (lambda: [ll.SAM(rho=0.5, **_SYNC)], {}),
    "asam_authors": (lambda: [ll.ASAM(rho=1.0, **_SYNC)], {}),
    "asam_p2": (lambda: [ll.ASAM(rho=1.0, variant="p2", **_SYNC)], {}),
    "adversarial_model_perturbation": (
        lambda: [ll.AdversarialModelPerturbation(epsilon=0.3, inner_steps=2, **_SYNC)],
        {},
    ),
    "awp": (lambda: [ll.AWP(gamma=0.2, **_SYNC)], {}),
    "gsam": (lambda: [ll.WeightPerturbation("gsam", rho=0.5, alpha=0.4, **_SYNC)], {}),
    "wsam": (lambda: [ll.WeightPerturbation("wsam", rho=0.5, gamma=0.8, **_SYNC)], {}),
    "friendly_sam": (lambda: [ll.WeightPerturbation("friendly_sam", rho=0.5, lmbda=0.6, **_SYNC)], {}),
    "esam": (lambda: [ll.WeightPerturbation("esam", rho=0.5, beta=0.5, **_SYNC)], {}),
    "sam_every_2": (lambda: [ll.SAM(rho=0.5, every_n_steps=2, **_SYNC)], {}),
    "looksam": (lambda: [ll.SAM(rho=0.5, every_n_steps=2, reuse_alpha=0.7, **_SYNC)], {}),
    "randomised": (lambda: [ll.SAM(rho=0.5, probability=0.5, seed=3, **_SYNC)], {"steps": 6}),
    "sam_clip_norm": (lambda: [ll.SAM(rho=0.5, **_SYNC)], {"trainer_kw": {"gradient_clip_val": 0.05}}),
    "sam_clip_value": (
        lambda: [ll.SAM(rho=0.5, **_SYNC)],
        {"trainer_kw": {"gradient_clip_val": 0.01, "gradient_clip_algorithm": "value"}},
    ),
    "saf": (lambda: [ll.SAF(epochs_ago=1, start_epoch=1, coefficient=1.0)], {"steps": 12, "indexed": True}),
    "reweighting": (lambda: [ll.SampleReweighting("loss_softmax")], {"indexed": True}),
    "reweighting_sam": (lambda: [ll.SampleReweighting("loss_softmax"), ll.SAM(rho=0.5, **_SYNC)], {"indexed": True}),
    "per_sample_ema_sam_entropy_k2": (  # combined: reweighting state + perturbation replay + controller, accumulating
        lambda: [
            ll.SampleReweighting("per_sample_ema"),
            ll.SAM(rho=0.5, **_SYNC),
            ll.EntropyControl(target=0.5, lr=0.1),
        ],
        {"indexed": True, "steps": 3, "trainer_kw": {"accumulate_grad_batches": 2}},
    ),
    "gam": (lambda: [ll.GAM(rho=0.5, norm_rho=0.5, gamma=0.3, **_SYNC)], {}),
    "fad": (lambda: [ll.FAD(rho=0.5, alpha=0.8, beta=0.7, **_SYNC)], {}),
}


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def _compare(names: list[str], tied: bool = False) -> dict[str, tuple[float, float, float]]:
    """``name -> (|fsdp2 - ddp|, |ddp - plain ddp|, seconds)`` for each case; ``"looksam_vs_every_2"``: how far
    LookSAM's FSDP2 run is from the same schedule without its extrapolated steps."""
    plain: dict[str, dict] = {}
    out, sharded_runs = {}, {}
    for name in names:
        callbacks, kwargs = CASES[name]
        key = repr(sorted(kwargs.items()))
        if key not in plain:
            plain[key] = _fsdp2.fit("ddp", [], tied=tied, **kwargs)
        start = time.perf_counter()
        sharded = sharded_runs[name] = _fsdp2.fit("fsdp2", callbacks(), tied=tied, **kwargs)
        replicated = _fsdp2.fit("ddp", callbacks(), tied=tied, **kwargs)
        out[name] = (_max_diff(sharded, replicated), _max_diff(replicated, plain[key]), time.perf_counter() - start)
    if "looksam" in sharded_runs and "sam_every_2" in sharded_runs:
        out["looksam_vs_every_2"] = _max_diff(sharded_runs["looksam"], sharded_runs["sam_every_2"])
    return out


def test_every_preset_under_fsdp2_equals_ddp(ddp):
    results = ddp.run(_compare, list(CASES))[0]
    assert results.pop("looksam_vs_every_2") > 1e-4  # LookSAM's extrapolated step ran on the shards
    for name, (diff, moved, _) in results.items():
        assert diff < ATOL, (name, diff)
        assert moved > 1e-4, (name, moved)  # the mechanism changed the run: the comparison is not vacuous


def test_tied_weight_under_fsdp2_equals_ddp(ddp):
    """A weight shared by two layers (one FSDP2 unit at the root: ``fully_shard`` cannot split a tied weight over
    two units) is perturbed once, as under DDP."""
    for name, (diff, moved, _) in ddp.run(_compare, ["sam", "awp"], True)[0].items():
        assert diff < ATOL and moved > 1e-4, (name, diff, moved)


@pytest.mark.parametrize("distributed_checkpoint", [True, False])
def test_checkpoint_written_mid_step_has_original_weights(ddp, tmp_path, distributed_checkpoint):
    """A checkpoint written inside a perturbed step holds the unperturbed weights: the original shards as DTensors
    in a distributed checkpoint, the gathered originals in a full one (rank 0 holds its state dict)."""
    before, saved = ddp.run(_fsdp2.mid_step_checkpoint, str(tmp_path), distributed_checkpoint)[0]
    assert set(saved) == set(before)
    for k, v in before.items():
        assert torch.equal(saved[k], v), k


def _manual_fsdp2(sync_ascent):
    """The manual helper on a ``fully_shard``-ed model (no Lightning): weights restored exactly after the step."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from lightning_losses.perturbation import build_perturbation, perturbed_backward

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    fully_shard(model, mesh=init_device_mesh("cpu", (2,)))
    before = _fsdp2.full_weights(model)
    sam = build_perturbation("sam", rho=0.5, sync_ascent=sync_ascent)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(dist_rank()))
    try:
        perturbed_backward(sam, model, lambda: model(x).square().mean())
    except Exception as err:  # noqa: BLE001 - returned to the test
        return repr(err)
    after = _fsdp2.full_weights(model)
    return all(torch.equal(before[k], after[k]) for k in before), sam.perturbed_steps


def dist_rank() -> int:
    import torch.distributed as dist

    return dist.get_rank()


def test_manual_helper_on_fsdp2_shards(ddp):
    assert ddp.run(_manual_fsdp2, True) == [(True, 1), (True, 1)]
    for message in ddp.run(_manual_fsdp2, False):
        assert "ConfigurationError" in message and "need `sync_ascent=True`, got sync_ascent=False" in message


def _step_statistics() -> dict[str, dict[str, float]]:
    """The last step's perturbation statistics (collected every step) under FSDP2 and DDP."""
    out = {}
    for strategy in ("fsdp2", "ddp"):
        sam = ll.SAM(rho=0.5, **_SYNC)
        _fsdp2.fit(strategy, [sam], trainer_kw={"log_every_n_steps": 1})
        out[strategy] = {k: float(v) for k, v in sam.engine.last_stats.items()}
    return out


def test_step_statistics_under_fsdp2_equal_ddp(ddp):
    """Norms and the cosine between the perturbation and the gradient at w + e are over the full tensors, not the
    local shards."""
    for stats in ddp.run(_step_statistics):
        assert {"norm", "grad_norm", "cos_delta_grad"} <= set(stats["fsdp2"])
        for key in ("norm", "grad_norm", "grad_norm_perturbed", "cos_delta_grad"):
            assert abs(stats["fsdp2"][key] - stats["ddp"][key]) < 1e-5, (key, stats)


def test_sam_step_under_fsdp2_packs_its_norms(ddp):
    """One all-reduce for the ascent's norms; a logging step adds three: the perturbation's norm, the cosine's dot
    products with the perturbed gradient's squared norms (the cosine reuses the perturbation's norm) and the
    sharpness's mean over the ranks; not one per tensor or per sum."""
    assert ddp.run(_fsdp2.all_reduces_per_sam_step, False) == [1, 1]
    assert ddp.run(_fsdp2.all_reduces_per_sam_step, True) == [4, 4]


def _logged_rows(accumulate: int) -> dict[str, list[dict[str, float]]]:
    out = {}
    for strategy in ("fsdp2", "ddp"):
        rows = LoggedMetrics(exclude=("step_time", "time_ratio"))
        callbacks = [ll.SampleReweighting("loss_softmax"), ll.EntropyControl(beta=0.1), ll.SAM(rho=0.5, **_SYNC), rows]
        kw = {"log_every_n_steps": 1, "accumulate_grad_batches": accumulate}
        _fsdp2.fit(strategy, callbacks, steps=4, trainer_kw=kw)
        out[strategy] = list(rows.rows.values())
    return out


@pytest.mark.parametrize("accumulate", [1, 2])
def test_every_logged_statistic_under_fsdp2_equals_ddp(ddp, accumulate):
    """Reweighting, entropy, SAM and the objective together, logged every step: the weight statistics, the entropy
    window, the perturbation's norms, cosine and sharpness and the objective's counts are the same under FSDP2 as
    under DDP, on both ranks (the logging fast path and the packed collectives included), also with 2 micro-batches a
    step."""
    got = ddp.run(_logged_rows, accumulate)
    assert got[0] == got[1]  # every rank logs the same values
    fsdp2, plain = got[0]["fsdp2"], got[0]["ddp"]
    assert len(fsdp2) == len(plain) == 4
    keys = {"reweight/ess", "entropy/mean", "perturbation/cos_delta_grad", "perturbation/sharpness", "train/loss"}
    for a, b in zip(fsdp2, plain):
        assert keys <= a.keys() and a.keys() == b.keys()
        for key, value in b.items():
            assert a[key] == pytest.approx(value, rel=1e-5, abs=1e-6), key
