"""Shared fixed batches for the reweighting tests (module-level so DDP workers can import them)."""

from __future__ import annotations

import torch

NUM_CLASSES = 4
NUM_GROUPS = 3
DATASET = 24
BATCH = 8
STEPS_PER_EPOCH = DATASET // BATCH

# strategy name -> kwargs used by the parity / resume tests
STRATEGIES = {
    "loss_softmax": {"temperature": 0.7},
    "lin_upper": {"delta": 1.0, "temperature": 0.5, "warmup_steps": 2},
    "quadratic": {"delta": 2.0, "temperature": 1.0},
    "extremes": {"delta": 1.0, "temperature": 0.8},
    "cvar": {"alpha": 0.3},
    "top_k": {"k": 3},
    "spectral_risk": {"spectrum": [0.0, 1.0, 2.0, 4.0]},
    "loss_truncation": {"drop_fraction": 0.25},
    "group_dro": {"step_size": 0.5},
    "class_balanced": {"beta": 0.99},
    "ema_class_loss": {"momentum": 0.8, "temperature": 0.5},
    "jtt": {"upweight": 4.0, "stage_epochs": 1},
    "per_sample_ema": {"momentum": 0.7, "temperature": 0.5},
    "per_class_normalized": {},  # issue 20
    "storm": {"meta_lr": 2.0, "hidden": 4},  # issue 20
}
STATEFUL = ("lin_upper", "group_dro", "class_balanced", "ema_class_loss", "jtt", "per_sample_ema")
# extra kwargs that fix every lazily-sized state up front (no sizing collective or host sync in any step)
SIZED = {
    "group_dro": {"num_groups": NUM_GROUPS},
    "ema_class_loss": {"num_classes": NUM_CLASSES},
    "class_balanced": {"num_classes": NUM_CLASSES, "num_samples": DATASET},
    "per_sample_ema": {"num_samples": DATASET},
    "jtt": {"num_samples": DATASET},
}


def make_steps(num_steps: int, seed: int = 0) -> list[tuple[int, dict[str, torch.Tensor]]]:
    """``[(epoch, {losses, logits, target, group, index})]``: every epoch visits the 24 samples once, shuffled."""
    g = torch.Generator().manual_seed(seed)
    base_target = torch.randint(0, NUM_CLASSES, (DATASET,), generator=g)
    base_group = torch.randint(0, NUM_GROUPS, (DATASET,), generator=g)
    base_group[:NUM_GROUPS] = torch.arange(NUM_GROUPS)
    steps = []
    perm = None
    for s in range(num_steps):
        epoch, pos = divmod(s, STEPS_PER_EPOCH)
        if pos == 0:
            perm = torch.randperm(DATASET, generator=g)
        index = perm[pos * BATCH : (pos + 1) * BATCH]
        logits = torch.randn(BATCH, NUM_CLASSES, generator=g, dtype=torch.float64)
        target = base_target[index]
        losses = torch.nn.functional.cross_entropy(logits, target, reduction="none")
        steps.append(
            (epoch, {"losses": losses, "logits": logits, "target": target, "group": base_group[index], "index": index})
        )
    return steps


def run_steps(reweighter, steps, *, split=None):
    """Run ``steps`` through ``reweighter``; ``split=(start, stop)`` feeds only that slice of every batch."""
    weights = []
    for epoch, inputs in steps:
        reweighter.set_epoch(epoch)
        part = inputs if split is None else {k: v[split[0] : split[1]] for k, v in inputs.items()}
        weights.append(reweighter(**part))
    return weights
