"""Registered multi-class losses (thin modules over :mod:`lightning_losses.functional.classification`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_losses import functional as LF
from lightning_losses._validation import check_int, check_number, check_probability_vector
from lightning_losses.errors import ConfigurationError
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import LabelLoss

__all__ = ["AsymmetricSingleLabel", "CrossEntropy", "Focal", "LabelLoss"]

_LabelLoss = LabelLoss  # the former private name, kept importable


@LOSSES.register("cross_entropy", aliases=("ce", "xent"))
class CrossEntropy(LabelLoss):
    r"""Per-sample cross entropy: :math:`\ell_i = -\sum_c w_c q_{ic}\log\mathrm{softmax}(z_i)_c`.

    See :func:`lightning_losses.functional.cross_entropy` for the formula and the smoothing construction
    (PyTorch's: ``ε/C`` to every class).

    Args:
        label_smoothing: ``ε`` in ``[0, 1]``. Default 0.
        weight: optional per-class weights ``[C]`` (non-negative).
        ignore_index: label ignored in loss and normaliser. Default -100.
        validate_args: check label ranges at call time (one host sync).

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("cross_entropy", label_smoothing=0.1)
        >>> loss(logits=torch.zeros(3, 4), target=torch.tensor([0, 1, 2])).shape
        torch.Size([3])
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        weight: Sequence[float] | None = None,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.register_buffer(
            "weight", check_probability_vector("weight", weight, dtype=torch.float64), persistent=False
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.cross_entropy(
            logits,
            target,
            label_smoothing=self.label_smoothing,
            weight=self.weight,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("focal", aliases=("focal_loss",))
class Focal(LabelLoss):
    r"""Softmax focal loss (Lin et al., ICCV 2017): :math:`\ell_i = -\alpha_{y_i}(1-p_{i,y_i})^\gamma\log p_{i,y_i}`.

    Stable for any ``gamma >= 0`` at saturated logits (see :func:`lightning_losses.functional.focal_term`).

    Args:
        gamma: focusing parameter ``>= 0``. Default 2.0 (paper). ``0`` is cross entropy.
        alpha: ``None`` (default: no class weighting, as fvcore's ``alpha=-1``), a positive scalar, or
            per-class weights ``[C]``.
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("focal", gamma=2.0)(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.ignore_index = check_int("ignore_index", ignore_index)
        if alpha is None or isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            alpha_t = (
                None
                if alpha is None
                else torch.tensor(check_number("alpha", alpha, low=0.0, low_open=True), dtype=torch.float64)
            )
        elif isinstance(alpha, Sequence) and not isinstance(alpha, str):
            alpha_t = check_probability_vector("alpha", alpha, dtype=torch.float64)
        else:
            raise ConfigurationError(f"`alpha` must be None, a positive number or per-class weights, got {alpha!r}")
        self.register_buffer("alpha", alpha_t, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.focal(
            logits,
            target,
            gamma=self.gamma,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("asymmetric_single_label", aliases=("asl_single_label", "asymmetric_softmax"))
class AsymmetricSingleLabel(LabelLoss):
    r"""Single-label asymmetric loss (Ridnik et al., ICCV 2021; the authors' ``ASLSingleLabel``): softmax cross
    entropy with label smoothing whose target term is weighted :math:`(1 - p_y)^{\gamma_+}` and each other class's
    term :math:`p_c^{\gamma_-}`. The multi-label (sigmoid) ASL is ``asymmetric``.

    See :func:`lightning_losses.functional.classification.asymmetric_single_label` for the formula.

    Args:
        gamma_pos: focusing of the target class ``>= 0``. Default 0 (authors').
        gamma_neg: focusing of the other classes ``>= 0``. Default 4 (authors').
        label_smoothing: ``ε`` in ``[0, 1]``. Default 0.1 (authors' ``eps``).
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("asymmetric_single_label")(logits=torch.zeros(2, 4), target=torch.tensor([0, 3]))
        tensor([1.2827, 1.2827])
    """

    def __init__(
        self,
        gamma_pos: float = 0.0,
        gamma_neg: float = 4.0,
        label_smoothing: float = 0.1,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.gamma_pos = check_number("gamma_pos", gamma_pos, low=0.0)
        self.gamma_neg = check_number("gamma_neg", gamma_neg, low=0.0)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.asymmetric_single_label(
            logits,
            target,
            gamma_pos=self.gamma_pos,
            gamma_neg=self.gamma_neg,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )
