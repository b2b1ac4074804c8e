"""Demo runs of sample reweighting on the offline digits data (3 seeds each), printed as a markdown table.

* spurious digits (``data.spurious``): ERM vs ``group_dro`` (and, with plain shuffling, the environment penalties
  ``irm_v1`` / ``vrex`` / ``coral`` over the same groups), worst-group and mean test accuracy, with plain
  shuffling, group-balanced oversampling (``data.sampler=balanced_groups``, the Group DRO paper's setting) and
  group-balanced subsampling (``data.sampler_mode=subsample``);
* imbalanced digits (``data.imbalance``): ERM vs ``class_balanced`` / ``ema_class_loss``, balanced test accuracy.

Usage::

    PYTHONPATH=$PWD python bench/reweighting_demo.py [--seeds 1 2 3] [--epochs 20]

Each run is the same as ``python -m lightning_losses.cli fit --seed S --data.spurious 0.95 --callbacks
'{sample_reweighting: {strategy: group_dro}}'`` (run in-process here to skip the start-up cost).
"""

from __future__ import annotations

import argparse
import statistics
import time

from lightning_losses.runner import run_fit

#: environment penalties (objective terms over the batch's groups), DomainBed-style anneal at step 100 of ~440
PENALTIES = {
    "irm_v1": "irm_v1: {num_groups: 2, coefficient: {name: step, value: 1.0, milestones: [100], gamma: 100.0}}",
    "vrex": "vrex: {num_groups: 2, coefficient: {name: step, value: 1.0, milestones: [100], gamma: 10.0}}",
    "coral": "coral: {num_groups: 2, coefficient: 1.0}",
}

SETUPS = {
    "spurious": (["data.spurious=0.95"], "test/worst_group_acc", ["erm", "group_dro", *PENALTIES]),
    # group-balanced sampling (oversampling, as Group DRO's --reweight_groups), with and without group DRO
    "spurious+balanced": (
        ["data.spurious=0.95", "data.sampler=balanced_groups"],
        "test/worst_group_acc",
        ["erm", "group_dro"],
    ),
    "spurious+subsampled": (
        ["data.spurious=0.95", "data.sampler=balanced_groups", "data.sampler_mode=subsample"],
        "test/worst_group_acc",
        ["erm", "group_dro"],
    ),
    "imbalanced": (
        ["data.imbalance=20"],
        "test/balanced_acc",
        ["erm", "class_balanced", "ema_class_loss", "per_class_normalized"],
    ),
    # per-class normalised gradients with class-balanced oversampling (the paper's PCNSGD+O)
    "imbalanced+balanced": (
        ["data.imbalance=20", "data.sampler=balanced_classes"],
        "test/balanced_acc",
        ["erm", "per_class_normalized"],
    ),
}


def _run(overrides: list[str], strategy: str, seed: int, epochs: int) -> dict[str, float]:
    if strategy in PENALTIES:
        callbacks = f"objective={{cross_entropy: {{}}, {PENALTIES[strategy]}}}"
    elif strategy == "erm":
        callbacks = "callbacks={}"
    else:
        callbacks = f"callbacks={{sample_reweighting: {{strategy: {strategy}}}}}"
    common = [
        f"seed={seed}",
        f"trainer.max_epochs={epochs}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.enable_checkpointing=false",
        "trainer.accelerator=cpu",
    ]
    return run_fit(None, [*overrides, callbacks, *common], print_results=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--setups", nargs="+", default=list(SETUPS))
    parser.add_argument("--strategies", nargs="+", default=None, help="only these strategies (default: all)")
    args = parser.parse_args()
    rows = []
    for setup in args.setups:
        overrides, key, strategies = SETUPS[setup]
        for strategy in strategies:
            if args.strategies and strategy not in args.strategies:
                continue
            start = time.perf_counter()
            results = [_run(overrides, strategy, s, args.epochs) for s in args.seeds]
            main_metric = [r[key] for r in results]
            acc = [r["test/acc"] for r in results]
            rows.append((setup, strategy, key, main_metric, acc, time.perf_counter() - start))
    print(f"\n{len(args.seeds)} seeds {args.seeds}, {args.epochs} epochs, digits MLP, CPU")
    print("| data | strategy | metric | mean ± sd | per seed | test/acc mean |")
    print("|---|---|---|---|---|---|")
    for setup, strategy, key, vals, acc, _ in rows:
        sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
        per_seed = ", ".join(f"{v:.3f}" for v in vals)
        print(
            f"| {setup} | {strategy} | {key} | {statistics.mean(vals):.3f} ± {sd:.3f} | {per_seed} | "
            f"{statistics.mean(acc):.3f} |"
        )


if __name__ == "__main__":
    main()
