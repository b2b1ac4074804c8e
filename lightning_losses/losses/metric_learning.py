"""Registered metric-learning losses (thin modules over :mod:`lightning_losses.functional.metric_learning`).

Inputs: ``embeddings [N, D]``, ``target [N]`` int, optional ``ref_embeddings [M, D]`` / ``ref_target [M]`` (see the
functional module for the convention). Each returns per-anchor losses ``[N]``; anchors without a valid positive (and,
for ``info_nce``, ``triplet`` and ``circle``, without a negative) get 0 and :meth:`sample_mask` drops them from the
Objective's normaliser. Under DDP (``gather=True``, default) references come from every rank with gradients, and
``k`` ranks equal one process on the concatenated batch.
"""

from __future__ import annotations

import torch

from lightning_losses._validation import check_choice, check_number
from lightning_losses.functional import metric_learning as MF
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import EmbeddingLoss

__all__ = ["Circle", "EmbeddingLoss", "InfoNCE", "MultiSimilarity", "SupCon", "Triplet"]


_EmbeddingLoss = EmbeddingLoss  # the former private name, kept importable


@LOSSES.register("info_nce", aliases=("infonce", "nt_xent", "ntxent"))
class InfoNCE(EmbeddingLoss):
    r"""InfoNCE / NT-Xent: :math:`\ell_i = \frac{1}{|P_i|}\sum_p -\log\frac{e^{s_{ip}/\tau}}{e^{s_{ip}/\tau} +
    \sum_{n} e^{s_{in}/\tau}}` (Oord et al. 2018; Chen et al. 2020).

    See :func:`lightning_losses.functional.metric_learning.info_nce`. Forms: SimCLR (both views stacked in
    ``embeddings``, ``target`` = instance id), paired views (``ref_embeddings`` with no ``target``: row ``i`` of
    ``ref_embeddings`` is the positive of row ``i``, every other reference a negative), or class labels.

    Args:
        temperature: ``τ > 0``. Default 0.1 (pytorch-metric-learning's ``NTXentLoss`` uses 0.07).
        normalize: cosine similarity (L2-normalise first). Default True.
        gather: under DDP, use the references of every rank (all-gather with gradients). Default True.

    Example:
        >>> import lightning_losses as ll
        >>> views = torch.randn(8, 16)
        >>> ll.build_loss("info_nce")(embeddings=views, target=torch.arange(4).repeat(2)).shape
        torch.Size([8])
    """

    needs_negative = True

    def __init__(
        self, temperature: float = 0.1, normalize: bool = True, gather: bool = True, validate_args: bool = True
    ) -> None:
        super().__init__(normalize, gather, validate_args)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)

    def forward(
        self,
        embeddings: torch.Tensor,
        target: torch.Tensor | None = None,
        ref_embeddings: torch.Tensor | None = None,
        ref_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return MF.info_nce(
            embeddings,
            target,
            ref_embeddings=ref_embeddings,
            ref_target=ref_target,
            temperature=self.temperature,
            **self._common(),
        )


@LOSSES.register("supcon", aliases=("supervised_contrastive", "sup_con"))
class SupCon(EmbeddingLoss):
    r"""Supervised contrastive loss: :math:`\ell_i = -\frac{1}{|P_i|}\sum_{p}\log\frac{e^{s_{ip}/\tau}}
    {\sum_{a\ne i}e^{s_{ia}/\tau}}` (Khosla et al., NeurIPS 2020).

    See :func:`lightning_losses.functional.metric_learning.supcon`.

    Args:
        temperature: ``τ > 0``. Default 0.1 (as pytorch-metric-learning's ``SupConLoss``).
        normalize: cosine similarity (L2-normalise first). Default True.
        gather: under DDP, use the references of every rank (all-gather with gradients). Default True.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("supcon")(embeddings=torch.randn(6, 4), target=torch.tensor([0, 0, 1, 1, 2, 2])).shape
        torch.Size([6])
    """

    def __init__(
        self, temperature: float = 0.1, normalize: bool = True, gather: bool = True, validate_args: bool = True
    ) -> None:
        super().__init__(normalize, gather, validate_args)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)

    def forward(
        self,
        embeddings: torch.Tensor,
        target: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return MF.supcon(
            embeddings,
            target,
            ref_embeddings=ref_embeddings,
            ref_target=ref_target,
            temperature=self.temperature,
            **self._common(),
        )


@LOSSES.register("triplet", aliases=("triplet_margin",))
class Triplet(EmbeddingLoss):
    r"""Triplet margin loss :math:`[d_{ip} - d_{in} + m]_+` per anchor, batch-all or batch-hard mining.

    See :func:`lightning_losses.functional.metric_learning.triplet`.

    Args:
        margin: ``m >= 0``. Default 0.2 (pytorch-metric-learning's ``TripletMarginLoss`` uses 0.05).
        mining: ``"batch_all"`` (mean over the anchor's triplets, default) or ``"batch_hard"`` (hardest positive and
            hardest negative, Hermans et al. 2017).
        normalize: Euclidean distance between L2-normalised embeddings. Default True.
        gather: under DDP, use the references of every rank (all-gather with gradients). Default True.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("triplet", mining="batch_hard")
        >>> loss(embeddings=torch.randn(6, 4), target=torch.tensor([0, 0, 1, 1, 2, 2])).shape
        torch.Size([6])
    """

    needs_negative = True

    def __init__(
        self,
        margin: float = 0.2,
        mining: str = "batch_all",
        normalize: bool = True,
        gather: bool = True,
        validate_args: bool = True,
    ) -> None:
        super().__init__(normalize, gather, validate_args)
        self.margin = check_number("margin", margin, low=0.0)
        self.mining = check_choice("mining", mining, MF.MINING)

    def forward(
        self,
        embeddings: torch.Tensor,
        target: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return MF.triplet(
            embeddings,
            target,
            ref_embeddings=ref_embeddings,
            ref_target=ref_target,
            margin=self.margin,
            mining=self.mining,
            **self._common(),
        )


@LOSSES.register("multi_similarity", aliases=("ms_loss", "multisimilarity"))
class MultiSimilarity(EmbeddingLoss):
    r"""Multi-Similarity loss (Wang et al., CVPR 2019): :math:`\frac1\alpha\log(1+\sum_p e^{-\alpha(s_{ip}-\lambda)})
    + \frac1\beta\log(1+\sum_n e^{\beta(s_{in}-\lambda)})`.

    See :func:`lightning_losses.functional.metric_learning.multi_similarity`. Defaults are pytorch-metric-learning's.

    Args:
        alpha: positive-pair scale ``> 0``. Default 2.0.
        beta: negative-pair scale ``> 0``. Default 50.0.
        base: similarity threshold ``λ``. Default 0.5.
        normalize: cosine similarity (L2-normalise first). Default True.
        gather: under DDP, use the references of every rank (all-gather with gradients). Default True.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("multi_similarity")(embeddings=torch.randn(4, 3), target=torch.tensor([0, 0, 1, 1])).shape
        torch.Size([4])
    """

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        normalize: bool = True,
        gather: bool = True,
        validate_args: bool = True,
    ) -> None:
        super().__init__(normalize, gather, validate_args)
        self.alpha = check_number("alpha", alpha, low=0.0, low_open=True)
        self.beta = check_number("beta", beta, low=0.0, low_open=True)
        self.base = check_number("base", base)

    def forward(
        self,
        embeddings: torch.Tensor,
        target: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return MF.multi_similarity(
            embeddings,
            target,
            ref_embeddings=ref_embeddings,
            ref_target=ref_target,
            alpha=self.alpha,
            beta=self.beta,
            base=self.base,
            **self._common(),
        )


@LOSSES.register("circle", aliases=("circle_loss",))
class Circle(EmbeddingLoss):
    r"""Circle loss (Sun et al., CVPR 2020): :math:`\log[1 + \sum_n e^{\gamma\alpha_n(s_n-m)}
    \sum_p e^{-\gamma\alpha_p(s_p-1+m)}]` with detached :math:`\alpha_p=[1+m-s_p]_+,\ \alpha_n=[s_n+m]_+`.

    See :func:`lightning_losses.functional.metric_learning.circle`.

    Args:
        m: relaxation margin in ``[0, 1]``. Default 0.25 (paper, face recognition; pytorch-metric-learning: 0.4).
        gamma: scale ``> 0``. Default 256 (paper, face recognition; pytorch-metric-learning: 80).
        normalize: cosine similarity (L2-normalise first). Default True.
        gather: under DDP, use the references of every rank (all-gather with gradients). Default True.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("circle", gamma=80)(embeddings=torch.randn(4, 3), target=torch.tensor([0, 0, 1, 1])).shape
        torch.Size([4])
    """

    needs_negative = True

    def __init__(
        self,
        m: float = 0.25,
        gamma: float = 256.0,
        normalize: bool = True,
        gather: bool = True,
        validate_args: bool = True,
    ) -> None:
        super().__init__(normalize, gather, validate_args)
        self.m = check_number("m", m, low=0.0, high=1.0)
        self.gamma = check_number("gamma", gamma, low=0.0, low_open=True)

    def forward(
        self,
        embeddings: torch.Tensor,
        target: torch.Tensor,
        ref_embeddings: torch.Tensor | None = None,
        ref_target: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return MF.circle(
            embeddings,
            target,
            ref_embeddings=ref_embeddings,
            ref_target=ref_target,
            m=self.m,
            gamma=self.gamma,
            **self._common(),
        )
