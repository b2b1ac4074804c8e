"""Render the README's dashboard picture (``docs/dashboard.png``) from a real offline W&B run of the demo.

Trains the digits demo for a few epochs on its spurious-group data with ``SampleReweighting("group_dro")``,
``EntropyControl`` (a target, so the controller moves beta), ``SAM`` and a ``CalibrationMonitor``, logging to an
offline W&B run (no network); then reads the run file back (``tests/helpers/wandb_reader.py``) and draws, with
matplotlib, the panels the README's "Dashboards" section recommends: line plots of the step statistics, histograms
over time as heat maps (as W&B draws them), the group table's ``q`` per group, and the last reliability diagram.

    OMP_NUM_THREADS=1 python bench/dashboard.py --out docs/dashboard.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the run-file reader of the tests


def run(tmp: Path, epochs: int) -> Path:
    """Fit the demo with every mechanism's diagnostics into an offline W&B run under ``tmp``; its run file."""
    import lightning as L
    from lightning.pytorch.loggers import WandbLogger

    import lightning_losses as ll
    from lightning_losses.demo import DigitsClassifier, DigitsDataModule
    from tests.helpers.wandb_reader import finished_run_files

    os.environ.update(WANDB_MODE="offline", WANDB_DIR=str(tmp), WANDB_SILENT="true")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logger = WandbLogger(project="ll-dashboard", save_dir=str(tmp), offline=True)
    L.seed_everything(0, verbose=False)
    callbacks = [
        ll.SampleReweighting("group_dro", step_size=0.05, media_every_n_steps=10),
        ll.EntropyControl(target=0.5, lr=0.05, media_every_n_steps=10),
        ll.SAM(rho=0.05),
        ll.CalibrationMonitor(),
    ]
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=logger, log_every_n_steps=5, accelerator="cpu",
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp,
    )  # fmt: skip
    model = DigitsClassifier(num_features=74, dropout=0.0, cosine_schedule=False)
    trainer.fit(model, DigitsDataModule(batch_size=64, spurious=0.9))
    logger.experiment.finish()
    (run_file,) = finished_run_files(tmp)
    return run_file


def series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["trainer/global_step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def heatmap(ax, rows: list[dict], key: str, title: str, cells: int = 40) -> None:
    """A histogram logged over time as W&B draws it: step on x, value on y, count as colour."""
    import numpy as np

    hists = [r for r in rows if r.get(f"{key}/_type") == "histogram"]
    lo = min(r[f"{key}/bins"][0] for r in hists)
    hi = max(r[f"{key}/bins"][-1] for r in hists)
    grid = np.zeros((cells, len(hists)))
    for j, r in enumerate(hists):
        edges, counts = np.asarray(r[f"{key}/bins"]), np.asarray(r[f"{key}/values"], dtype=float)
        centres = (edges[:-1] + edges[1:]) / 2
        idx = np.clip(((centres - lo) / max(hi - lo, 1e-12) * cells).astype(int), 0, cells - 1)
        np.add.at(grid[:, j], idx, counts)
    from matplotlib.colors import LogNorm

    steps = [r["trainer/global_step"] for r in hists]
    shown = np.ma.masked_equal(grid, 0)  # empty cells white; counts on a log scale (a few outliers stay visible)
    image = ax.imshow(
        shown, aspect="auto", origin="lower", cmap="viridis", norm=LogNorm(vmin=1), extent=(steps[0], steps[-1], lo, hi)
    )
    ax.figure.colorbar(image, ax=ax, label="samples")
    ax.set(title=title, xlabel="step", ylabel="value")


def render(run_file: Path, out: Path) -> None:
    import matplotlib.image as mpimg
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from tests.helpers.wandb_reader import read_history

    rows = read_history(run_file)
    files = run_file.parent / "files"
    fig = Figure(figsize=(13, 9.5), dpi=72)
    canvas = FigureCanvasAgg(fig)
    axes = fig.subplots(3, 3)
    fig.suptitle("lightning_losses on W&B: the panels per mechanism (digits demo, offline run)", fontsize=13)

    def lines(ax, keys, title, ylim0=True):
        for key in keys:
            ax.plot(*series(rows, key), label=key)
        ax.set(title=title, xlabel="step")
        if ylim0:
            ax.set_ylim(bottom=0)
        ax.legend(fontsize=7)

    lines(axes[0, 0], ["train/loss", "train/cross_entropy"], "objective: loss and terms")
    lines(axes[0, 1], ["reweight/ess", "reweight/worst_group_acc"], "reweighting: ESS, worst-group accuracy")
    heatmap(axes[0, 2], rows, "reweight/weights", "reweighting: per-sample weights (histogram)")
    tables = [r for r in rows if "reweight/groups/_type" in r]
    table = json.loads((files / tables[-1]["reweight/groups/path"]).read_text())
    col = {c: i for i, c in enumerate(table["columns"])}
    for g in sorted({row[col["group"]] for row in table["data"]}):
        data = [row for row in table["data"] if row[col["group"]] == g]
        axes[1, 0].plot([r[col["step"]] for r in data], [r[col["weight"]] for r in data], "o-", label=f"group {g}")
    axes[1, 0].set(title="reweighting: group table, q per group", xlabel="step", ylim=(0, 1))
    axes[1, 0].legend(fontsize=7)
    lines(axes[1, 1], ["perturbation/sharpness", "perturbation/norm"], "perturbation: L(w+e) - L(w), ||e||")
    lines(axes[1, 2], ["perturbation/cos_delta_grad", "perturbation/time_ratio"], "perturbation: cosine, time ratio")
    lines(axes[2, 0], ["entropy/mean", "entropy/target", "entropy/beta"], "entropy: mean vs target, beta", False)
    heatmap(axes[2, 1], rows, "entropy/per_sample", "entropy: per-sample entropy (histogram)")
    images = [r for r in rows if "val/reliability/_type" in r]
    (name,) = images[-1]["val/reliability/filenames"]
    axes[2, 2].imshow(mpimg.imread(files / name))
    axes[2, 2].set_title(f"calibration: val/reliability (step {images[-1]['trainer/global_step']})")
    axes[2, 2].axis("off")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.print_png(str(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "dashboard.png"))
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        render(run(Path(tmp), args.epochs), Path(args.out))
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()
