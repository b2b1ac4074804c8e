"""Step-time cost of SAM under FSDP2 against DDP on the same model, two CPU processes over gloo (or two GPUs with
``--device cuda``), plain PyTorch (no Lightning), timed with ``time.perf_counter`` between barriers.

Four configurations per rank, interleaved: a plain DDP step, a SAM step under DDP, a plain FSDP2 step
(``fully_shard`` on every linear layer and the root) and a SAM step under FSDP2 (the engine works on the local
shards; ``sync_ascent=True`` in both, the only choice under FSDP2). Each round runs ``--block`` consecutive steps of
every configuration, the order rotating, and drops the first step of a block. Reported: the median step time, the
median over rounds of SAM / plain within a strategy (the floor is 2x: two forward-backward passes), FSDP2 / DDP,
and the bytes of the engine's saved copy of the weights (read mid-step) against the full parameters.

Usage::

    OMP_NUM_THREADS=1 python bench/sharded.py [--rounds 6] [--block 6] [--width 512] [--batch 64] [--collect-stats]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

CONFIGS = ("ddp_plain", "ddp_sam", "fsdp2_plain", "fsdp2_sam")


def make_model(width: int, device: str) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)]
    return nn.Sequential(*layers).to(device)


def setups(args, device: str) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    from lightning_losses.perturbation import build_perturbation

    ddp = DistributedDataParallel(make_model(args.width, device))
    sharded = make_model(args.width, device)
    mesh = init_device_mesh(device.split(":")[0], (dist.get_world_size(),))
    for layer in sharded:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(sharded, mesh=mesh)
    out = {}
    for name, model, inner in (("ddp", ddp, ddp.module), ("fsdp2", sharded, sharded)):
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        sam = build_perturbation("sam", rho=0.05, sync_ascent=True)
        sam.collect_stats = args.collect_stats  # Lightning collects them on logging steps only (1 in 50 by default)
        out[name] = (model, inner, opt, sam)
    return out


def step(config: str, setup: dict, x: torch.Tensor, y: torch.Tensor, saved: list[int]) -> None:
    from lightning_losses.perturbation import perturbed_backward

    model, inner, opt, sam = setup[config.split("_")[0]]

    def loss_fn() -> torch.Tensor:
        if sam._saved is not None:  # the perturbed pass: the engine holds its copy of the weights
            saved.append(sum(t.numel() * t.element_size() for t in sam._saved))
        return nn.functional.cross_entropy(model(x), y)

    opt.zero_grad(set_to_none=True)
    if config.endswith("sam"):
        perturbed_backward(sam, inner, loss_fn)
    else:
        loss_fn().backward()
    opt.step()


def worker(rank: int, args, port: int, queue) -> None:
    torch.set_num_threads(1)
    backend = "nccl" if args.device == "cuda" else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    device = f"cuda:{rank}" if args.device == "cuda" else "cpu"
    setup = setups(args, device)
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(args.batch, 256, generator=g).to(device)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    times: dict[str, list[float]] = {c: [] for c in CONFIGS}
    ratios: dict[str, list[float]] = {"ddp": [], "fsdp2": [], "fsdp2_vs_ddp_sam": []}
    saved = {"ddp": [], "fsdp2": []}
    for c in CONFIGS:  # warm-up
        step(c, setup, x, y, saved[c.split("_")[0]])
    for r in range(args.rounds):
        order = CONFIGS[r % 4 :] + CONFIGS[: r % 4]
        per_round = {}
        for c in order:
            block = []
            for _ in range(args.block):
                dist.barrier()
                if args.device == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                step(c, setup, x, y, saved[c.split("_")[0]])
                if args.device == "cuda":
                    torch.cuda.synchronize()
                dist.barrier()
                block.append(time.perf_counter() - start)
            times[c] += block[1:]
            per_round[c] = statistics.median(block[1:])
        for s in ("ddp", "fsdp2"):
            ratios[s].append(per_round[f"{s}_sam"] / per_round[f"{s}_plain"])
        ratios["fsdp2_vs_ddp_sam"].append(per_round["fsdp2_sam"] / per_round["ddp_sam"])
    full = sum(p.numel() * p.element_size() for p in setup["ddp"][1].parameters())
    if rank == 0:
        queue.put((times, ratios, {k: max(v) for k, v in saved.items()}, full))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--block", type=int, default=6)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument(
        "--collect-stats", action="store_true", help="every step a logging step (statistics: 3 more all-reduces)"
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=worker, args=(r, args, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    times, ratios, saved, full = queue.get(timeout=1800)
    for p in procs:
        p.join()
    print(f"2 processes, {args.device}, width {args.width}, batch {args.batch}/rank, {args.rounds} rounds x "
          f"{args.block} steps")  # fmt: skip
    for c in CONFIGS:
        print(f"  {c:12s} median step {1e3 * statistics.median(times[c]):8.2f} ms")
    for k, v in ratios.items():
        label = "FSDP2 SAM / DDP SAM" if k == "fsdp2_vs_ddp_sam" else f"{k} SAM / plain"
        print(f"  {label:22s} median ratio {statistics.median(v):.3f} (rounds: {min(v):.3f}-{max(v):.3f})")
    for k, v in saved.items():
        print(f"  {k} saved copy per rank: {v / 2**20:.2f} MiB (full parameters {full / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
