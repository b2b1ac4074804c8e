"""Crash and resume under FSDP2: a fit checkpointed after its first epoch (distributed or full checkpoint) and
resumed in fresh objects equals the uninterrupted fit, weights and the library callbacks' state (reweighter store,
SAM's randomised-step counters, entropy controller and logging window, SAF's tables) on every rank."""

from __future__ import annotations

import pytest

from . import _resume

pytestmark = pytest.mark.ddp


@pytest.mark.parametrize("distributed_checkpoint", [True, False], ids=["distributed", "full"])
@pytest.mark.parametrize("case", list(_resume.CASES))
def test_resume_under_fsdp2_equals_uninterrupted(ddp, tmp_path, case, distributed_checkpoint):
    for result in ddp.run(_resume.resume, str(tmp_path), case, distributed_checkpoint):
        assert result["weights"] < 1e-6 and result["moved"] > 1e-3, result
        assert result["state"] == [], result  # every rank resumes the state it would have had
