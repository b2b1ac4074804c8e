"""Registered reference-free preference losses: ``cpo``, ``orpo`` and ``alphapo`` (thin modules over
:mod:`lightning_losses.functional.preference`).

Inputs: ``chosen_logps``, ``rejected_logps`` (``[N]`` summed token log-probs under the policy; no reference model)
and the valid token counts ``chosen_lengths`` / ``rejected_lengths``.

Example:
    >>> import torch
    >>> import lightning_losses as ll
    >>> x, n = torch.tensor([-2.0]), torch.tensor([2])
    >>> ll.build_loss("orpo")(chosen_logps=x, rejected_logps=x, chosen_lengths=n, rejected_lengths=n).round(decimals=4)
    tensor([1.0693])
"""

from __future__ import annotations

from torch import Tensor as T

from lightning_losses._validation import check_number
from lightning_losses.functional import preference as P
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import PreferenceLoss

__all__ = ["CPO", "ORPO", "AlphaPO"]


@LOSSES.register("cpo")
class CPO(PreferenceLoss):
    r"""CPO (Xu et al., ICML 2024): reference-free DPO plus ``alpha`` · per-token NLL of the chosen answer (TRL
    ``CPOTrainer`` ``loss_type="sigmoid"``; see :func:`~lightning_losses.functional.preference.cpo`).

    Args:
        beta: ``β > 0``. Default 0.1.
        alpha: NLL weight ``≥ 0`` (TRL's ``cpo_alpha``). Default 1.0; needs ``chosen_lengths`` when ``> 0``.
        label_smoothing: ``ε`` in ``[0, 0.5]``. Default 0.
    """

    def __init__(
        self, beta: float = 0.1, alpha: float = 1.0, label_smoothing: float = 0.0, validate_args: bool = True
    ) -> None:
        super().__init__(beta, validate_args)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=0.5)

    def forward(self, chosen_logps: T, rejected_logps: T, chosen_lengths: T | None = None) -> T:
        kw = {"beta": self.beta, "alpha": self.alpha, "label_smoothing": self.label_smoothing}
        return P.cpo(chosen_logps, rejected_logps, chosen_lengths, **kw)


@LOSSES.register("orpo")
class ORPO(PreferenceLoss):
    r"""ORPO (Hong et al., EMNLP 2024): per-token NLL of the chosen answer minus ``β`` · log-sigmoid of the log odds
    ratio of mean log-probs (TRL ``ORPOTrainer``; see :func:`~lightning_losses.functional.preference.orpo`).

    Args:
        beta: ``β > 0`` (the paper's λ). Default 0.1.
    """

    def __init__(self, beta: float = 0.1, validate_args: bool = True) -> None:
        super().__init__(beta, validate_args)

    def forward(self, chosen_logps: T, rejected_logps: T, chosen_lengths: T, rejected_lengths: T) -> T:
        return P.orpo(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, beta=self.beta)


@LOSSES.register("alphapo")
class AlphaPO(PreferenceLoss):
    r"""AlphaPO (Gupta et al., ICML 2025): SimPO with the reward shape :math:`(1 - \bar p^{-\alpha})/\alpha`
    (TRL ``CPOTrainer(loss_type="alphapo")``; see :func:`~lightning_losses.functional.preference.alphapo`).

    Args:
        beta: ``β > 0``. Default 2.0.
        gamma: target margin ``γ ≥ 0`` (TRL's ``simpo_gamma`` is ``γ/β``). Default 1.0.
        alpha: reward shape ``α`` (any real; 0 is SimPO). Default 0.25.
        label_smoothing: ``ε`` in ``[0, 0.5]``. Default 0.
    """

    def __init__(
        self,
        beta: float = 2.0,
        gamma: float = 1.0,
        alpha: float = 0.25,
        label_smoothing: float = 0.0,
        validate_args: bool = True,
    ) -> None:
        super().__init__(beta, validate_args)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.alpha = check_number("alpha", alpha)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=0.5)

    def forward(self, chosen_logps: T, rejected_logps: T, chosen_lengths: T, rejected_lengths: T) -> T:
        kw = {"beta": self.beta, "gamma": self.gamma, "alpha": self.alpha, "label_smoothing": self.label_smoothing}
        return P.alphapo(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, **kw)
