"""Registered losses with a PyTorch or paper counterpart: multi-class margin, bi-tempered, sigmoid Poly-1, Poisson NLL
(thin modules over :mod:`lightning_losses.functional.margin`, ``.tempered`` and ``.sigmoid_poly``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_losses._validation import check_bool, check_int, check_number, check_probability_vector
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.margin import ldam, ldam_margins, multi_margin, poisson_nll
from lightning_losses.functional.sigmoid_poly import sigmoid_poly1
from lightning_losses.functional.tempered import bi_tempered
from lightning_losses.losses.base import LOSSES, Loss
from lightning_losses.losses.families import LabelLoss

__all__ = ["LDAM", "BiTempered", "MultiMargin", "PoissonNLL", "SigmoidPoly1"]


@LOSSES.register("multi_margin", aliases=("multi_margin_loss", "multiclass_hinge"))
class MultiMargin(LabelLoss):
    r"""Multi-class hinge :math:`\ell_i = \frac1C\sum_{j\ne y_i} w_{y_i}\max(0, m - z_{i,y_i} + z_{ij})^p`
    (Weston & Watkins, 1999; ``torch.nn.MultiMarginLoss`` with ``reduction="none"``).

    See :func:`lightning_losses.functional.margin.multi_margin`.

    Args:
        p: 1 (hinge, default) or 2 (squared hinge).
        margin: ``m >= 0``. Default 1.0.
        weight: optional per-class weights ``[C]`` (non-negative), the label's weight scales its sample.
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("multi_margin")(logits=torch.zeros(2, 3), target=torch.tensor([0, 1]))
        tensor([0.6667, 0.6667])
    """

    family = "multiclass"

    def __init__(
        self,
        p: int = 1,
        margin: float = 1.0,
        weight: Sequence[float] | None = None,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.p = check_int("p", p, low=1, high=2)
        self.margin = check_number("margin", margin, low=0.0)
        self.register_buffer(
            "weight", check_probability_vector("weight", weight, dtype=torch.float64), persistent=False
        )
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return multi_margin(
            logits,
            target,
            p=self.p,
            margin=self.margin,
            weight=self.weight,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("ldam", aliases=("ldam_loss", "label_distribution_aware_margin"))
class LDAM(LabelLoss):
    r"""Label-distribution-aware margin loss (Cao et al., NeurIPS 2019): cross entropy on
    :math:`s(z_{iy} - m_y)` and :math:`s z_{ij}`, with :math:`m_c = m_{max} n_c^{-1/4} / \max_j n_j^{-1/4}`.

    See :func:`lightning_losses.functional.margin.ldam`. The paper's LDAM-DRW adds deferred re-weighting: the
    ``class_balanced`` reweighter with ``beta=0.9999`` and ``start_epoch`` (160 of 200 epochs in the paper), e.g. in a
    recipe ``objective: {ldam: {samples_per_class: [...]}}`` with ``reweighting: {strategy: class_balanced, beta:
    0.9999, samples_per_class: [...], start_epoch: 160}``.

    Args:
        samples_per_class: training-set class counts :math:`n_c` (positive), which set the margins.
        max_margin: :math:`m_{max} > 0`, the margin of the rarest class. Default 0.5 (authors' code).
        scale: ``s > 0`` applied to every logit. Default 30 (authors' code, with a normalised last layer).
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("ldam", samples_per_class=[100, 10, 1], scale=1.0)
        >>> loss.margins.tolist()
        [0.15811388300841897, 0.28117066259517454, 0.5]
        >>> loss(logits=torch.zeros(2, 3), target=torch.tensor([0, 2])).round(decimals=4)
        tensor([1.2067, 1.4580])
    """

    family = "multiclass"

    def __init__(
        self,
        samples_per_class: Sequence[float],
        max_margin: float = 0.5,
        scale: float = 30.0,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        counts = check_probability_vector("samples_per_class", samples_per_class, allow_none=False, dtype=torch.float64)
        if not bool((counts > 0).all()):
            raise ConfigurationError(f"`samples_per_class` must be positive counts, got {samples_per_class!r}")
        self.samples_per_class = counts.tolist()
        self.max_margin = check_number("max_margin", max_margin, low=0.0, low_open=True)
        self.scale = check_number("scale", scale, low=0.0, low_open=True)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.register_buffer("margins", ldam_margins(counts, self.max_margin), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ldam(
            logits,
            target,
            self.margins,
            scale=self.scale,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("bi_tempered", aliases=("bi_tempered_logistic", "bitempered"))
class BiTempered(LabelLoss):
    r"""Bi-tempered logistic loss (Amid, Warmuth, Anil & Koren, NeurIPS 2019): the Bregman divergence of
    :math:`\log_{t_1}` between the target and the tempered softmax :math:`\exp_{t_2}(a - \lambda(a))`.

    See :mod:`lightning_losses.functional.tempered` for the formulas; ``t1 = t2 = 1`` is cross entropy.

    Args:
        t1: temperature of the loss (boundedness), in ``[0, 1]``. Default 0.8.
        t2: temperature of the tempered softmax (tail), in ``[1, 10]``. Default 1.2.
        label_smoothing: ``[0, 1]``, PyTorch's construction. Default 0.
        num_iters: fixed-point steps of the normaliser, ``>= 1``. Default 10.
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("bi_tempered", t1=0.8, t2=1.2)(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    family = "multiclass"

    def __init__(
        self,
        t1: float = 0.8,
        t2: float = 1.2,
        label_smoothing: float = 0.0,
        num_iters: int = 10,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.t1 = check_number("t1", t1, low=0.0, high=1.0)
        self.t2 = check_number("t2", t2, low=1.0, high=10.0)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.num_iters = check_int("num_iters", num_iters, low=1)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return bi_tempered(
            logits,
            target,
            t1=self.t1,
            t2=self.t2,
            label_smoothing=self.label_smoothing,
            num_iters=self.num_iters,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("sigmoid_poly1", aliases=("binary_poly1", "poly1_bce"))
class SigmoidPoly1(Loss):
    r"""Sigmoid Poly-1 loss :math:`\ell = \mathrm{BCE}(z, y) + \varepsilon(1 - p_t)` per label, mean over labels
    (Leng et al., ICLR 2022). See :func:`lightning_losses.functional.sigmoid_poly.sigmoid_poly1`.

    Args:
        epsilon: coefficient of the first polynomial term, ``>= -1``. Default 1.0 (paper).
        pos_weight: optional positive-class weights ``[K]`` (non-negative) for the BCE part.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("sigmoid_poly1")(logits=torch.zeros(2, 3), target=torch.ones(2, 3)).round(decimals=4)
        tensor([1.1931, 1.1931])
    """

    family = "binary"

    def __init__(
        self, epsilon: float = 1.0, pos_weight: Sequence[float] | None = None, validate_args: bool = True
    ) -> None:
        super().__init__(validate_args)
        self.epsilon = check_number("epsilon", epsilon, low=-1.0)
        self.register_buffer(
            "pos_weight", check_probability_vector("pos_weight", pos_weight, dtype=torch.float64), persistent=False
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sigmoid_poly1(
            logits, target, epsilon=self.epsilon, pos_weight=self.pos_weight, validate_args=self.validate_args
        )


@LOSSES.register("poisson_nll", aliases=("poisson", "poisson_nll_loss"))
class PoissonNLL(Loss):
    r"""Poisson negative log-likelihood :math:`\ell = e^x - yx` (``log_input``) or :math:`x - y\log(x + \varepsilon)`,
    mean over non-batch dimensions (``torch.nn.PoissonNLLLoss``). See
    :func:`lightning_losses.functional.margin.poisson_nll`.

    Args:
        log_input: ``pred`` is the log-rate (default ``True``) or the rate.
        full: add the Stirling term of :math:`\log y!`. Default ``False``.
        eps: ``> 0`` added to the rate inside the log when ``log_input=False``. Default 1e-8.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("poisson_nll")(pred=torch.zeros(2), target=torch.tensor([1.0, 0.0]))
        tensor([1., 1.])
    """

    family = "regression"

    def __init__(
        self, log_input: bool = True, full: bool = False, eps: float = 1e-8, validate_args: bool = True
    ) -> None:
        super().__init__(validate_args)
        self.log_input = check_bool("log_input", log_input)
        self.full = check_bool("full", full)
        self.eps = check_number("eps", eps, low=0.0, low_open=True)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return poisson_nll(
            pred, target, log_input=self.log_input, full=self.full, eps=self.eps, validate_args=self.validate_args
        )
