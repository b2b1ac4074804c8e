"""Registered noise-robust multi-class losses (thin modules over :mod:`lightning_losses.functional.robust`)."""

from __future__ import annotations

import torch

from lightning_losses import functional as LF
from lightning_losses._validation import check_choice, check_int, check_number
from lightning_losses.functional.robust import APL_ACTIVE, APL_PASSIVE
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import LabelLoss

__all__ = ["APL", "GCE", "MAE", "SCE"]


@LOSSES.register("gce", aliases=("generalized_cross_entropy",))
class GCE(LabelLoss):
    r"""Generalized cross entropy :math:`\ell_i = (1 - p_{i,y_i}^{\,q})/q` (Zhang & Sabuncu, NeurIPS 2018).

    See :func:`lightning_losses.functional.gce`.

    Args:
        q: in ``(0, 1]``; ``q -> 0`` is CE, ``q = 1`` is MAE. Default 0.7 (paper).
        ignore_index: label ignored in loss and normaliser. Default -100.
        validate_args: check label ranges at call time (one host sync).

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("gce", q=0.7)(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(self, q: float = 0.7, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.q = check_number("q", q, low=0.0, high=1.0, low_open=True)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.gce(logits, target, q=self.q, ignore_index=self.ignore_index, validate_args=self.validate_args)


@LOSSES.register("mae")
class MAE(LabelLoss):
    r"""Mean absolute error on the softmax, :math:`\ell_i = 1 - p_{i,y_i}` (half the L1 distance to the one-hot).

    See :func:`lightning_losses.functional.mae` (the APL authors' reduced form). For regression use the regression
    family's L1 loss instead.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("mae")(logits=torch.zeros(2, 2), target=torch.tensor([0, 1]))
        tensor([0.5000, 0.5000])
    """

    def __init__(self, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.mae(logits, target, ignore_index=self.ignore_index, validate_args=self.validate_args)


@LOSSES.register("sce", aliases=("symmetric_cross_entropy",))
class SCE(LabelLoss):
    r"""Symmetric cross entropy :math:`\ell_i = \alpha\,\mathrm{CE}_i - \beta A\,(1 - p_{i,y_i})` (Wang et al., ICCV
    2019).

    See :func:`lightning_losses.functional.sce` and :func:`~lightning_losses.functional.rce` (``A`` is the value that
    replaces ``log 0``; the public code's one-hot clamp amounts to ``A = log(1e-4)``).

    Args:
        alpha: weight of CE, ``>= 0``. Default 0.1 (paper, CIFAR-10).
        beta: weight of RCE, ``>= 0``. Default 1.0 (paper, CIFAR-10).
        A: ``log 0`` replacement, ``< 0``. Default -4.0 (paper).
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("sce", alpha=0.1, beta=1.0)(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        alpha: float = 0.1,
        beta: float = 1.0,
        A: float = -4.0,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.beta = check_number("beta", beta, low=0.0)
        self.A = check_number("A", A, high=0.0, high_open=True)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.sce(
            logits,
            target,
            alpha=self.alpha,
            beta=self.beta,
            A=self.A,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("apl", aliases=("active_passive",))
class APL(LabelLoss):
    r"""Active-passive loss :math:`\ell_i = \alpha L_{\text{active}} + \beta L_{\text{passive}}` (Ma et al., ICML 2020).

    Active: normalized CE (``"nce"``) or normalized focal (``"nfl"``); passive: reverse CE (``"rce"``) or MAE
    (``"mae"``). See :func:`lightning_losses.functional.apl` for the formulas and what was matched to the authors' code.

    Args:
        active: ``"nce"`` (default) or ``"nfl"``.
        passive: ``"rce"`` (default) or ``"mae"``.
        alpha: weight of the active term, ``>= 0``. Default 1.0.
        beta: weight of the passive term, ``>= 0``. Default 1.0.
        gamma: focusing parameter of NFL, ``>= 0``. Default 0.5 (authors' configs); unused for NCE.
        A: ``log 0`` replacement of RCE, ``< 0``. Default -4.0; unused for MAE.
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("apl", active="nfl", passive="mae")
        >>> loss(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        active: str = "nce",
        passive: str = "rce",
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 0.5,
        A: float = -4.0,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.active = check_choice("active", active, APL_ACTIVE)
        self.passive = check_choice("passive", passive, APL_PASSIVE)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.beta = check_number("beta", beta, low=0.0)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.A = check_number("A", A, high=0.0, high_open=True)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.apl(
            logits,
            target,
            active=self.active,
            passive=self.passive,
            alpha=self.alpha,
            beta=self.beta,
            gamma=self.gamma,
            A=self.A,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )
