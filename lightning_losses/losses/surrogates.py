"""Registered softmax surrogates: Poly-1, Poly-1 focal, comp-sum, Taylor CE, squentropy, one-vs-rest."""

from __future__ import annotations

import torch

from lightning_losses import functional as LF
from lightning_losses._validation import check_int, check_number
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import LabelLoss

__all__ = ["OVR", "CompSum", "Poly1", "PolyFocal", "Squentropy", "TaylorCE"]


@LOSSES.register("poly1", aliases=("poly_loss", "poly1_cross_entropy"))
class Poly1(LabelLoss):
    r"""Poly-1 loss :math:`\ell_i = \mathrm{CE}_i + \varepsilon(1 - p_{t,i})` (Leng et al., ICLR 2022).

    See :func:`lightning_losses.functional.poly1` (composes with label smoothing and soft targets as the paper's code).

    Args:
        epsilon: coefficient of the first polynomial term, ``>= -1``. Default 1.0 (paper).
        label_smoothing: ``[0, 1]``, PyTorch's construction. Default 0.
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("poly1", epsilon=1.0)(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(
        self, epsilon: float = 1.0, label_smoothing: float = 0.0, ignore_index: int = -100, validate_args: bool = True
    ) -> None:
        super().__init__(validate_args)
        self.epsilon = check_number("epsilon", epsilon, low=-1.0)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.poly1(
            logits,
            target,
            epsilon=self.epsilon,
            label_smoothing=self.label_smoothing,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("poly_focal", aliases=("poly1_focal",))
class PolyFocal(LabelLoss):
    r"""Poly-1 focal loss :math:`\ell_i = \mathrm{FL}_\gamma + \varepsilon(1 - p_{i,y_i})^{\gamma+1}` (Leng et al.).

    See :func:`lightning_losses.functional.poly_focal` (stable for ``gamma < 1`` at saturated logits).

    Args:
        epsilon: ``>= -1``. Default 1.0.
        gamma: focusing parameter ``>= 0``. Default 2.0.
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("poly_focal", gamma=0.5)(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(
        self, epsilon: float = 1.0, gamma: float = 2.0, ignore_index: int = -100, validate_args: bool = True
    ) -> None:
        super().__init__(validate_args)
        self.epsilon = check_number("epsilon", epsilon, low=-1.0)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.poly_focal(
            logits,
            target,
            epsilon=self.epsilon,
            gamma=self.gamma,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("comp_sum")
class CompSum(LabelLoss):
    r"""Comp-sum loss :math:`\ell_\tau = (1 - p_y^{\,\tau-1})/(\tau - 1)`, CE at ``tau = 1`` (Mao, Mohri, Zhong, 2023).

    See :func:`lightning_losses.functional.comp_sum`.

    Args:
        tau: ``>= 0`` (required): 0 sum-exponential, 1 cross entropy, ``1 + q`` GCE(q), 2 MAE.
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("comp_sum", tau=1.5)(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(self, tau: float, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.tau = check_number("tau", tau, low=0.0)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.comp_sum(
            logits, target, tau=self.tau, ignore_index=self.ignore_index, validate_args=self.validate_args
        )


@LOSSES.register("taylor_ce", aliases=("taylor_cross_entropy",))
class TaylorCE(LabelLoss):
    r"""Taylor cross entropy :math:`\ell_i = \sum_{j=1}^{t}(1 - p_{i,y_i})^j/j` (Feng et al., IJCAI 2020).

    Args:
        order: series order ``t >= 1`` (1 is MAE). Default 2.
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("taylor_ce", order=2)(logits=torch.zeros(2, 2), target=torch.tensor([0, 1]))
        tensor([0.6250, 0.6250])
    """

    def __init__(self, order: int = 2, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.order = check_int("order", order, low=1)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.taylor_ce(
            logits, target, order=self.order, ignore_index=self.ignore_index, validate_args=self.validate_args
        )


@LOSSES.register("squentropy")
class Squentropy(LabelLoss):
    r"""Squentropy :math:`\ell_i = \mathrm{CE}_i + \frac{1}{C-1}\sum_{j\ne y_i} z_{ij}^2` (Hui, Belkin, Wright, 2023).

    No hyperparameters. See :func:`lightning_losses.functional.squentropy`.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("squentropy")(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(self, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.squentropy(logits, target, ignore_index=self.ignore_index, validate_args=self.validate_args)


@LOSSES.register("ovr", aliases=("one_vs_rest", "one_vs_all"))
class OVR(LabelLoss):
    r"""One-vs-rest logistic loss :math:`\ell_i = \sum_c \log(1 + e^{-s_{ic} z_{ic}})`, ``s = +1`` on the label.

    See :func:`lightning_losses.functional.ovr`.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("ovr")(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    def __init__(self, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(validate_args)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.ovr(logits, target, ignore_index=self.ignore_index, validate_args=self.validate_args)
