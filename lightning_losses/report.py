"""A report of a ``compare`` run: the result table and a plot of every metric, mean and spread over seeds.

:func:`write_report` reads what ``lightning-losses compare`` leaves under its output folder ``OUT``:

* each run's CSV log, ``OUT/<recipe>/seed<k>/**/metrics.csv`` (Lightning's ``CSVLogger``: a ``step`` column, one
  column per logged key, a row per logging call), and its final results, the ``results.json`` of the run (beside the
  CSV or anywhere under ``OUT/<recipe>/seed<k>/``);
* the summary ``OUT/results.json``, whose ``runs`` (``{recipe: [result per seed]}``) and optional ``metrics`` (the
  requested keys, listed first) are used when present.

It writes ``OUT/report.md`` (the table, then the figures as PNG files under ``OUT/report/``) and a self-contained
``OUT/report.html`` (the same, PNGs embedded as base64). Figures:

* per requested final metric (``test/acc``, ...): one bar per recipe at the mean over seeds, an error bar of one
  standard deviation and every seed's value as a dot;
* per logged metric (``train/loss``, ``val/acc``, ``reweight/ess``, ...): its value against the step, one line per
  recipe at the mean over seeds with a band from the lowest to the highest seed.

Axes are honest: a value axis starts at 0 when every value is non-negative and the values span more than a fifth
of their largest; otherwise it is zoomed, and the panel's title says where the axis starts.

Example::

    lightning-losses compare configs/noisy_labels.yaml configs/noisy/gce.yaml --seeds 3 --out runs/compare
    python -c "from lightning_losses.report import write_report; write_report('runs/compare')"
"""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_losses.errors import ConfigurationError

__all__ = ["load_runs", "write_report"]

_NOT_METRICS = ("step", "epoch")


def _read_csv(path: Path) -> dict[str, dict[int, float]]:
    """``{key: {step: value}}`` of a CSVLogger file (the last value logged at a step wins; empty cells skipped)."""
    series: dict[str, dict[int, float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            try:
                step = int(float(row.get("step") or ""))
            except ValueError:
                continue
            for key, cell in row.items():
                if key in _NOT_METRICS or key is None or cell in (None, ""):
                    continue
                try:
                    series.setdefault(key, {})[step] = float(cell)
                except ValueError:
                    continue
    return series


def load_runs(out_dir: str | Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[dict]], list[str]]:
    """``(results, series, requested)``: per recipe the final results of each seed, per recipe each seed's logged
    series (``{key: {step: value}}``), and the requested metrics of ``OUT/results.json`` (may be empty)."""
    root = Path(out_dir)
    summary: dict[str, Any] = {}
    if (root / "results.json").is_file():
        summary = json.loads((root / "results.json").read_text())
    results: dict[str, list[dict[str, Any]]] = {}
    series: dict[str, list[dict]] = {}
    for seed_dir in sorted(root.glob("*/seed*"), key=lambda p: (p.parent.name, _seed_number(p))):
        if not seed_dir.is_dir():
            continue
        recipe = seed_dir.parent.name
        csvs = sorted(seed_dir.glob("**/metrics.csv"))
        if csvs:
            merged: dict[str, dict[int, float]] = {}
            for path in csvs:  # a resumed run writes a new version folder: later files win
                for key, values in _read_csv(path).items():
                    merged.setdefault(key, {}).update(values)
            series.setdefault(recipe, []).append(merged)
        found = sorted(seed_dir.glob("**/results.json"))
        if found:
            results.setdefault(recipe, []).append(json.loads(found[0].read_text()))
    runs = summary.get("runs") if isinstance(summary.get("runs"), dict) else None
    if runs:  # the summary's own list is authoritative for the final results
        results = {name: [r for r in rs if isinstance(r, dict)] for name, rs in runs.items()}
    requested = [str(m) for m in summary.get("metrics", ())] if isinstance(summary.get("metrics"), list) else []
    return results, series, requested


def _seed_number(path: Path) -> int:
    digits = path.name[4:]
    return int(digits) if digits.isdigit() else 0


def _numeric_keys(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    keys: dict[str, None] = {}
    for rs in results.values():
        for r in rs:
            for k, v in r.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v)):
                    keys.setdefault(k, None)
    return sorted(keys)


def _stats(values: Sequence[float]) -> tuple[float, float, int]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), std, len(values)


def _table(results: dict[str, list[dict[str, Any]]], metrics: Sequence[str]) -> str:
    names = list(results)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for metric in metrics:
        cells = []
        for name in names:
            values = [float(r[metric]) for r in results[name] if isinstance(r.get(metric), (int, float))]
            if values:
                mean, std, n = _stats(values)
                cells.append(f"{mean:.4g} ± {std:.2g} (n={n})")
            else:
                cells.append("n/a")
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _value_axis(ax: Any, low: float, high: float) -> str:
    """Start the value axis at 0 where that is readable; otherwise zoom and return the note for the title."""
    if low >= 0 and (high <= 0 or (high - low) > 0.2 * high):
        ax.set_ylim(0.0, high * 1.05 if high > 0 else 1.0)
        return ""
    pad = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
    ax.set_ylim(low - pad, high + pad)
    return f" (axis starts at {low - pad:.3g}, not 0)"


def _figure(width: float = 5.0, height: float = 3.2) -> tuple[Any, Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    return fig, FigureCanvasAgg(fig), fig.add_subplot()


def _png(fig: Any, canvas: Any) -> bytes:
    import io

    fig.tight_layout()
    buf = io.BytesIO()
    canvas.print_png(buf)
    return buf.getvalue()


def _bar_plot(results: dict[str, list[dict[str, Any]]], metric: str) -> bytes | None:
    names = [n for n in results if any(isinstance(r.get(metric), (int, float)) for r in results[n])]
    if not names:
        return None
    fig, canvas, ax = _figure(max(4.0, 1.2 * len(names) + 1.5), 3.4)
    values = [[float(r[metric]) for r in results[n] if isinstance(r.get(metric), (int, float))] for n in names]
    stats = [_stats(v) for v in values]
    xs = range(len(names))
    ax.bar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats], capsize=4, color="#4C72B0", alpha=0.8)
    for x, vs in zip(xs, values):
        ax.plot([x] * len(vs), vs, "k.", markersize=5)
    ax.set_xticks(list(xs), names, rotation=20, ha="right")
    flat = [v for vs in values for v in vs] + [s[0] - s[1] for s in stats] + [s[0] + s[1] for s in stats]
    note = _value_axis(ax, min(flat), max(flat))
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean ± std over seeds, dots: seeds{note}", fontsize=9)
    return _png(fig, canvas)


def _curve_plot(series: dict[str, list[dict]], metric: str) -> bytes | None:
    fig, canvas, ax = _figure()
    low, high, drawn = math.inf, -math.inf, False
    for i, (name, runs) in enumerate(series.items()):
        per_seed = [run[metric] for run in runs if run.get(metric)]
        if not per_seed:
            continue
        steps = sorted({s for run in per_seed for s in run})
        values = [[run[s] for run in per_seed if s in run and math.isfinite(run[s])] for s in steps]
        kept = [(s, v) for s, v in zip(steps, values) if v]
        if not kept:
            continue
        xs = [s for s, _ in kept]
        color = f"C{i % 10}"
        ax.plot(xs, [statistics.fmean(v) for _, v in kept], color=color, label=f"{name} (n={len(per_seed)})")
        if len(per_seed) > 1:
            ax.fill_between(xs, [min(v) for _, v in kept], [max(v) for _, v in kept], color=color, alpha=0.2)
        low, high, drawn = min(low, *(min(v) for _, v in kept)), max(high, *(max(v) for _, v in kept)), True
    if not drawn:
        return None
    note = _value_axis(ax, low, high)
    ax.set_xlim(left=0)
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric}: mean over seeds, band: min to max{note}", fontsize=9)
    ax.legend(fontsize=7)
    return _png(fig, canvas)


def _slug(key: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in key)


def write_report(out_dir: str | Path, metrics: Sequence[str] | None = None) -> Path:
    """Write ``report.md`` (with PNGs under ``report/``) and a self-contained ``report.html`` into ``out_dir``.

    Args:
        out_dir: a ``compare`` output folder (see the module docstring).
        metrics: the final metrics to put first in the table and to plot as bars (default: the summary's
            ``metrics``, else every numeric result); every other numeric result follows in the table.

    Returns:
        The path of ``report.html``.

    Raises:
        ConfigurationError: ``out_dir`` holds no run (no ``<recipe>/seed<k>/`` with a ``metrics.csv`` or a
            ``results.json``, and no ``results.json`` summary with ``runs``).
    """
    root = Path(out_dir)
    results, series, requested = load_runs(root)
    if not results and not series:
        raise ConfigurationError(
            f"`out_dir` must be a `compare` output folder with runs under `<recipe>/seed<k>/` (a `metrics.csv` or "
            f"`results.json`), got `{root}` with none"
        )
    numeric = _numeric_keys(results)
    first = [m for m in (list(metrics) if metrics is not None else requested or numeric) if m in numeric]
    keys = first + [k for k in numeric if k not in first]
    logged = sorted({k for runs in series.values() for run in runs for k in run})
    figures: list[tuple[str, str, bytes]] = []  # (section, title, png)
    for metric in first:
        png = _bar_plot(results, metric)
        if png is not None:
            figures.append(("Final results", metric, png))
    for metric in logged:
        png = _curve_plot(series, metric)
        if png is not None:
            figures.append((f"Logged: {metric.split('/')[0]}", metric, png))
    table = _table(results, keys) if results else "(no results.json found)"
    image_dir = root / "report"
    image_dir.mkdir(parents=True, exist_ok=True)
    md = ["# Comparison report", "", f"Runs under `{root}`: " + ", ".join(
        f"{name} ({max(len(results.get(name, ())), len(series.get(name, ())))} seeds)"
        for name in dict.fromkeys([*results, *series])
    ), "", "## Results (mean ± std over seeds)", "", table, ""]  # fmt: skip
    body = [f"<h1>Comparison report</h1><p>{html.escape(md[2])}</p>", "<h2>Results (mean ± std over seeds)</h2>"]
    body.append(_html_table(table))
    section = None
    for i, (sec, title, png) in enumerate(figures):
        if sec != section:
            md += [f"## {sec}", ""]
            body.append(f"<h2>{html.escape(sec)}</h2>")
            section = sec
        name = f"{i:03d}_{_slug(title)}.png"
        (image_dir / name).write_bytes(png)
        md += [f"![{title}](report/{name})", ""]
        data = base64.b64encode(png).decode("ascii")
        body.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}"></figure>')
    (root / "report.md").write_text("\n".join(md))
    page = (
        '<!DOCTYPE html><html><head><meta charset="utf-8"><title>Comparison report</title><style>'
        "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}figure{display:inline-block;margin:4px}"
        "</style></head><body>" + "\n".join(body) + "</body></html>"
    )
    (root / "report.html").write_text(page)
    return root / "report.html"


def _html_table(markdown: str) -> str:
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|") and not ln.startswith("|---")]
    if not lines:
        return f"<p>{html.escape(markdown)}</p>"
    rows = [[html.escape(c.strip()) for c in ln.strip("|").split("|")] for ln in lines]
    head = "".join(f"<th>{c}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows[1:])
    return f"<table><tr>{head}</tr>{body}</table>"
