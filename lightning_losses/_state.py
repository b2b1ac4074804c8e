"""Step-state helpers shared by the pillars that keep state across steps (reweighting, perturbation, entropy).

* :func:`step_skipped`: whether Lightning skipped this batch's optimisation (``training_step`` returned ``None``),
  so a callback puts back what the batch changed (see DESIGN, "Non-finite values and skipped steps").
* :func:`representative`: for duplicated dataset indices in one (global) batch, the one entry that writes a
  per-sample row (reweighting's per-sample stores, SAF's trajectory table).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["representative", "step_skipped"]


def step_skipped(pl_module: Any, outputs: Any) -> bool:
    """Whether Lightning skipped the optimisation of this batch because ``training_step`` returned ``None``
    (automatic optimization hands ``on_train_batch_end`` an empty dict then)."""
    if not getattr(pl_module, "automatic_optimization", True):
        return False
    return outputs is None or (isinstance(outputs, Mapping) and outputs.get("loss") is None)


def representative(index: torch.Tensor, preferred: torch.Tensor | None = None) -> torch.Tensor:
    """For every entry, the position of the first entry with the same index value, taking ``preferred`` entries
    before the others (one stable sort, no host sync).

    Example:
        >>> representative(torch.tensor([4, 2, 4, 7, 2]))
        tensor([0, 1, 0, 3, 1])
        >>> representative(torch.tensor([4, 4]), preferred=torch.tensor([False, True]))
        tensor([1, 1])
    """
    index = index.long()  # `index * 2` must not overflow a narrow dtype
    key = index * 2 if preferred is None else index * 2 + (~preferred).long()
    sorted_key, order = torch.sort(key, stable=True)
    value = sorted_key >> 1
    rep = torch.empty_like(order)
    rep[order] = order[torch.searchsorted(value, value)]  # first sorted position of each value
    return rep
