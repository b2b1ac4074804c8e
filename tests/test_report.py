"""The compare report on a synthetic ``OUT`` tree (the layout ``lightning-losses compare`` writes)."""

import base64
import csv
import json
import re

import pytest

import lightning_losses as ll
from lightning_losses.report import load_runs, write_report

pytest.importorskip("matplotlib")


def _write_run(root, recipe, seed, acc, losses, *, nested=True):
    run = root / recipe / f"seed{seed}"
    log_dir = run / "lightning_logs" / "version_0" if nested else run
    log_dir.mkdir(parents=True)
    with open(log_dir / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["epoch", "step", "train/loss", "val/acc"])
        writer.writeheader()
        for step, loss in enumerate(losses):
            writer.writerow({"epoch": 0, "step": step, "train/loss": loss})
        writer.writerow({"epoch": 0, "step": len(losses) - 1, "val/acc": acc})
    result = {"test/acc": acc, "test/nll": 1.0 - acc, "seconds": 1.0 + seed}
    (log_dir / "results.json").write_text(json.dumps(result))
    return result


def _tree(tmp_path, summary=True):
    runs = {"ce": [], "gce": []}
    for seed in range(3):
        runs["ce"].append(_write_run(tmp_path, "ce", seed, 0.80 + 0.01 * seed, [2.0, 1.0, 0.5 + 0.1 * seed]))
        runs["gce"].append(_write_run(tmp_path, "gce", seed, 0.90 - 0.02 * seed, [2.2, 0.9, 0.4], nested=seed != 1))
    if summary:
        summary = {"runs": runs, "recipes": {"ce": "a.yaml", "gce": "b.yaml"}, "metrics": ["test/nll"]}
        (tmp_path / "results.json").write_text(json.dumps(summary))
    return runs


def test_load_runs_finds_every_seed_of_every_recipe(tmp_path):
    _tree(tmp_path)
    results, series, requested = load_runs(tmp_path)
    assert requested == ["test/nll"]
    assert [r["test/acc"] for r in results["ce"]] == pytest.approx([0.80, 0.81, 0.82])
    assert len(series["gce"]) == 3 and series["ce"][2]["train/loss"] == {0: 2.0, 1: 1.0, 2: 0.7}
    assert series["ce"][0]["val/acc"] == {2: 0.80}


def test_report_has_the_table_and_a_plot_per_metric(tmp_path):
    _tree(tmp_path)
    page = write_report(tmp_path)
    assert page == tmp_path / "report.html"
    md = (tmp_path / "report.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert rows[0] == "| metric | ce | gce |"
    assert [r.split(" |")[0] for r in rows[1:]] == ["| test/nll", "| seconds", "| test/acc"]  # requested first
    assert "| test/acc | 0.81 ± 0.01 (n=3) | 0.88 ± 0.02 (n=3) |" in md
    images = re.findall(r"!\[([^\]]+)\]\((report/[^)]+\.png)\)", md)
    assert [t for t, _ in images] == ["test/nll", "train/loss", "val/acc"]  # bars of the requested, every logged
    for _, path in images:
        assert (tmp_path / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = page.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == 3 and all(base64.b64decode(e)[:4] == b"\x89PNG" for e in embedded)
    assert "<td>0.81 ± 0.01 (n=3)</td>" in html and "report/" not in html  # self-contained


def test_report_without_a_summary_reads_each_runs_results(tmp_path):
    _tree(tmp_path, summary=False)
    write_report(tmp_path, metrics=["test/acc"])
    md = (tmp_path / "report.md").read_text()
    assert "| test/acc | 0.81 ± 0.01 (n=3) | 0.88 ± 0.02 (n=3) |" in md
    assert md.index("| test/acc") < md.index("| test/nll")


def test_value_axes_start_at_zero_or_say_where_they_start():
    from matplotlib.figure import Figure

    from lightning_losses.report import _value_axis

    ax = Figure().add_subplot()
    assert _value_axis(ax, 0.4, 2.0) == "" and ax.get_ylim()[0] == 0.0
    note = _value_axis(ax, 0.95, 0.97)  # a narrow range: zoomed, and the title says so
    assert ax.get_ylim()[0] == pytest.approx(0.949) and note == " (axis starts at 0.949, not 0)"
    assert _value_axis(ax, -1.0, 1.0).startswith(" (axis starts at -1.1")


def test_report_of_an_empty_folder_is_refused(tmp_path):
    with pytest.raises(
        ll.ConfigurationError, match=r"`out_dir` must be a `compare` output folder .* got `.*` with none"
    ):
        write_report(tmp_path)
