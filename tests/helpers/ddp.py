"""A persistent 2-process gloo group for DDP tests (one group per test session, many checks in it).

``pool.run(fn, *args)`` runs the module-level function ``fn(*args)`` on every rank inside an initialised default
process group and returns the per-rank results (rank order). An exception on any rank is re-raised here with the
remote traceback; a hang (e.g. one rank failed inside a collective) times out, and the group is rebuilt.
"""

from __future__ import annotations

import contextlib
import os
import queue
import socket
import traceback
from collections.abc import Iterator
from typing import Any

import torch.multiprocessing as mp

WORLD_SIZE = 2
TIMEOUT_S = float(os.environ.get("LL_DDP_TIMEOUT", "180"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, tasks: Any, results: Any) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args, kwargs = task
        try:
            results.put((rank, True, fn(*args, **kwargs)))
        except BaseException:  # noqa: BLE001 - report everything to the parent
            results.put((rank, False, traceback.format_exc()))
    dist.destroy_process_group()


class DDPPool:
    """Two spawned worker processes that stay in one gloo group."""

    def __init__(self, world_size: int = WORLD_SIZE) -> None:
        self.world_size = world_size
        self._procs: list[Any] = []
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        port = _free_port()
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(self.world_size)]
        self._procs = [
            ctx.Process(target=_worker, args=(r, self.world_size, port, self._tasks[r], self._results), daemon=True)
            for r in range(self.world_size)
        ]
        for p in self._procs:
            p.start()

    def run(self, fn: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if not all(p.is_alive() for p in self._procs):
            self.close()
            self._start()
        for q in self._tasks:
            q.put((fn, args, kwargs))
        out: dict[int, Any] = {}
        errors: list[str] = []
        try:
            while len(out) + len(errors) < self.world_size:
                rank, ok, value = self._results.get(timeout=TIMEOUT_S if not errors else 10)
                if ok:
                    out[rank] = value
                else:
                    errors.append(f"--- rank {rank} ---\n{value}")
        except queue.Empty:
            self.close()
            self._start()
            raise TimeoutError(f"DDP task {fn.__name__} timed out; errors so far:\n" + "\n".join(errors)) from None
        if errors:
            if len(out) + len(errors) < self.world_size:
                self.close()
                self._start()
            raise RuntimeError(f"DDP task {fn.__name__} failed:\n" + "\n".join(errors))
        return [out[r] for r in range(self.world_size)]

    def close(self) -> None:
        for q, p in zip(self._tasks, self._procs):
            if p.is_alive():
                try:
                    q.put(None)
                except (OSError, ValueError):
                    pass
        for p in self._procs:
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
        self._procs = []


@contextlib.contextmanager
def lightning_env() -> Iterator[None]:
    """Inside a worker of the pool: the environment a Lightning ``Trainer(strategy="ddp", devices=2)`` reads to join
    the already initialised group as this rank (the port is never used: no rendezvous happens)."""
    import torch.distributed as dist

    os.environ.update(
        LOCAL_RANK=str(dist.get_rank()), NODE_RANK="0", WORLD_SIZE=str(WORLD_SIZE), MASTER_ADDR="127.0.0.1"
    )
    os.environ.setdefault("MASTER_PORT", "29555")
    try:
        yield
    finally:
        for key in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE"):
            os.environ.pop(key, None)
