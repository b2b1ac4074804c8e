"""Per-step overhead of sample reweighting (with its global gathers) vs none, as a ratio.

One training step = MLP forward on a batch, objective (cross entropy, global weight normalisation), backward,
AdamW step. Configurations are interleaved in rounds (each round runs every configuration for ``--steps`` steps)
and the median per-step time over rounds is reported, with the ratio to the plain objective. With
``--world-size 2`` the same runs in a 2-process gloo group (CPU), so the reweighter's collectives are included.

``jtt`` runs its identification stage (epoch 0: index and error gathered every step); ``class_balanced`` counts
classes by index. The per-sample store is measured three ways in the same run: ``per_sample_ema/before`` (the
store as first merged: index ``min`` / ``max`` read on the host in every store call, ``torch.unique`` and
boolean-mask writes), ``per_sample_ema/grow`` (no ``num_samples``: one host read per step) and ``per_sample_ema``
(sized with ``num_samples``: no host sync).

Usage::

    PYTHONPATH=$PWD python bench/reweighting.py [--batch 256] [--world-size 1|2] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import lightning_losses as ll
from lightning_losses.objective import Objective
from lightning_losses.reweighting.store import PerSampleStore

CONFIGS = {
    "none": None,
    "loss_softmax": {},
    "lin_upper": {},
    "cvar": {"alpha": 0.2},
    "group_dro": {"num_groups": 4},
    "class_balanced": {"num_classes": 10, "num_samples": 100_000},
    "ema_class_loss": {"num_classes": 10},
    "jtt": {"upweight": 4.0, "stage_epochs": 1, "num_samples": 100_000},
    "per_sample_ema": {"num_samples": 100_000, "temperature": 1.0},
    "per_sample_ema/grow": {"temperature": 1.0},
    "per_sample_ema/before": {"num_samples": 100_000, "temperature": 1.0},
}


class _StoreBefore(PerSampleStore):
    """The store's hot path as first merged (commit 31b752b), for the before / after comparison."""

    def _check(self, index):
        if index.numel() == 0:
            return
        lo, hi = int(index.min()), int(index.max())  # host sync in every call (fresh, seen, read, write)
        if lo < 0:
            raise ValueError(f"`index` values must be >= 0, got {lo}")
        self.reserve(hi + 1)

    def fresh(self, index, epoch, valid=None):
        self._check(index)
        _, inverse = torch.unique(index, return_inverse=True)
        positions = torch.arange(index.numel(), device=index.device)
        first = torch.full((int(inverse.max()) + 1,), index.numel(), dtype=positions.dtype, device=index.device)
        first.scatter_reduce_(0, inverse, positions, reduce="amin")
        mask = first[inverse] == positions
        if valid is not None:
            mask &= valid
        if self.once_per_epoch:
            mask &= self.stamp[index] != torch.as_tensor(epoch, device=index.device).to(torch.int32)
        return mask

    def write(self, index, mask, epoch, **values):
        self._check(index)
        rows = index[mask]
        for name, value in values.items():
            self.tables[name][rows] = value[mask].to(self.tables[name].dtype)
        self.stamp[rows] = torch.as_tensor(epoch, device=rows.device).to(torch.int32)


def _build(name, kwargs):
    if kwargs is None:
        return None
    reweighter = ll.build_reweighter(name.split("/")[0], **kwargs)
    if name.endswith("/before"):
        reweighter.store = reweighter._stores["store"] = _StoreBefore({"ema": (torch.float32, 0.0)}, 100_000)
    return reweighter


def _bench(args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, args.hidden), torch.nn.ReLU(), torch.nn.Linear(args.hidden, args.hidden),
        torch.nn.ReLU(), torch.nn.Linear(args.hidden, 10),
    ).to(device)  # fmt: skip
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    objective = Objective({"cross_entropy": {}})
    reweighters = {n: _build(n, kw) for n, kw in CONFIGS.items()}
    x = torch.randn(args.batch, 64, device=device)
    target = torch.randint(0, 10, (args.batch,), device=device)
    group = torch.randint(0, 4, (args.batch,), device=device)
    times: dict[str, list[float]] = {n: [] for n in CONFIGS}
    step = 0
    for r in range(args.rounds + 1):  # round 0 is warm-up
        for name, rw in reweighters.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(args.steps):
                index = (torch.arange(args.batch, device=device) + step * args.batch) % 100_000
                step += 1
                logits = model(x)
                tensors = {"logits": logits, "target": target, "group": group, "index": index}
                out = objective(tensors, reweighter=rw)
                opt.zero_grad(set_to_none=True)
                out.loss.backward()
                opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if r:
                times[name].append((time.perf_counter() - start) / args.steps)
    return {n: statistics.median(t) for n, t in times.items()}


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, queue) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    result = _bench(args)
    if rank == 0:
        queue.put(result)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--world-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.world_size == 1:
        result = _bench(args)
    else:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        procs = [
            ctx.Process(target=_worker, args=(r, args.world_size, port, args, queue)) for r in range(args.world_size)
        ]
        for p in procs:
            p.start()
        result = queue.get()
        for p in procs:
            p.join()
    base = result["none"]
    print(f"\nbatch {args.batch}/rank, world size {args.world_size}, device {args.device}, torch {torch.__version__}")
    print("| reweighter | ms / step | ratio vs none |")
    print("|---|---|---|")
    for name, t in result.items():
        print(f"| {name} | {1000 * t:.3f} | {t / base:.3f} |")


if __name__ == "__main__":
    main()
