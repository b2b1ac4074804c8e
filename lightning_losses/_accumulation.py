"""Objective terms over the (global) batch under gradient accumulation: found on the fit's first training call and
named in one :class:`~lightning_losses.errors.AccumulationWarning`.

With ``accumulate_grad_batches = k`` every ``compute_loss`` call sees one micro-batch, so a term whose value depends
on the whole batch is computed per micro-batch (over all ranks): batch-level losses (set-level Dice / AnyLoss /
soft F1, the environment penalties ``irm_v1`` / ``vrex`` / ``coral``, ``vne``, Proxy-Anchor) and per-sample losses
with batch statistics (``normalization="token"``'s global token count, ``auc_pairwise``'s pairs, ``ens_loss``'s and
the AOT losses' sorts, STEER's range, Clip-Cov / KL-Cov, PF-PPO's weight normalisation). The step's gradient is then
the mean of the k micro-batch objectives, **not** the gradient of one batch of ``k*B`` (which per-sample terms with
uniform weights give exactly). A term is recognised by ``batch_level``, by ``batch_statistics`` (SOVR's margin
ranking, MAT's calibration: batch statistics without a global reduction in one process or with ``gather=False``) or
by a global reduction of :mod:`lightning_losses.distributed` in its forward (counted even in one process).
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning_losses import distributed
from lightning_losses.errors import AccumulationWarning

__all__ = ["GlobalTermProbe"]


class GlobalTermProbe:
    """Forward hooks on every term's loss for one ``compute_loss`` call; :meth:`report` removes them and warns."""

    def __init__(self, objective: Any) -> None:
        self.found: list[str] = []
        self._handles = []
        for term in objective.terms:
            self._handles.append(term.loss.register_forward_pre_hook(self._before))
            self._handles.append(term.loss.register_forward_hook(self._after(term)))
        self._count = 0

    def _before(self, module: Any, args: Any) -> None:
        self._count = distributed.global_reductions()

    def _after(self, term: Any) -> Any:
        def hook(module: Any, args: Any, output: Any) -> None:
            batch = term.loss.batch_level or getattr(term.loss, "batch_statistics", False)
            if batch or distributed.global_reductions() != self._count:
                self.found.append(term.name)

        return hook

    def report(self, accumulate: int) -> None:
        """Remove the hooks; warn once naming the batch-level terms found (if any)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        if self.found:
            names = ", ".join(f"`{n}`" for n in self.found)
            warnings.warn(
                f"objective term(s) {names} are computed over the whole batch, and with accumulate_grad_batches="
                f"{accumulate} each micro-batch is its own batch: the step's gradient is the mean of the "
                f"{accumulate} micro-batch objectives, not the gradient of one batch {accumulate} times larger (use "
                f"accumulate_grad_batches=1 with a larger batch for the exact batch-level value)",
                AccumulationWarning,
                stacklevel=3,
            )
