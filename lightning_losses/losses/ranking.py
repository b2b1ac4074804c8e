"""Registered ranking, ensemble and representation losses: ``auc_pairwise``, ``ens_loss`` (binary scores) and
``vne`` (embeddings).

Example:
    >>> import torch
    >>> import lightning_losses as ll
    >>> ll.build_loss("auc_pairwise")(logits=torch.tensor([2.0, -1.0, 0.0]), target=torch.tensor([1.0, 0.0, 0.0]))
    tensor([0.0878, 0.0486, 0.1269])
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from lightning_losses._validation import check_bool, check_choice, check_int, check_number
from lightning_losses.functional import ensemble as LFE
from lightning_losses.functional import ranking as LFR
from lightning_losses.functional import representation as LFV
from lightning_losses.losses.base import LOSSES, Loss
from lightning_losses.losses.families import BinaryLoss

__all__ = ["VNE", "AUCPairwise", "EnsLoss"]


@LOSSES.register("auc_pairwise", aliases=("pairwise_auc", "mann_whitney"))
class AUCPairwise(BinaryLoss):
    r"""Pairwise AUC (Wilcoxon-Mann-Whitney) surrogate over every (positive, negative) pair of the global batch; each
    sample gets the mean over its partners, so the objective's mean is the pairwise loss (see
    :func:`~lightning_losses.functional.ranking.auc_pairwise`).

    Args:
        surrogate: ``"logistic"`` (default, :math:`\log(1 + e^{-(s_p - s_n)})`) or ``"squared_hinge"``
            (:math:`\max(0, m - (s_p - s_n))^2`).
        margin: ``m > 0`` of ``squared_hinge``. Default 1.0.
        gather: pair with every rank's samples under DDP (gathered with gradients). Default True.
    """

    def __init__(
        self, surrogate: str = "logistic", margin: float = 1.0, gather: bool = True, validate_args: bool = True
    ) -> None:
        super().__init__(validate_args)
        self.surrogate = check_choice("surrogate", surrogate, LFR.AUC_SURROGATES)
        self.margin = check_number("margin", margin, low=0.0, low_open=True)
        self.gather = check_bool("gather", gather)

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        kw = {"surrogate": self.surrogate, "margin": self.margin, "gather": self.gather}
        return LFR.auc_pairwise(logits, target, validate_args=self.validate_args, **kw)


@LOSSES.register("vne", aliases=("von_neumann_entropy",))
class VNE(Loss):
    r"""VNE (Kim et al., CVPR 2023): minus the von Neumann entropy of the embeddings' autocorrelation over the global
    batch, a batch-level term: a positive coefficient spreads the representation over more directions, a negative
    one (the paper's :math:`\alpha < 0`) concentrates it (see :func:`~lightning_losses.functional.representation
    .von_neumann_entropy`). Input ``embeddings [N, D]`` (the layer to regularise).

    Args:
        sync: sum the autocorrelation over the data-parallel ranks (with gradients) under DDP. Default True.

    Example:
        >>> import torch
        >>> import lightning_losses as ll
        >>> ll.build_loss("vne")(embeddings=torch.eye(4)).round(decimals=4)
        tensor(-1.3863)
    """

    family: ClassVar[str] = "embedding"
    batch_level: ClassVar[bool] = True

    def __init__(self, sync: bool = True, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.sync = check_bool("sync", sync)

    def forward(self, embeddings: Tensor) -> Tensor:
        return LFV.vne(embeddings, sync=self.sync)


@LOSSES.register("ens_loss", aliases=("ensloss",))
class EnsLoss(BinaryLoss):
    r"""EnsLoss (Dai, 2024): each call draws a random convex, calibrated loss derivative and applies it to the sorted
    margins of the (global) batch, a loss ensemble in one run (see :func:`~lightning_losses.functional.ensemble
    .ens_loss`). Binary ``logits [N]`` and 0 / 1 ``target``.

    The draws come from a generator seeded with ``(seed, number of calls)``, so every DDP rank draws the same values
    and a resumed run continues the sequence (the call count is saved in the module's ``state_dict``).

    Args:
        lam: Box-Cox ``λ`` of the derivative distribution (0: :math:`-e^{\epsilon}`). Default 0.0 (the authors').
        seed: base seed ``>= 0`` of the draws. Default 0.
        gather: sort the margins of every rank together under DDP. Default True.
    """

    def __init__(self, lam: float = 0.0, seed: int = 0, gather: bool = True, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.lam = check_number("lam", lam)
        self.seed = check_int("seed", seed, low=0)
        self.gather = check_bool("gather", gather)
        self.calls = 0

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.calls)
        self.calls += 1
        kw = {"lam": self.lam, "generator": generator, "gather": self.gather}
        return LFE.ens_loss(logits, target, validate_args=self.validate_args, **kw)

    def get_extra_state(self) -> dict:
        return {"calls": self.calls}

    def set_extra_state(self, state: dict) -> None:
        self.calls = int(state["calls"])
