"""Memorization-aware training (``mat``) on the spurious digits (p = 0.95 in training): worst-group test accuracy
against ERM, 3 seeds, printed as a markdown table.

Held-out logits: 2-fold cross-fitting on the training split (the same MLP trained with AdamW on one random half
predicts the other half, and the other way round), saved as a ``[num_train, 10]`` table and given to the loss as
``held_out``. The reference takes them from XRM instead (cross-fitting with label flipping), which this demo does not
reproduce.

Usage::

    PYTHONPATH=$PWD python bench/mat_demo.py [--seeds 1 2 3] [--epochs 20] [--temperatures 0.1 1.0]

Each ``mat`` run is ``lightning-losses fit --seed S --data.spurious 0.95 --objective
'{mat: {num_classes: 10, temperature: T, held_out: PATH}}'`` (run in-process here).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from lightning_losses.demo import DigitsClassifier, DigitsDataModule
from lightning_losses.runner import run_fit


def held_out_table(seed: int, epochs: int, spurious: float = 0.95) -> torch.Tensor:
    """``[num_train, C]`` logits of every training sample from a model trained on the other half of the split."""
    dm = DigitsDataModule(spurious=spurious, seed=seed)
    dm.setup()
    train = dm.datasets["train"].tensors
    x, y = train["x"], train["target"]
    n = len(y)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    halves = (perm[: n // 2], perm[n // 2 :])
    table = torch.zeros(n, dm.num_classes)
    for fit_rows, predict_rows in (halves, halves[::-1]):
        torch.manual_seed(seed)
        model = DigitsClassifier(num_features=dm.num_features, num_classes=dm.num_classes)
        opt = torch.optim.AdamW(model.parameters(), lr=model.lr, weight_decay=model.weight_decay)
        model.train()
        for _ in range(epochs):
            order = fit_rows[torch.randperm(len(fit_rows), generator=g)]
            for start in range(0, len(order), dm.batch_size):
                rows = order[start : start + dm.batch_size]
                opt.zero_grad()
                F.cross_entropy(model(x[rows]), y[rows]).backward()
                opt.step()
        model.eval()
        with torch.no_grad():
            table[predict_rows] = model(x[predict_rows])
    return table


def _fit(seed: int, epochs: int, objective: str) -> dict[str, float]:
    common = [
        f"seed={seed}",
        f"trainer.max_epochs={epochs}",
        "data.spurious=0.95",
        objective,
        "callbacks={}",
        "logger=none",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "trainer.enable_checkpointing=false",
        "trainer.accelerator=cpu",
    ]
    return run_fit(None, common, print_results=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--temperatures", type=float, nargs="+", default=[0.1, 1.0])
    args = parser.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            r = _fit(seed, args.epochs, "objective={cross_entropy: {}}")
            rows.setdefault("erm", []).append((r["test/worst_group_acc"], r["test/acc"]))
            path = Path(tmp) / f"held_out_{seed}.pt"
            torch.save(held_out_table(seed, args.epochs), path)
            for t in args.temperatures:
                spec = f"objective={{mat: {{num_classes: 10, temperature: {t}, held_out: {path}}}}}"
                r = _fit(seed, args.epochs, spec)
                rows.setdefault(f"mat (T={t})", []).append((r["test/worst_group_acc"], r["test/acc"]))
    print(f"\n{len(args.seeds)} seeds {args.seeds}, {args.epochs} epochs, spurious digits (p = 0.95), digits MLP, CPU")
    print("| objective | worst-group test acc | per seed | test acc |")
    print("|---|---|---|---|")
    for name, vals in rows.items():
        wg = [v[0] for v in vals]
        sd = statistics.stdev(wg) if len(wg) > 1 else 0.0
        per_seed = ", ".join(f"{v:.3f}" for v in wg)
        acc = statistics.mean(v[1] for v in vals)
        print(f"| {name} | {statistics.mean(wg):.3f} ± {sd:.3f} | {per_seed} | {acc:.3f} |")


if __name__ == "__main__":
    main()
