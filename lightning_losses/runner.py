"""Run one recipe: :func:`run` (``fit`` / ``validate`` / ``test`` / ``predict``) and :func:`run_fit`, shared by the
``lightning-losses`` command (:mod:`lightning_losses.cli`) and :func:`~lightning_losses.compare.compare`.

Every run writes its full resolved recipe (plus the package versions) to ``config.yaml`` in the run's log folder,
beside ``checkpoints/``, and hands the same mapping to every logger (CSV ``hparams.yaml``, W&B ``config``).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_losses._checkpoints import resolve_ckpt_path
from lightning_losses._cli_parser import SUBCOMMANDS

__all__ = ["SUBCOMMANDS", "run", "run_fit"]

#: intra-op threads for the bundled demo model when ``OMP_NUM_THREADS`` is unset (a user's model keeps torch's)
DEMO_THREADS = 1


def _format_table(rows: list[tuple[str, str]], title: str) -> str:
    width = max(len(k) for k, _ in rows)
    vwidth = max(len(v) for _, v in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * (vwidth + 2) + "+"
    body = [f"| {k.ljust(width)} | {v.rjust(vwidth)} |" for k, v in rows]
    return "\n".join([title, line, *body, line])


def _overrides(obj: Any, name: str, base: type) -> bool:
    return obj is not None and getattr(type(obj), name, None) is not getattr(base, name, None)


def _can_test(model: Any, datamodule: Any) -> bool:
    """``fit`` also tests when the model has a ``test_step`` and something provides test batches."""
    import lightning as L

    if not _overrides(model, "test_step", L.LightningModule):
        return False
    return _overrides(datamodule, "test_dataloader", L.LightningDataModule) or (
        datamodule is None and _overrides(model, "test_dataloader", L.LightningModule)
    )


def run(
    subcommand: str = "fit",
    config: Any = None,
    overrides: Sequence[str] = (),
    *,
    ckpt_path: str | None = None,
    print_results: bool = True,
) -> dict[str, Any]:
    """Load, validate and run a recipe; return (and print) the results.

    Args:
        subcommand: ``fit`` (then ``test`` on the fitted weights when the model and data can), ``validate``,
            ``test`` or ``predict``.
        config: recipe(s) for :func:`~lightning_losses.config.load_recipe` (a list merges in order).
        overrides: dot-list overrides.
        ckpt_path: a checkpoint file, ``"last"`` (the newest under ``trainer.default_root_dir``) or ``"best"`` (the
            best one its ``ModelCheckpoint`` recorded); ``fit`` resumes from it, the others load its weights.
        print_results: print the results table on rank 0.

    Returns:
        The run's metrics (rank 0's view) plus ``global_step``, ``log_dir`` and, for ``fit``, ``fit_seconds``.
    """
    from lightning_losses._save_recipe import SaveRecipe  # imports Lightning: not at the top (`--help` stays fast)
    from lightning_losses.config import build_run, load_recipe
    from lightning_losses.errors import ConfigurationError

    if subcommand not in SUBCOMMANDS:
        raise ConfigurationError(f"the subcommand must be one of {', '.join(SUBCOMMANDS)}, got {subcommand!r}")
    cfg = load_recipe(config, overrides)
    built = build_run(cfg, extra_callbacks=[SaveRecipe(cfg, subcommand=subcommand, ckpt_path=ckpt_path)])
    trainer, model, datamodule = built.trainer, built.model, built.datamodule
    _demo_threads(model)
    ckpt = resolve_ckpt_path(ckpt_path, trainer.default_root_dir)
    results: dict[str, Any] = {}
    if subcommand == "fit":
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt)
        results["fit_seconds"] = time.perf_counter() - start
        results.update({k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")})
        if _can_test(model, datamodule):
            tested = trainer.test(model, datamodule=datamodule, verbose=False)
            results.update({k: float(v) for k, v in (tested[0] if tested else {}).items()})
    elif subcommand == "predict":
        predictions = trainer.predict(model, datamodule=datamodule, ckpt_path=ckpt)
        results["predict_batches"] = len(predictions or [])
    else:
        out = getattr(trainer, subcommand)(model, datamodule=datamodule, ckpt_path=ckpt, verbose=False)
        results.update({k: float(v) for k, v in (out[0] if out else {}).items()})
    results["global_step"] = int(trainer.global_step)
    log_dir = trainer.log_dir
    _finish_loggers(trainer)
    results["log_dir"] = log_dir
    if trainer.is_global_zero:
        if log_dir:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            name = "results.json" if subcommand == "fit" else f"{subcommand}_results.json"
            (Path(log_dir) / name).write_text(json.dumps(results, indent=2))
            if subcommand == "predict":
                import torch

                torch.save(predictions, Path(log_dir) / "predictions.pt")
        if print_results:
            rows = [(k, f"{v:.4f}") for k, v in sorted(results.items()) if "/" in k and isinstance(v, float)]
            if "fit_seconds" in results:
                rows.append(("fit time (s)", f"{results['fit_seconds']:.1f}"))
            rows.append(("optimizer steps", str(results["global_step"])))
            if subcommand == "predict":
                rows.append(("predicted batches", str(results["predict_batches"])))
            terms = ", ".join(cfg.objective.keys()) if cfg.get("objective") else "no objective"
            title = f"\n{'Results' if subcommand == 'fit' else subcommand.capitalize()} ({terms}; "
            print(_format_table(rows, f"{title}{trainer.world_size} device(s))"), flush=True)
    return results


def _demo_threads(model: Any) -> None:
    """The demo's small matrix products run faster on one thread than on torch's default (one per core): measured
    5.6-11 s against 48-95 s (torch default: 2 threads) for 5 epochs on a 2-core machine at load average 13-16.
    Only for the bundled demo model, and only when ``OMP_NUM_THREADS`` does not say otherwise."""
    from lightning_losses.demo import DigitsClassifier

    if type(model) is DigitsClassifier and not os.environ.get("OMP_NUM_THREADS"):
        import torch

        torch.set_num_threads(DEMO_THREADS)


def run_fit(config: Any = None, overrides: Sequence[str] = (), *, print_results: bool = True) -> dict[str, Any]:
    """:func:`run` with ``fit``: train, test on the held-out split, return (and print) the results.

    Returns:
        ``{"test/acc", "test/loss", "val/acc", "fit_seconds", "global_step", "log_dir"}`` (rank 0's view).
    """
    return run("fit", config, overrides, print_results=print_results)


def _finish_loggers(trainer: Any) -> None:
    """Flush and close W&B runs so the offline run file is complete when the command returns."""
    for logger in trainer.loggers:
        if type(logger).__name__ == "WandbLogger" and trainer.is_global_zero:
            import wandb

            if wandb.run is not None:
                wandb.finish()
