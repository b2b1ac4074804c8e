"""Train one recipe and collect its results: :func:`run_fit`, shared by the ``lightning-losses`` command
(:mod:`lightning_losses.cli`) and :func:`~lightning_losses.compare.compare`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["run_fit"]


def _format_table(rows: list[tuple[str, str]], title: str) -> str:
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * (vwidth + 2) + "+"
    body = [f"| {k.ljust(width)} | {v.rjust(vwidth)} |" for k, v in rows]
    return "\n".join([title, line, *body, line])


def run_fit(config: Any = None, overrides: Sequence[str] = (), *, print_results: bool = True) -> dict[str, Any]:
    """Load, validate and train a recipe; test on the held-out split; return (and print) the results.

    Returns:
        ``{"test/acc", "test/loss", "val/acc", "fit_seconds", "global_step", "log_dir"}`` (rank 0's view).
    """
    from lightning_losses.config import build_run, load_recipe

    cfg = load_recipe(config, overrides)
    run = build_run(cfg)
    start = time.perf_counter()
    run.trainer.fit(run.model, datamodule=run.datamodule)
    fit_seconds = time.perf_counter() - start
    val = {k: float(v) for k, v in run.trainer.callback_metrics.items() if k.startswith("val/")}
    tested = run.trainer.test(run.model, datamodule=run.datamodule, verbose=False)
    results: dict[str, Any] = {k: float(v) for k, v in (tested[0] if tested else {}).items()}
    results.update(val)
    results["fit_seconds"] = fit_seconds
    results["global_step"] = int(run.trainer.global_step)
    log_dir = run.trainer.log_dir
    _finish_loggers(run.trainer)
    results["log_dir"] = log_dir
    if run.trainer.is_global_zero:
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            (Path(log_dir) / "results.json").write_text(json.dumps(results, indent=2))
        if print_results:
            rows = [(k, f"{v:.4f}") for k, v in sorted(results.items()) if "/" in k and isinstance(v, float)]
            rows += [("fit time (s)", f"{fit_seconds:.1f}"), ("optimizer steps", str(results["global_step"]))]
            terms = ", ".join(cfg.objective.keys())
            title = f"\nResults ({terms}; {run.trainer.world_size} device(s))"
            print(_format_table(rows, title), flush=True)
    return results


def _finish_loggers(trainer: Any) -> None:
    """Flush and close W&B runs so the offline run file is complete when the command returns."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            import wandb

            if wandb.run is not None:
                wandb.finish()
