"""``examples/sharded_lm.py`` (FSDP2, linear cross entropy on a sharded head, SAM, reweighting) runs as documented
on two processes launched by Lightning. Slow: a fresh interpreter and its two workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

ROOT = Path(__file__).resolve().parents[2]


def test_sharded_lm_example_runs_on_two_processes():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "examples" / "sharded_lm.py"), "--devices", "2", "--max-steps", "2"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "`max_steps=2` reached" in done.stderr + done.stdout
