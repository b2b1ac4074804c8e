"""Two "nodes" of one process each (two ``torchrun --nnodes 2`` launchers on localhost, Lightning's
``TorchElasticEnvironment``, ``Trainer(num_nodes=2, devices=1)``) equal one node of two processes (the session's
pool): the objective's global normalisation, a reweighter and SAM, under DDP and under FSDP2.

Slow: the launchers start two fresh Python processes (~30 s on 2 idle cores)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from . import multinode_fit

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

ROOT = Path(__file__).resolve().parents[2]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path, nnodes: int, nproc: int) -> None:
    """Launch ``nnodes`` torchrun agents (one per "node") of ``nproc`` processes each, wait for all of them."""
    port = _port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                f"--nnodes={nnodes}",
                f"--nproc-per-node={nproc}",
                f"--node-rank={node}",
                "--master-addr=127.0.0.1",
                f"--master-port={port}",
                "-m",
                "tests.sharded.multinode_fit",
                f"--num-nodes={nnodes}",
                f"--devices={nproc}",
                f"--out={out}",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for node in range(nnodes)
    ]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]


def test_two_nodes_equal_one_node_of_two_processes(ddp, tmp_path):
    _launch(tmp_path, nnodes=2, nproc=1)
    single = ddp.run(multinode_fit.one_node_in_pool)
    for strategy in ("ddp", "fsdp2"):
        for rank in (0, 1):
            nodes = torch.load(tmp_path / f"{strategy}-rank{rank}.pt", weights_only=False)
            one = single[rank][strategy]
            assert (nodes["node_rank"], nodes["world_size"], one["node_rank"]) == (rank, 2, 0)
            for k, v in one["weights"].items():
                assert torch.allclose(nodes["weights"][k], v, atol=1e-6), (strategy, rank, k)
                assert torch.allclose(nodes["weights"][k], single[0]["ddp"]["weights"][k], atol=1e-6)  # FSDP2 too
            torch.testing.assert_close(nodes["reweighter"], one["reweighter"], atol=1e-6, rtol=0)
