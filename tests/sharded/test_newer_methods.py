"""The newer methods under FSDP2 (``ModelParallelStrategy``, ``fully_shard``, 2 CPU processes over gloo) against DDP
on the same data: STORM and per-class normalised reweighting, the SOVR and MAT losses, ⊥Grad (alone and after SAM)
and UDIM; Entropy-SGD and the curvature monitor, which need whole parameters, are refused at setup. All fits run in
the session's one 2-process group (``ddp`` fixture). Tolerance as in ``test_fsdp2.py``."""

from __future__ import annotations

import pytest

from . import _newer

ATOL = 1e-6

pytestmark = pytest.mark.ddp


def test_newer_methods_under_fsdp2_equal_ddp(ddp, tmp_path):
    results = ddp.run(_newer.compare, str(tmp_path))
    assert results[0] == results[1]
    assert set(results[0]) == {"storm", "per_class_normalized", "sovr", "mat", "perp_grad", "perp_grad_sam", "udim"}
    for name, (diff, moved) in results[0].items():
        assert diff < ATOL, (name, diff)
        assert moved > 1e-5, (name, moved)  # the method changed the run: the comparison is not vacuous


def test_callbacks_needing_whole_parameters_are_refused_at_setup_under_fsdp2(ddp):
    """Lightning calls the callbacks' ``setup`` before ``configure_model`` shards the parameters: the refusal goes by
    the strategy (it used to crash inside the first step on a ``DTensor``)."""
    for errors in ddp.run(_newer.refusals):
        for name, message in errors.items():
            assert message.startswith(
                f"ConfigurationError: {name} does not support the `ModelParallelStrategy` strategy (FSDP2 / tensor "
                "parallelism: every rank holds only shards of the parameters): "
            ), message
            assert message.endswith(
                "supported: one device (`SingleDeviceStrategy`) and DDP (`DDPStrategy`: `ddp`, `ddp_spawn`, "
                "`ddp_fork`, ...)"
            ), message


@pytest.mark.parametrize("distributed_checkpoint, num_samples", [(True, 32), (False, 32), (False, None)])
def test_mat_table_resumes_from_fsdp2_checkpoint(ddp, tmp_path, distributed_checkpoint, num_samples):
    """MAT's held-out table (module extra state) is restored from distributed and full FSDP2 checkpoints (a full one's
    loading in Lightning drops extra state: it used to resume with an empty table, silently)."""
    args = (str(tmp_path), distributed_checkpoint, num_samples)
    for result in ddp.run(_newer.mat_table_through_checkpoint, *args):
        assert result == {"seen": 32, "diff": 0.0}, result


def test_useful_under_fsdp2_equals_ddp(ddp):
    """USEFUL's split (recorded outputs all-gathered, rank 0's decision broadcast) and the upsampled epoch after it."""
    for diff, same_split, upsampled in ddp.run(_newer.useful_compare):
        assert diff < ATOL and same_split and upsampled > 0, (diff, same_split, upsampled)
