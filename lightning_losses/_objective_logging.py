"""The objective's own diagnostics, logged by :meth:`~lightning_losses.LossesMixin.compute_loss` in training.

* ``objective/coef/{term}``: each term's coefficient at the step (its schedule's value);
* ``objective/nonfinite``: samples whose per-sample objective total was NaN / inf since the previous logging step,
  summed over the data-parallel group (a loss that goes non-finite shows where the step's ``train/loss`` does not
  say how many samples did it).

Both follow the Trainer's ``log_every_n_steps``: a training step costs three tensor operations on the device (the
count, no host read); on the Trainer's logging steps the count is summed over the data-parallel group (one small
collective, every rank alike) and both go to ``LightningModule.log_dict``, so they are monitorable and aligned with
``train/*``. The count is a per-interval value, not state: nothing to checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_losses._compat import log_step, should_update_logs
from lightning_losses.distributed import global_sum

__all__ = ["log_objective_diagnostics"]

_COUNT, _LOGGED_AT = "_ll_nonfinite_count", "_ll_nonfinite_logged_at"


def log_objective_diagnostics(module: Any, trainer: Any, out: Any) -> None:
    """Count ``out``'s non-finite per-sample totals and, on the Trainer's logging steps, log the count and the
    coefficients (call on every rank, after each training ``compute_loss`` that is not a suppressed pass)."""
    state = module.__dict__
    at = log_step(trainer)
    count = state.get(_COUNT)
    if count is None or state.get(_LOGGED_AT, at) != at:  # the first call after the interval's log: a new interval
        count = None
        state.pop(_LOGGED_AT, None)
    per_sample = out.per_sample.detach()
    bad = torch.isfinite(per_sample).logical_not_().sum()
    if count is None or count.device != bad.device:
        count = bad
    else:
        count.add_(bad)
    state[_COUNT] = count
    if not should_update_logs(trainer):
        return
    # micro-batches of one logging step each log the interval's count so far (the last one, complete, is kept)
    state[_LOGGED_AT] = at
    metrics = {f"objective/coef/{name}": float(c) for name, c in out.coefficients.items()}
    metrics["objective/nonfinite"] = global_sum(count).to(torch.float32)
    module.log_dict(metrics, on_step=True, on_epoch=False, sync_dist=False, batch_size=1)
