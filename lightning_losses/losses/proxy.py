r"""Registered proxy-based metric-learning losses: ``arcface``, ``cosface``, ``sub_center_arcface`` and
``proxy_anchor`` (thin modules over :mod:`lightning_losses.functional.proxy`).

Each module **owns its class proxies** as an ``nn.Parameter`` ``proxies [num_classes * sub_centers, embedding_size]``,
learned with the network. **How the optimizer sees them**: :meth:`LossesMixin.configure_objective
<lightning_losses.LossesMixin.configure_objective>` assigns the :class:`~lightning_losses.Objective` to
``self.objective``, a submodule of the ``LightningModule`` whose ``losses`` hold the loss modules, so
``self.parameters()`` in ``configure_optimizers`` includes every proxy (as
``objective.losses.<term>.proxies``); they are saved in the checkpoint, moved by ``.to(device)`` / ``.double()``, and
DDP all-reduces their gradients like any parameter, so they stay identical on every rank. Call
``configure_objective`` after ``super().__init__()`` and before the optimizer is built; to give them their own
learning rate or no weight decay, make a parameter group of ``self.objective.parameters()``. A loss built outside
a module (``ll.build_loss("arcface", ...)``) must have its ``parameters()`` handed to an optimizer by hand.
"""

from __future__ import annotations

import inspect
import math

import torch
from torch import nn

from lightning_losses._validation import check_bool, check_int, check_number
from lightning_losses._validation.tensors import not_ignored
from lightning_losses.functional import proxy as PF
from lightning_losses.losses.base import LOSSES, Loss

__all__ = ["ArcFace", "CosFace", "ProxyAnchor", "ProxyLoss", "SubCenterArcFace"]


class ProxyLoss(Loss):
    """Base of the losses that learn class proxies ``proxies [num_classes * sub_centers, embedding_size]``.

    Inputs ``embeddings [N, D]`` and integer ``target [N]``. The proxies start as ``N(0, 1)`` draws (``init="normal"``,
    pytorch-metric-learning's default for the large-margin losses) or Kaiming-normal with ``fan_out``
    (``init="kaiming"``, its default for Proxy-Anchor), from torch's global generator.
    """

    family = "embedding"

    def __init__(self, num_classes: int, embedding_size: int, sub_centers: int, init: str, validate_args: bool) -> None:
        super().__init__(validate_args)
        self.num_classes = check_int("num_classes", num_classes, low=1)
        self.embedding_size = check_int("embedding_size", embedding_size, low=1)
        self.sub_centers = check_int("sub_centers", sub_centers, low=1)
        self.proxies = nn.Parameter(torch.empty(self.num_classes * self.sub_centers, self.embedding_size))
        if init == "kaiming":
            nn.init.kaiming_normal_(self.proxies, mode="fan_out")
        else:
            nn.init.normal_(self.proxies)

    def extra_repr(self) -> str:
        hidden = {"num_classes", "embedding_size"}
        if "sub_centers" not in inspect.signature(type(self)).parameters:
            hidden.add("sub_centers")
        items = [f"num_classes={self.num_classes}", f"embedding_size={self.embedding_size}"]
        return ", ".join(items + [i for i in super().extra_repr().split(", ") if i.split("=")[0] not in hidden])


class _MarginSoftmax(ProxyLoss):
    ignore_index: int

    def sample_mask(self, *, target: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        """Samples whose label is not ``ignore_index``."""
        return not_ignored(target, self.ignore_index)


class _AngularMargin(_MarginSoftmax):
    """ArcFace with ``sub_centers`` proxies per class (the shared body of ``arcface`` and ``sub_center_arcface``)."""

    def __init__(self, num_classes, embedding_size, sub_centers, margin, scale, ignore_index, validate_args) -> None:
        super().__init__(num_classes, embedding_size, sub_centers, "normal", validate_args)
        self.margin = check_number("margin", margin, low=0.0, high=math.pi / 2)
        self.scale = check_number("scale", scale, low=0.0, low_open=True)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def _arcface(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return PF.arcface(
            embeddings,
            target,
            self.proxies,
            margin=self.margin,
            scale=self.scale,
            sub_centers=self.sub_centers,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("arcface", aliases=("arc_face", "additive_angular_margin"))
class ArcFace(_AngularMargin):
    r"""ArcFace (Deng et al., *ArcFace: Additive Angular Margin Loss for Deep Face Recognition*, CVPR 2019):
    cross entropy on :math:`s\cos(\theta_{iy} + m)` for the label and :math:`s\cos\theta_{ic}` for the other classes,
    per sample. See :func:`lightning_losses.functional.proxy.arcface`; the proxies are learned (module docstring:
    how the optimizer sees them). Equals pytorch-metric-learning's ``ArcFaceLoss`` (``margin`` there in degrees).

    Args:
        num_classes: number of classes ``C``.
        embedding_size: ``D``.
        margin: additive angle ``m`` in radians, in ``[0, π/2]``. Default 0.5 (paper).
        scale: ``s > 0``. Default 64 (paper).
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("arcface", num_classes=3, embedding_size=8)
        >>> loss(embeddings=torch.randn(4, 8), target=torch.tensor([0, 1, 2, 0])).shape
        torch.Size([4])
        >>> [name for name, _ in loss.named_parameters()]
        ['proxies']
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 0.5,
        scale: float = 64.0,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(num_classes, embedding_size, 1, margin, scale, ignore_index, validate_args)

    def forward(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._arcface(embeddings, target)


@LOSSES.register("sub_center_arcface", aliases=("subcenter_arcface", "sub_center_arc_face"))
class SubCenterArcFace(_AngularMargin):
    r"""Sub-center ArcFace (Deng et al., *Sub-center ArcFace: Boosting Face Recognition by Large-Scale Noisy Web
    Faces*, ECCV 2020): ArcFace where each class has ``K`` proxies and its cosine is the largest of the ``K``.
    See :func:`lightning_losses.functional.proxy.arcface`. Equals pytorch-metric-learning's ``SubCenterArcFaceLoss``.

    Args:
        num_classes: number of classes ``C``.
        embedding_size: ``D``.
        sub_centers: ``K >= 1`` proxies per class. Default 3 (paper).
        margin: additive angle ``m`` in radians, in ``[0, π/2]``. Default 0.5.
        scale: ``s > 0``. Default 64.
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("sub_center_arcface", num_classes=3, embedding_size=8)
        >>> loss.proxies.shape, loss(embeddings=torch.randn(2, 8), target=torch.tensor([0, 2])).shape
        (torch.Size([9, 8]), torch.Size([2]))
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        sub_centers: int = 3,
        margin: float = 0.5,
        scale: float = 64.0,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(num_classes, embedding_size, sub_centers, margin, scale, ignore_index, validate_args)

    def forward(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self._arcface(embeddings, target)


@LOSSES.register("cosface", aliases=("cos_face", "large_margin_cosine", "lmcl"))
class CosFace(_MarginSoftmax):
    r"""CosFace (Wang et al., *CosFace: Large Margin Cosine Loss for Deep Face Recognition*, CVPR 2018): cross
    entropy on :math:`s(\cos\theta_{iy} - m)` for the label and :math:`s\cos\theta_{ic}` otherwise, per sample.
    See :func:`lightning_losses.functional.proxy.cosface`. Equals pytorch-metric-learning's ``CosFaceLoss``.

    Args:
        num_classes: number of classes ``C``.
        embedding_size: ``D``.
        margin: cosine margin ``m >= 0``. Default 0.35 (paper).
        scale: ``s > 0``. Default 64 (paper).
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("cosface", num_classes=3, embedding_size=8)
        >>> loss(embeddings=torch.randn(4, 8), target=torch.tensor([0, 1, 2, 0])).shape
        torch.Size([4])
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 0.35,
        scale: float = 64.0,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(num_classes, embedding_size, 1, "normal", validate_args)
        self.margin = check_number("margin", margin, low=0.0)
        self.scale = check_number("scale", scale, low=0.0, low_open=True)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def forward(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return PF.cosface(
            embeddings,
            target,
            self.proxies,
            margin=self.margin,
            scale=self.scale,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )


@LOSSES.register("proxy_anchor", aliases=("proxyanchor", "proxy_anchor_loss"))
class ProxyAnchor(ProxyLoss):
    r"""Proxy-Anchor loss (Kim et al., *Proxy Anchor Loss for Deep Metric Learning*, CVPR 2020), batch-level:
    each proxy pulls its batch positives and pushes the negatives,

    .. math::
        \frac{1}{|P^+|}\sum_{p\in P^+}\log\Bigl(1 + \sum_{x\in X_p^+} e^{-\alpha(s(x,p) - \delta)}\Bigr)
        + \frac{1}{|P|}\sum_{p\in P}\log\Bigl(1 + \sum_{x\in X_p^-} e^{\alpha(s(x,p) + \delta)}\Bigr).

    See :func:`lightning_losses.functional.proxy.proxy_anchor`. Equals pytorch-metric-learning's
    ``ProxyAnchorLoss``. Its terms sum over samples inside a log, so it is one scalar for the (global) batch
    (``batch_level``): under DDP with ``gather=True`` the embeddings of every rank are all-gathered with gradients.

    Args:
        num_classes: number of classes ``C``.
        embedding_size: ``D``.
        margin: ``δ >= 0``. Default 0.1 (paper).
        alpha: scale ``α > 0``. Default 32 (paper).
        gather: under DDP, compute on the global batch (all-gather with gradients). Default True.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("proxy_anchor", num_classes=3, embedding_size=8)
        >>> loss(embeddings=torch.randn(4, 8), target=torch.tensor([0, 1, 2, 0])).shape
        torch.Size([])
    """

    batch_level = True

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 0.1,
        alpha: float = 32.0,
        gather: bool = True,
        validate_args: bool = True,
    ) -> None:
        super().__init__(num_classes, embedding_size, 1, "kaiming", validate_args)
        self.margin = check_number("margin", margin, low=0.0)
        self.alpha = check_number("alpha", alpha, low=0.0, low_open=True)
        self.gather = check_bool("gather", gather)

    def forward(self, embeddings: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return PF.proxy_anchor(
            embeddings,
            target,
            self.proxies,
            margin=self.margin,
            alpha=self.alpha,
            gather=self.gather,
            validate_args=self.validate_args,
        )
