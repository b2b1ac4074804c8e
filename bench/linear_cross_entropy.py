"""Peak memory and time of token cross entropy from hidden states: materialised logits vs the chunked path.

For each vocabulary size the two variants run forward + backward on the same inputs (``hidden [tokens, H]``,
``weight [V, H]``, random targets, a random per-token upstream gradient so that ``reduction="none"`` is exercised),
interleaved within each round (A B, then B A in the next round, ...) so that drift and other load hit both alike:

* naive: ``F.cross_entropy(hidden @ weight.T, target, reduction="none")`` (what a user writes; float32 logits);
* chunked: :func:`lightning_losses.functional.linear_ce.linear_cross_entropy` with ``impl="chunked"``.

Peak memory is what the pass adds on top of what was allocated before it (inputs and the previous round's results
are freed first; ``.grad`` is reset so both variants allocate their gradients):

* on CUDA: ``torch.cuda.max_memory_allocated()`` minus ``torch.cuda.memory_allocated()`` before the pass;
* on CPU: the process's peak resident set size (``VmHWM`` in ``/proc/self/status``, reset before the pass by writing
  ``5`` to ``/proc/self/clear_refs``) minus the resident size before the pass. This is the operating system's count,
  so it includes allocator slack and every temporary a kernel makes internally (which a tensor-level tracker would
  miss); tensors of these sizes are ``mmap``-ed and returned to the OS when freed, so the baseline is honest.

Time is the wall time of forward + backward (median over rounds). Also printed: the largest difference between the
two variants' per-token losses and gradients (a bench that is fast because it is wrong is no bench). Targets from
issue 4: chunked peak memory <= 1/8 of naive at V = 128k, chunked time <= 1.3x naive on CPU.

    python bench/linear_cross_entropy.py                   # V = 32k, 64k, 128k; 4096 tokens; hidden 512; 1 round
    python bench/linear_cross_entropy.py --rounds 3 --tokens 2048 --vocab 131072
    python bench/linear_cross_entropy.py --frozen-head   # only hidden needs a gradient (LoRA): no recompute
"""

from __future__ import annotations

import argparse
import gc
import re
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_losses.functional.linear_ce import default_chunk_size, linear_cross_entropy

_STATUS = Path("/proc/self/status")


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", _STATUS.read_text()).group(1))


class PeakMemory:
    """Bytes a block adds at its peak (CUDA allocator statistics, or the process's resident set on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
            self._base = _rss_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        else:
            self.peak = _rss_kib("VmHWM") * 1024 - self._base


def naive(hidden, weight, target, upstream, chunk_size):
    token = F.cross_entropy((hidden @ weight.T).float(), target, reduction="none")
    (token * upstream).sum().backward()
    return token.detach()


def chunked(hidden, weight, target, upstream, chunk_size):
    token = linear_cross_entropy(hidden, weight, target, chunk_size=chunk_size, impl="chunked")
    (token * upstream).sum().backward()
    return token.detach()


def measure(fn, hidden, weight, target, upstream, chunk_size, device):
    hidden.grad = weight.grad = None
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        token = fn(hidden, weight, target, upstream, chunk_size)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
    return seconds, mem.peak, (token, hidden.grad, weight.grad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, nargs="+", default=[32768, 65536, 131072])
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--chunk-size", type=int, default=None, help="default: about 128 MiB of logits per chunk")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--frozen-head", action="store_true", help="weight needs no gradient (LoRA-style)")
    args = parser.parse_args()
    device = torch.device(args.device)
    print(
        f"device={device} threads={torch.get_num_threads()} tokens={args.tokens} hidden={args.hidden} "
        f"rounds={args.rounds} frozen_head={args.frozen_head} torch={torch.__version__}"
    )
    g = torch.Generator().manual_seed(args.seed)
    warm = torch.randn(64, 16, generator=g, requires_grad=True), torch.randn(100, 16, generator=g, requires_grad=True)
    for fn in (naive, chunked):  # warm-up (kernels, thread pools)
        fn(*warm, torch.randint(0, 100, (64,), generator=g), torch.ones(64), 16)

    rows = []
    for vocab in args.vocab:
        hidden = torch.randn(args.tokens, args.hidden, generator=g).to(device).requires_grad_(True)
        weight = (torch.randn(vocab, args.hidden, generator=g) * args.hidden**-0.5).to(device)
        weight.requires_grad_(not args.frozen_head)
        target = torch.randint(0, vocab, (args.tokens,), generator=g).to(device)
        upstream = torch.rand(args.tokens, generator=g).to(device)
        chunk = args.chunk_size or default_chunk_size(args.tokens, vocab)
        times = {"naive": [], "chunked": []}
        peaks = {"naive": [], "chunked": []}
        diff = 0.0
        for r in range(args.rounds):
            order = (("naive", naive), ("chunked", chunked)) if r % 2 == 0 else (("chunked", chunked), ("naive", naive))
            results = {}
            for name, fn in order:
                seconds, peak, out = measure(fn, hidden, weight, target, upstream, chunk, device)
                times[name].append(seconds)
                peaks[name].append(peak)
                results[name] = out
                del out
            if r == 0:
                pairs = [(a, b) for a, b in zip(results["naive"], results["chunked"]) if a is not None]
                diff = max(float((a - b).abs().max()) for a, b in pairs)
            del results
        t_n, t_c = statistics.median(times["naive"]), statistics.median(times["chunked"])
        m_n, m_c = max(peaks["naive"]), max(peaks["chunked"])
        rows.append((vocab, chunk, t_n, t_c, m_n, m_c, diff))
        print(
            f"V={vocab}: chunk={chunk} naive {t_n:.2f} s {m_n / 2**20:.0f} MiB | chunked {t_c:.2f} s "
            f"{m_c / 2**20:.0f} MiB | time x{t_c / t_n:.2f} memory x{m_c / max(m_n, 1):.3f} | max|diff| {diff:.1e}",
            flush=True,
        )
        del hidden, weight, target, upstream

    print("\n| V | chunk | naive s | chunked s | time ratio | naive MiB | chunked MiB | memory ratio | max abs diff |")
    print("|---|---|---|---|---|---|---|---|---|")
    for vocab, chunk, t_n, t_c, m_n, m_c, diff in rows:
        print(
            f"| {vocab} | {chunk} | {t_n:.2f} | {t_c:.2f} | {t_c / t_n:.2f} | {m_n / 2**20:.0f} | {m_c / 2**20:.0f} "
            f"| {m_c / max(m_n, 1):.3f} | {diff:.1e} |"
        )
    print("targets: memory ratio <= 0.125 at V=128k; time ratio <= 1.3 on CPU")


if __name__ == "__main__":
    main()
