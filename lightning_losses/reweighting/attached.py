"""The reweighter as the mixin's ``reweighter`` slot sees it (:class:`AttachedReweighter`: replays the weights of the
unperturbed pass in a perturbed one), and what :class:`~lightning_losses.reweighting.SampleReweighting` reads from the
Trainer to size its strategy (:func:`dataset_length`, :func:`datamodule_groups`)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import DataLoader

from lightning_losses._compat import attached_trainer
from lightning_losses.reweighting.base import Reweighter

__all__ = ["AttachedReweighter", "datamodule_groups", "dataset_length"]


class AttachedReweighter:
    """What the mixin calls: the reweighter in passes at the unperturbed weights; in a suppressed (perturbed) pass,
    the weights that the same ``compute_loss`` call of the optimizer step got at :math:`w`.

    The weights of every call at :math:`w` since the step began are kept in order (one per micro-batch under gradient
    accumulation, or more when ``training_step`` calls ``compute_loss`` several times); each perturbed pass (a new
    value of the module's ``objective_suppressed_passes``) re-runs the step's calls in that order and call ``i`` gets
    the ``i``-th weights. The reweighter's state therefore advances once per call at :math:`w` and no collective runs
    in a perturbed pass.
    """

    plugin_name = "SampleReweighting"

    def __init__(self, reweighter: Reweighter, module: Any) -> None:
        self.reweighter, self.module = reweighter, module
        self.recorded: list[torch.Tensor] = []  # this step's weights at w, in call order
        self._step: Any = None
        self._pass: int | None = None  # the suppressed pass being replayed (None: the last call was at w)
        self._cursor = 0

    def __call__(self, losses: torch.Tensor, **inputs: Any) -> torch.Tensor:
        module = self.module
        if getattr(module, "objective_logging_suppressed", False) and self.recorded:
            return self._replayed(losses, getattr(module, "objective_suppressed_passes", 0))
        trainer = attached_trainer(module)
        step = None if trainer is None else trainer.global_step  # None outside a Trainer: keep the last call only
        if step is None or step != self._step or self._pass is not None:
            self.recorded.clear()
        self._step, self._pass = step, None
        weights = self.reweighter(losses=losses, **inputs)
        self.recorded.append(weights)
        return weights

    def _replayed(self, losses: torch.Tensor, pass_id: int) -> torch.Tensor:
        if pass_id != self._pass:  # a new perturbed pass starts again at the step's first call
            self._pass, self._cursor = pass_id, 0
        if self._cursor >= len(self.recorded):  # a pass that was not announced (a hand-written loop): wrap around
            self._cursor = 0
        weights = self.recorded[self._cursor]
        if weights.shape != losses.shape:
            raise ValueError(
                f"SampleReweighting: call {self._cursor} of `compute_loss` in a perturbed pass has losses of shape "
                f"{list(losses.shape)}, but the same call at the unperturbed weights had {list(weights.shape)}; a "
                "perturbed pass must repeat the optimizer step's `compute_loss` calls in the same order"
            )
        self._cursor += 1
        return weights


def dataset_length(loader: Any) -> int | None:
    """Length of a single training DataLoader's dataset, or ``None`` (several loaders, iterable dataset)."""
    try:
        return len(loader.dataset) if isinstance(loader, DataLoader) else None
    except TypeError:
        return None


def datamodule_groups(trainer: Any) -> int | None:
    """The attached datamodule's ``num_groups`` (a positive int), or ``None``."""
    value = getattr(getattr(trainer, "datamodule", None), "num_groups", None)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None
