"""What keeps a reweighter's state clean: non-finite values, out-of-range ids and skipped steps.

* **Non-finite values.** A sample whose loss (or another per-sample float the strategy reads, e.g. WPO's
  log-weights) is NaN / inf is treated exactly as a masked sample (``sample_mask`` ``False``): it takes no part in
  any statistic, per-sample store or normalisation, and gets weight 0. Its loss is replaced by 0 before any
  strategy sees it (so ``0 * nan`` cannot leak into a sum). The decision is per sample, so it is the same on every
  rank (``"cat"`` statistics gather the mask with the samples). The samples are counted in the reweighter's
  ``nonfinite`` state (summed over ranks in the step's one packed collective) and logged as ``reweight/nonfinite``.
* **Ids.** Group / class ids that index a table are range-checked on the valid samples. Where the step syncs
  statistics, ``[max id, -min id]`` travels in the same packed buffer (no extra collective) and the check runs on
  the synced values, so every rank raises the same error; on CPU the error names the value, on an accelerator it is
  a device-side assert (no host sync).
* **Skipped steps.** :meth:`Reweighter.snapshot` / :meth:`Reweighter.restore` undo one micro-batch: the state
  tensors (never modified in place) are kept by reference, and the per-sample stores journal the rows they
  overwrite (see :meth:`~lightning_losses.reweighting.store.PerSampleStore.begin_journal`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from lightning_losses._state import step_skipped  # moved to the shared layer; re-exported here

__all__ = [
    "ID_KEYS",
    "Undoable",
    "check_id_range",
    "check_inputs",
    "check_mask",
    "id_range",
    "nonfinite_mask",
    "step_skipped",
]

ID_KEYS = ("group", "index", "target")  # integer ids a reweighter may index with


def check_inputs(reweighter: Any, losses: Any, inputs: Mapping[str, Any]) -> None:
    """Validate ``losses`` and the inputs ``reweighter`` requires (present; ids: integer tensors like ``losses``)."""
    if not isinstance(losses, torch.Tensor) or losses.ndim != 1 or not losses.is_floating_point():
        shape = list(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise ValueError(f"reweighter `{reweighter.strategy}`: `losses` must be a floating tensor [N], got {shape}")
    given = ", ".join(f"`{k}`" for k in inputs) or "none"
    for key in reweighter.requires:
        if inputs.get(key) is None:
            hint = reweighter.missing_hints.get(key, "")
            raise ValueError(
                f"reweighter `{reweighter.strategy}` needs `{key}` in compute_loss(...) (got {given}); "
                f"pass e.g. compute_loss(..., {key}=batch['{key}']){hint}"
            )
        value = inputs[key]
        if key in ID_KEYS and (
            not isinstance(value, torch.Tensor) or value.shape != losses.shape or value.is_floating_point()
        ):
            got = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(
                f"reweighter `{reweighter.strategy}`: `{key}` must be an integer tensor of shape {list(losses.shape)}, "
                f"got {got}"
            )


def check_mask(mask: Any, losses: torch.Tensor) -> torch.Tensor | None:
    """Validate ``sample_mask`` (``None`` or a boolean-able tensor shaped as ``losses``)."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or mask.shape != losses.shape:
        got = f"{mask.dtype} {list(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"`sample_mask` must be a boolean tensor of shape {list(losses.shape)}, got {got}")
    return mask.to(torch.bool)


def nonfinite_mask(
    losses: torch.Tensor, inputs: Mapping[str, Any], keys: Iterable[str], mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(counted, nonfinite_count, clean_losses)``: the mask of samples that count (``mask`` and every value
    finite), the number of counted-but-non-finite samples (0-d ``int64``) and ``losses`` with non-finite entries set
    to 0 (no host sync)."""
    finite = torch.isfinite(losses)
    for key in keys:
        value = inputs.get(key)
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.shape == losses.shape:
            finite = finite & torch.isfinite(value)
    counted = finite if mask is None else mask & finite
    bad = (~finite if mask is None else mask & ~finite).sum()
    return counted, bad, torch.where(finite, losses, torch.zeros_like(losses))


def id_range(ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``float64 [max id, -min id]`` over the valid samples (``[-1, 0]`` when none): reduced with ``"max"``."""
    ids = ids.long()
    valid = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
    if ids.numel() == 0:
        return torch.tensor([-1.0, 0.0], dtype=torch.float64, device=ids.device)
    hi = ids.masked_fill(~valid, -1).max()
    lo = ids.masked_fill(~valid, 0).min()
    return torch.stack([hi, -lo]).to(torch.float64)


def check_id_range(strategy: str, key: str, arg: str, size: int | None, extremes: torch.Tensor) -> None:
    """Raise when the ids summarised by :func:`id_range` fall outside ``[0, size)`` (``size`` ``None``: only the
    sign is checked). ``ValueError`` naming ``key``, the value and ``arg`` (the argument that sets ``size``) on CPU;
    a device-side assert elsewhere (no host sync)."""
    hi_t, neg_lo_t = extremes[0], extremes[1]
    ok = neg_lo_t <= 0 if size is None else (neg_lo_t <= 0) & (hi_t < size)
    bound = ">= 0" if size is None else f"in [0, {size}) (`{arg}`)"
    try:  # on CPU an immediate error (read in C++: no Python host read on the hot path), elsewhere device-side
        torch._assert_async(ok, f"reweighter `{strategy}`: `{key}` ids must be {bound}")
        return
    except RuntimeError:
        if extremes.device.type != "cpu":
            raise
    hi, lo = int(hi_t), -int(neg_lo_t)
    if lo < 0:
        raise ValueError(
            f"reweighter `{strategy}`: `{key}` ids must be >= 0 (0-based positions in a table sized by `{arg}`), "
            f"got {lo}"
        )
    raise ValueError(
        f"reweighter `{strategy}`: `{key}` id {hi} is out of range for `{arg}` = {size} (ids must be in "
        f"[0, {size})); set `{arg}` to the true number"
    )


class Undoable:
    """:meth:`snapshot` / :meth:`restore` of a :class:`~lightning_losses.reweighting.Reweighter` (its base)."""

    _states: dict[str, Any]
    _stores: dict[str, Any]
    _staged: dict[str, torch.Tensor]
    _unsynced_nonfinite: torch.Tensor | None
    last: dict[str, torch.Tensor]

    def snapshot(self) -> dict[str, Any]:
        """A cheap undo point (the callback takes one at every micro-batch start): state tensors by reference (a step
        replaces them, never writes into them), the staged states, and a fresh journal in every per-sample store."""
        for store in self._stores.values():
            store.begin_journal()
        return {
            "states": {name: getattr(self, name) for name in self._states},
            "staged": dict(self._staged),
            "unsynced": self._unsynced_nonfinite,
            "last": self.last,
            "attrs": self._extra_snapshot(),
        }

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Undo everything since :meth:`snapshot` (states, staged states, per-sample store rows)."""
        for name, value in snapshot["states"].items():
            setattr(self, name, value)
        self._staged = dict(snapshot["staged"])
        self._unsynced_nonfinite, self.last = snapshot["unsynced"], snapshot["last"]
        for name, value in snapshot["attrs"].items():
            setattr(self, name, value)
        for store in self._stores.values():
            store.rollback()

    def _extra_snapshot(self) -> dict[str, Any]:
        """Plain attributes (not declared states) that a step changes and :meth:`restore` must put back."""
        return {}
