"""Cost of :class:`~lightning_losses.CurvatureMonitor` on the digits demo, measured side by side in one process.

Trains the default demo recipe (digits MLP, AdamW, batch 64) with and without the monitor (at its default cadence,
or ``--every``), alternating the two ``--repeats`` times, and prints the fit wall time of each, their ratio, the
number of monitor runs and the mean time of one run.

Usage::

    PYTHONPATH=$PWD python bench/curvature_cost.py [--epochs 20] [--repeats 3] [--every 100] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import lightning_losses as ll
from lightning_losses.runner import run_fit


def _fit(monitor: bool, args: argparse.Namespace) -> tuple[float, list[float]]:
    runs: list[float] = []
    if monitor:
        measure = ll.CurvatureMonitor.measure

        def timed(self, pl_module, step=0):  # noqa: ANN001
            start = time.perf_counter()
            out = measure(self, pl_module, step)
            runs.append(time.perf_counter() - start)
            return out

        ll.CurvatureMonitor.measure = timed
    callbacks = f"callbacks={{curvature_monitor: {{every_n_steps: {args.every}}}}}" if monitor else "callbacks={}"
    overrides = [
        callbacks,
        "seed=1",
        f"trainer.max_epochs={args.epochs}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.enable_checkpointing=false",
        f"trainer.accelerator={args.device}",
    ]
    start = time.perf_counter()
    try:
        run_fit(None, overrides, print_results=False)
    finally:
        if monitor:
            ll.CurvatureMonitor.measure = measure
    return time.perf_counter() - start, runs


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--every", type=int, default=100)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    base, with_monitor, runs = [], [], []
    for _ in range(args.repeats):
        base.append(_fit(False, args)[0])
        seconds, calls = _fit(True, args)
        with_monitor.append(seconds)
        runs += calls
    b, m = statistics.median(base), statistics.median(with_monitor)
    per_run = statistics.mean(runs) if runs else float("nan")
    print(f"device={args.device} epochs={args.epochs} every_n_steps={args.every} repeats={args.repeats}")
    print(f"fit without monitor: {b:.2f} s (median), with: {m:.2f} s, ratio {m / b:.3f}")
    print(f"monitor runs per fit: {len(runs) // args.repeats}, one run: {1000 * per_run:.1f} ms (mean)")
    print("runs (ms):", ", ".join(f"{1000 * r:.0f}" for r in runs))


if __name__ == "__main__":
    main()
