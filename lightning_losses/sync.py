"""Reduce per-step statistics over the data-parallel ranks, identically on every rank (the one sync point of a
reweighting step).

Shared by the pillars that keep state over the global batch (reweighters, SAF's trajectory table).
:func:`sync_statistics` takes local statistics (a dict of tensors) with a declared reduction each:

* ``"sum"`` / ``"mean"`` / ``"max"`` / ``"min"``: a fixed-shape tensor, reduced element-wise over ranks;
* ``"cat"``: a per-sample tensor ``[n_rank, ...]`` concatenated over ranks in rank order (the global batch).

Under DDP it issues at most **two** collectives: an ``all_gather`` of the local sample counts (only when there are
``"cat"`` statistics) and one ``all_gather`` of a single packed float64 buffer holding everything. The reductions
are then done locally, in rank order, so every rank obtains bit-identical results (and a state updated from them
stays identical). Integers up to 2**53 (dataset indices) and booleans survive the float64 packing exactly.
Without a process group it is the identity.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.distributed as dist

from lightning_losses.distributed import data_parallel_group, is_distributed, rank, world_size

__all__ = ["REDUCTIONS", "sync_statistics"]

REDUCTIONS = ("sum", "mean", "max", "min", "cat")


def sync_statistics(
    stats: Mapping[str, torch.Tensor], reductions: Mapping[str, str]
) -> tuple[dict[str, torch.Tensor], int]:
    """Reduce ``stats`` over all ranks with ``reductions[name]``.

    Args:
        stats: local tensors; every rank must pass the same names, and fixed-shape ones the same shapes.
        reductions: ``name -> one of REDUCTIONS`` for every name in ``stats``.

    Returns:
        ``(reduced, offset)``: the reduced tensors (original dtypes) and this rank's offset in the ``"cat"``
        (global-batch) order, so ``global[offset:offset + n_local]`` is this rank's slice (0 without ``"cat"``).

    Example:
        >>> out, offset = sync_statistics({"x": torch.tensor([1.0, 2.0])}, {"x": "cat"})  # one process
        >>> out["x"], offset
        (tensor([1., 2.]), 0)
    """
    for name in stats:
        if reductions.get(name) not in REDUCTIONS:
            raise ValueError(f"statistic `{name}` needs a reduction in {REDUCTIONS}, got {reductions.get(name)!r}")
    names = sorted(stats)
    cat_names = [n for n in names if reductions[n] == "cat"]
    fixed_names = [n for n in names if reductions[n] != "cat"]
    sizes = {int(stats[n].shape[0]) for n in cat_names}
    if len(sizes) > 1:
        raise ValueError(f"`cat` statistics must share their first dimension, got {sorted(sizes)} for {cat_names}")
    if not is_distributed() or not stats:  # nothing to reduce: no collective at all
        return {k: v.detach() if v.requires_grad else v for k, v in stats.items()}, 0
    ref = stats[names[0]]
    device = ref.device
    n_local = sizes.pop() if sizes else 0
    ranks = world_size()
    if cat_names:
        local_size = torch.tensor([n_local], dtype=torch.int64, device=device)
        all_sizes_t = [torch.zeros_like(local_size) for _ in range(ranks)]
        dist.all_gather(all_sizes_t, local_size, group=data_parallel_group())
        all_sizes = [int(s) for s in torch.cat(all_sizes_t).tolist()]
    else:
        all_sizes = [0] * ranks
    max_n = max(all_sizes)
    fixed = [stats[n].detach().reshape(-1).to(torch.float64) for n in fixed_names]
    widths = [math.prod(stats[n].shape[1:]) for n in cat_names]
    rows = [
        stats[n].detach().reshape(n_local, w).to(torch.float64) for n, w in zip(cat_names, widths)
    ]  # n_local may be 0
    per_sample = torch.cat(rows, dim=1) if rows else torch.zeros(n_local, 0, dtype=torch.float64, device=device)
    padded = per_sample.new_zeros(max_n, per_sample.shape[1])
    padded[:n_local] = per_sample
    flat = torch.cat([*fixed, padded.reshape(-1)]) if fixed or padded.numel() else padded.reshape(-1)
    gathered = [torch.empty_like(flat) for _ in range(ranks)]
    dist.all_gather(gathered, flat.contiguous(), group=data_parallel_group())
    stacked = torch.stack(gathered)  # [ranks, L]
    out: dict[str, torch.Tensor] = {}
    pos = 0
    for n in fixed_names:
        t = stats[n]
        size = t.numel()
        block = stacked[:, pos : pos + size]
        pos += size
        red = reductions[n]
        if red == "sum":
            value = block.sum(0)
        elif red == "mean":
            value = block.mean(0)
        elif red == "max":
            value = block.max(0).values
        else:
            value = block.min(0).values
        out[n] = value.reshape(t.shape).to(t.dtype)
    width = sum(widths)
    samples = stacked[:, pos:].reshape(ranks, max_n, width)
    merged = torch.cat([samples[r, : all_sizes[r]] for r in range(ranks)], dim=0)
    col = 0
    for n, w in zip(cat_names, widths):
        t = stats[n]
        out[n] = merged[:, col : col + w].reshape(-1, *t.shape[1:]).to(t.dtype)
        col += w
    return out, sum(all_sizes[: rank()])
