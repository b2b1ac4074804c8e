"""Public family bases of the built-in losses: a subclass gets its ``family`` and the inputs handling its members share.

Each base only fixes what the whole family has in common (the ``family`` label, shared validated arguments, the
``sample_mask``); the member writes ``__init__`` (validated hyperparameters) and ``forward`` (per-sample loss), as
described in :class:`~lightning_losses.losses.base.Loss`. Bases with more logic live next to their members:
:class:`~lightning_losses.losses.policy.PolicyLoss` and :class:`~lightning_losses.losses.entropy.EntropyTerm`.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from lightning_losses._validation import check_bool, check_choice, check_int, check_number
from lightning_losses._validation.tensors import not_ignored
from lightning_losses.functional import metric_learning as MF
from lightning_losses.functional.aggregation import NORMALIZATIONS
from lightning_losses.functional.multilabel import REDUCTIONS
from lightning_losses.losses.base import Loss

__all__ = [
    "BinaryLoss",
    "DistillationLoss",
    "EmbeddingLoss",
    "LabelLoss",
    "PreferenceLoss",
    "RegressionLoss",
    "SetLevelLoss",
    "TokenLoss",
]


class LabelLoss(Loss):
    """Multi-class loss on ``logits [N, C]`` and integer labels ``target [N]`` (or soft targets ``[N, C]``).

    A subclass stores ``self.ignore_index`` (validated); :meth:`sample_mask` leaves those labels out.
    """

    family = "multiclass"
    ignore_index: int

    def sample_mask(self, *, target: torch.Tensor, **_: torch.Tensor) -> torch.Tensor | None:
        """Samples whose label is not ``ignore_index`` (``None`` for soft targets)."""
        if target.is_floating_point():
            return None
        return not_ignored(target, self.ignore_index)


class BinaryLoss(Loss):
    """Binary / multi-label loss on ``logits [N]`` or ``[N, K]`` and 0 / 1 (or soft) ``target`` of the same shape."""

    family = "binary"


class SetLevelLoss(BinaryLoss):
    """Binary loss that can be set-level: ``reduction="global"`` makes it batch-level (one scalar for the batch)."""

    def _set_reduction(self, reduction: str) -> None:
        self.reduction = check_choice("reduction", reduction, REDUCTIONS)
        self.batch_level = self.reduction == "global"


class RegressionLoss(Loss):
    """Regression loss: ``pred`` and ``target`` (or a distributional head's ``logits`` and a real ``target``)."""

    family = "regression"


class DistillationLoss(Loss):
    """Distillation loss on student ``logits [N, C]``, ``teacher_logits [N, C]`` and, where used, ``target [N]``."""

    family = "distillation"


class PreferenceLoss(Loss):
    """Preference / unlearning loss on per-sequence log-probabilities ``[N]``; validates the shared ``beta > 0``."""

    family = "preference"

    def __init__(self, beta: float, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.beta = check_number("beta", beta, low=0.0, low_open=True)


class TokenLoss(Loss):
    """Token loss on ``logits [N, T, V]`` and ``target [N, T]``, one value per sequence.

    Validates the shared ``ignore_index`` and ``normalization``; a sequence with no valid token is masked.
    """

    family = "token"

    def __init__(self, ignore_index: int = -100, normalization: str = "token", validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)

    def sample_mask(self, *, target: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        """Sequences with at least one token that is not ``ignore_index``."""
        return not_ignored(target, self.ignore_index).any(-1)


class EmbeddingLoss(Loss):
    """Metric-learning loss on ``embeddings [N, D]`` and labels ``target [N]`` (optionally ``ref_embeddings`` /
    ``ref_target``): shared ``normalize`` / ``gather`` options and the valid-anchor :meth:`sample_mask`."""

    family: ClassVar[str] = "embedding"
    needs_negative: ClassVar[bool] = False

    def __init__(self, normalize: bool, gather: bool, validate_args: bool) -> None:
        super().__init__(validate_args)
        self.normalize = check_bool("normalize", normalize)
        self.gather = check_bool("gather", gather)

    def _loss(self, embeddings, target, ref_embeddings, ref_target) -> torch.Tensor:
        """Hook of the former private base (``_EmbeddingLoss``), kept for its subclasses; the built-in members write
        ``forward`` instead."""
        raise NotImplementedError

    def forward(
        self,
        embeddings: torch.Tensor,
        target: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._loss(embeddings, target, ref_embeddings, ref_target)

    def _common(self) -> dict[str, Any]:
        return {"normalize": self.normalize, "gather": self.gather}

    def sample_mask(
        self,
        *,
        embeddings: torch.Tensor,
        target: torch.Tensor | None = None,
        ref_embeddings: torch.Tensor | None = None,
        ref_target: torch.Tensor | None = None,
        **_: Any,
    ) -> torch.Tensor | None:
        """Anchors with a positive (and a negative where the loss needs one); global labels under DDP."""
        return MF.valid_anchors(
            embeddings,
            target,
            ref_embeddings=ref_embeddings,
            ref_target=ref_target,
            needs_negative=self.needs_negative,
            gather=self.gather,
        )
