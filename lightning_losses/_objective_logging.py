"""The objective's own diagnostics, logged by :meth:`~lightning_losses.LossesMixin.compute_loss` in training.

* ``objective/coef/{term}``: each term's coefficient at the step (its schedule's value);
* ``objective/nonfinite``: samples whose per-sample objective total was NaN / inf since the previous logging step,
  summed over the data-parallel group (a loss that goes non-finite shows where the step's ``train/loss`` does not
  say how many samples did it);
* ``objective/nonfinite/{term}``: the same count for each term's own values (before its coefficient; the extra terms
  of plug-ins too), which names the term that went non-finite; for a batch-level term (one scalar per step), the
  steps on which it was.

All follow the Trainer's ``log_every_n_steps`` (nothing at all with ``log_every_n_steps=0``). A training step that
does not log runs no tensor operation for them: it keeps detached references to the step's per-sample values (no
copy, no kernel, no host read), and the counting (one pass over the kept values per term) runs on the Trainer's
logging steps, or every :data:`FOLD_EVERY` steps to bound what is kept. On a logging step the counts are summed over
the data-parallel group (one small collective, every rank alike) and go with the coefficients to
``trainer.callback_metrics`` (monitorable) and into the Trainer's own row of ``train/*`` values
(:func:`~lightning_losses._log_rows.log_scalars`: no ``LightningModule.log`` result object per key). The counts are
per-interval values: a checkpoint written between two logs keeps the interval's counts so far (summed over the
data-parallel group, restored on rank 0: :func:`save_nonfinite_counts`), so that a resumed fit logs what an
uninterrupted one does.
"""

from __future__ import annotations

from typing import Any

import torch

from lightning_losses._compat import log_step, should_update_logs
from lightning_losses._deferred import FOLD_EVERY
from lightning_losses._log_rows import log_scalars
from lightning_losses.distributed import global_sum, global_sum_values, rank_zero_share

__all__ = [
    "CHECKPOINT_KEY",
    "FOLD_EVERY",
    "load_nonfinite_counts",
    "log_objective_diagnostics",
    "save_nonfinite_counts",
]

#: the checkpoint entry of the interval's non-finite counts
CHECKPOINT_KEY = "lightning_losses_objective_nonfinite"

_PENDING, _COUNT, _LOGGED_AT = "_ll_nonfinite_pending", "_ll_nonfinite_count", "_ll_nonfinite_logged_at"


def log_objective_diagnostics(module: Any, trainer: Any, out: Any) -> None:
    """Keep ``out``'s per-sample values for the non-finite counts and, on the Trainer's logging steps, log the counts
    and the coefficients (call on every rank, after each training ``compute_loss`` that is not a suppressed pass)."""
    if not trainer.log_every_n_steps:  # Lightning logs no step then: nothing would ever be read
        return
    state = module.__dict__
    logged_at = state.get(_LOGGED_AT)
    if logged_at is not None and log_step(trainer) != logged_at:  # the first call after the interval's log
        del state[_LOGGED_AT]
        state.pop(_PENDING, None)
        state.pop(_COUNT, None)
    per_sample = out.per_sample
    # `None`: the term is the total itself (one term, coefficient 1), counted once
    terms = {name: None if v is per_sample else v.detach() for name, v in out.term_values.items()}
    pending = state.get(_PENDING)
    if pending is None:
        pending = state[_PENDING] = []
    pending.append((per_sample.detach(), terms))
    logging = should_update_logs(trainer)
    if not logging and len(pending) < FOLD_EVERY:
        return
    names, counts = _fold(state.get(_COUNT), state.pop(_PENDING))
    state[_COUNT] = (names, counts)
    if not logging:
        return
    # micro-batches of one logging step each log the interval's count so far (the last one, complete, is kept)
    state[_LOGGED_AT] = log_step(trainer)
    metrics: dict[str, Any] = {f"objective/coef/{name}": float(c) for name, c in out.coefficients.items()}
    reduced = [float(v) for v in global_sum_values(counts)]  # one host read (the row reads its values anyway)
    metrics["objective/nonfinite"] = reduced[0]
    metrics.update({f"objective/nonfinite/{name}": v for name, v in zip(names, reduced[1:])})
    log_scalars(trainer, module, metrics)  # in the Trainer's row of the step, with `train/*`


def _fold(
    previous: tuple[list[str], torch.Tensor] | None, pending: list[tuple[torch.Tensor, dict[str, Any]]]
) -> tuple[list[str], torch.Tensor]:
    """Add the non-finite counts of the ``pending`` steps to ``previous`` (``(term names, int64 [1 + terms])``, the
    total first); a term absent from some steps counts over the steps that have it."""
    names = [] if previous is None else list(previous[0])
    columns: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    totals = []
    for total, terms in pending:
        totals.append(total)
        for name, values in terms.items():
            column = columns.get(name)
            if column is None:
                names.append(name)
                column = columns[name] = []
            column.append(total if values is None else values if values.ndim == 1 else values.reshape(-1))
    parts = [totals] + [columns[name] for name in names]
    lengths = [sum(t.numel() for t in part) for part in parts]
    # every value of every column in one pass: one concatenation, one test, one sum per column (`x - x` is 0 for a
    # finite value, NaN for NaN / inf: two kernels, where `isfinite` + `logical_not` run five)
    flat = torch.cat([t for part in parts for t in part])
    bad = (flat - flat).ne(0) if flat.is_floating_point() else torch.zeros_like(flat, dtype=torch.bool)
    if len(set(lengths)) == 1:
        counts = bad.view(len(parts), lengths[0]).sum(1)
    else:  # a batch-level term, or a term missing from some steps
        counts = torch.stack([segment.sum() for segment in bad.split(lengths)])
    if previous is not None:
        counts[: previous[1].numel()] += previous[1].to(counts.device)
    return names, counts


def save_nonfinite_counts(module: Any, checkpoint: dict[str, Any]) -> None:
    """Put the non-finite counts since the last log under :data:`CHECKPOINT_KEY` of ``checkpoint``, summed over the
    data-parallel group (a collective: ``on_save_checkpoint`` runs on every rank); nothing before the first count."""
    state = module.__dict__
    pending = state.pop(_PENDING, None)
    if pending:
        state[_COUNT] = _fold(state.get(_COUNT), pending)
    if state.get(_COUNT) is None:
        return
    names, counts = state[_COUNT]
    checkpoint[CHECKPOINT_KEY] = {
        "names": list(names),
        "counts": global_sum(counts).cpu(),
        "logged_at": state.get(_LOGGED_AT),
    }


def load_nonfinite_counts(module: Any, checkpoint: dict[str, Any]) -> None:
    """Set back :func:`save_nonfinite_counts`' counts: the global ones on rank 0, zeros on the others (the next log
    sums the ranks); a checkpoint without them starts the interval empty."""
    state = module.__dict__
    for key in (_PENDING, _COUNT, _LOGGED_AT):
        state.pop(key, None)
    saved = checkpoint.get(CHECKPOINT_KEY)
    if saved is None:
        return
    state[_COUNT] = (list(saved["names"]), rank_zero_share(saved["counts"]))
    if saved.get("logged_at") is not None:
        state[_LOGGED_AT] = saved["logged_at"]
