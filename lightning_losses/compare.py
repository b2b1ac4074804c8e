"""``lightning-losses compare``: train several recipes over several seeds and tabulate mean and std.

Recipes are any recipes ``lightning-losses fit`` takes (the demo, or a model and data by import path). Each runs once
per seed with ``seed`` set to that seed, and ``data.seed`` too where the datamodule takes one (so model
initialisation, data order, split and any label noise all vary), the progress bar off. Every file a run writes goes
under ``OUT/<recipe>/seed<k>/`` (its ``trainer.default_root_dir``): ``metrics.csv`` (a ``CSVLogger`` writing there
directly), ``config.yaml``, ``results.json``, ``checkpoints/`` and, with ``wandb=True``, an offline W&B run in the
group named after ``OUT``. The summary goes to ``OUT/results.json``, a Markdown table to stdout and ``OUT/table.md``,
a bar chart with standard-deviation error bars to ``OUT/compare.png``, and a report (``OUT/report.md`` with PNGs
under ``OUT/report/``, and a self-contained ``OUT/report.html``) with the table and a plot of every requested and
every logged metric (:func:`lightning_losses.report.write_report`). ``workers > 1`` runs that many trainings
at once, each in its own process (with ``OMP_NUM_THREADS`` unset, each process gets ``cores // workers`` threads).

Example::

    lightning-losses compare configs/noisy_labels.yaml configs/noisy/gce.yaml --seeds 3 --workers 2 --out runs/compare
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_losses import runner
from lightning_losses._validation import check_int
from lightning_losses.errors import ConfigurationError
from lightning_losses.report import write_report

__all__ = ["compare", "format_table", "summarize"]

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]


def summarize(runs: dict[str, list[dict[str, Any]]], metrics: Sequence[str]) -> dict[str, dict[str, tuple]]:
    """``{recipe: {metric: (mean, std, n)}}`` over seeds (sample std; 0 for a single seed)."""
    out: dict[str, dict[str, tuple]] = {}
    for name, results in runs.items():
        out[name] = {}
        for metric in metrics:
            values = [float(r[metric]) for r in results if metric in r]
            if not values:
                continue
            std = statistics.stdev(values) if len(values) > 1 else 0.0
            out[name][metric] = (statistics.fmean(values), std, len(values))
    return out


def format_table(summary: dict[str, dict[str, tuple]], metrics: Sequence[str]) -> str:
    """A Markdown table ``| recipe | metric (mean ± std, n) | ... |``."""
    header = "| recipe | " + " | ".join(metrics) + " |"
    rule = "|---|" + "---:|" * len(metrics)
    rows = []
    for name, stats in summary.items():
        cells = []
        for m in metrics:
            if m in stats:
                mean, std, n = stats[m]
                cells.append(f"{mean:.4f} ± {std:.4f} (n={n})")
            else:
                cells.append("n/a")
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join([header, rule, *rows])


def _plot(summary: dict[str, dict[str, tuple]], metric: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    names = [n for n in summary if metric in summary[n]]
    means = [summary[n][metric][0] for n in names]
    stds = [summary[n][metric][1] for n in names]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(names)), 3.6))
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="#4C72B0")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(metric)
    low = min(m - s for m, s in zip(means, stds)) if means else 0.0
    ax.set_ylim(max(0.0, low - 0.05), None)
    ax.set_title(f"{metric}: mean ± std over seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _loggers(root: Path, group: str, name: str, seed: int, wandb: bool) -> str:
    """The ``logger`` override of one run: a CSVLogger writing ``metrics.csv`` into ``root`` (+ offline W&B)."""
    csv = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(root), "name": "", "version": ""},
    }
    loggers: list = [csv]
    if wandb:
        loggers.append(
            {
                "name": "wandb",
                "offline": True,
                "group": group,
                "job_type": name,
                "tags": [name, f"seed{seed}"],
                "save_dir": str(root),
            }
        )
    return f"logger={json.dumps(loggers)}"


def _takes_seed(path: str, overrides: Sequence[str]) -> bool:
    """Whether the recipe's datamodule takes a ``seed`` argument (the demo's does)."""
    import inspect

    from lightning_losses._classpath import has_class_path, import_class, split_class_spec
    from lightning_losses.config import load_recipe

    data = load_recipe(path, overrides).get("data")
    if data is None:
        return False
    if not has_class_path(data):
        return True
    cls = import_class(split_class_spec(data, "data")[0], "data.class_path")
    return "seed" in inspect.signature(cls.__init__).parameters


def _one_run(path: str, overrides: list[str], threads: int | None) -> dict[str, Any]:
    """One training (in this process, or in a worker process of ``compare(workers > 1)``)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    start = time.perf_counter()
    result = runner.run_fit(path, overrides, print_results=False)
    result["seconds"] = time.perf_counter() - start
    return result


def compare(
    recipes: Sequence[str],
    *,
    seeds: int = 3,
    metrics: Sequence[str] = ("test/acc", "test/nll"),
    overrides: Sequence[str] = (),
    out: str | Path = "runs/compare",
    workers: int = 1,
    wandb: bool = False,
) -> dict[str, dict[str, tuple]]:
    """Run every recipe for ``seeds`` seeds (0, 1, ...) and return the summary (also written under ``out``).

    Args:
        recipes: recipe paths; ``name=path`` sets the row label (default: the file stem).
        seeds: number of seeds (>= 1).
        metrics: result keys to tabulate (the first one is plotted).
        overrides: dot-list overrides applied to every run.
        out: output folder; run ``k`` of recipe ``name`` writes under ``out/name/seed{k}``.
        workers: trainings run at once, each in its own process (1: one after the other, in this process).
        wandb: also log every run to offline W&B, in one group named after ``out``.
    """
    check_int("seeds", seeds, low=1)
    check_int("workers", workers, low=1)
    if not recipes:
        raise ConfigurationError("`compare` needs at least one recipe path")
    named: dict[str, str] = {}
    for item in recipes:
        name, _, path = item.rpartition("=") if "=" in item else (Path(item).stem, "", item)
        if not Path(path).is_file():
            raise ConfigurationError(f"recipe file `{path}` does not exist")
        if not name or name in (".", "..") or any(c in name for c in "/\\"):
            raise ConfigurationError(
                f"recipe label `{name}` must be a folder name (no `/`, not `.` or `..`); label it with `name=path`"
            )
        if name in named:
            raise ConfigurationError(f"two recipes are labelled `{name}`; label them with `name=path`")
        named[name] = path
    if Path(out).exists() and not Path(out).is_dir():
        raise ConfigurationError(f"`out` must be a folder, got the file `{out}`")
    from lightning_losses.config import build_run, load_recipe

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    group = Path(out).resolve().name
    seeded: dict[str, bool] = {}

    def run_overrides(name: str, seed: int) -> list[str]:  # every file of the run under out/name/seed{seed}
        root = Path(out) / name / f"seed{seed}"
        data_seed = [f"data.seed={seed}"] if seeded[name] else []
        return [
            *overrides,
            *QUIET,
            _loggers(root, group, name, seed, wandb),
            f"seed={seed}",
            *data_seed,
            f"trainer.default_root_dir={json.dumps(str(root))}",
        ]

    for name, path in named.items():  # every recipe is checked before the first one trains
        try:
            seeded[name] = _takes_seed(path, overrides)
            build_run(load_recipe(path, run_overrides(name, 0)))
        except ConfigurationError as err:
            raise ConfigurationError(f"recipe `{name}` ({path}): {err}") from None
    # seeds outermost: interleaved, so machine drift hits every recipe alike
    jobs = [(name, seed) for seed in range(seeds) for name in named]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in named}

    def record(name: str, seed: int, result: dict[str, Any]) -> None:
        unknown = [m for m in metrics if m not in result]
        if unknown:
            known = ", ".join(f"`{k}`" for k in sorted(result))
            raise ConfigurationError(f"unknown metric(s) {', '.join(f'`{m}`' for m in unknown)}; a run gives {known}")
        result["seed"] = seed
        root = Path(out) / name / f"seed{seed}"
        root.mkdir(parents=True, exist_ok=True)
        (root / "results.json").write_text(json.dumps(result, indent=2, default=str))
        runs[name].append(result)
        print(
            f"[compare] {name} seed={seed}: " + ", ".join(f"{m}={result.get(m, float('nan')):.4f}" for m in metrics),
            flush=True,
        )

    if workers == 1:
        for name, seed in jobs:
            record(name, seed, _one_run(named[name], run_overrides(name, seed), None))
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = None if os.environ.get("OMP_NUM_THREADS") else max(1, (os.cpu_count() or 1) // workers)
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [
                (name, seed, pool.submit(_one_run, named[name], run_overrides(name, seed), threads))
                for name, seed in jobs
            ]
            for name, seed, future in futures:
                record(name, seed, future.result())
    for results in runs.values():
        results.sort(key=lambda r: r["seed"])
    summary = summarize(runs, metrics)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = format_table(summary, metrics)
    (out_dir / "table.md").write_text(table + "\n")
    summary_json = {"runs": runs, "recipes": named, "metrics": list(metrics)}
    (out_dir / "results.json").write_text(json.dumps(summary_json, indent=2, default=str))
    plotted = _plot(summary, metrics[0], out_dir / "compare.png")
    report = write_report(out_dir, metrics)
    print(table)
    print(
        f"[compare] wrote {out_dir / 'table.md'}, {out_dir / 'results.json'}, {report}, {out_dir / 'report.md'}"
        + (f", {out_dir / 'compare.png'}" if plotted else " (no matplotlib: no plot)")
    )
    return summary
