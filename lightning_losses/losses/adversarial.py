"""Registered loss for importance-aware adversarial training: ``sovr`` (a thin module over
:func:`lightning_losses.functional.adversarial.sovr`)."""

from __future__ import annotations

import torch

from lightning_losses._validation import check_bool, check_int, check_number
from lightning_losses.functional.adversarial import sovr
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import LabelLoss

__all__ = ["SOVR"]


@LOSSES.register("sovr", aliases=("switching_ovr",))
class SOVR(LabelLoss):
    r"""Switching one-vs-the-rest loss (Kanai et al., ICML 2023): one-vs-the-rest
    :math:`-\log\sigma(z_y) - \sum_{k\ne y}\log(1-\sigma(z_k))` for the fraction ``M`` of samples with the smallest
    logit margins :math:`z_y - \max_{k\ne y} z_k` of the (global) batch, cross-entropy for the rest. Importance-aware
    weighted CE shrinks the margins of the less important samples; SOVR enlarges those of the important ones
    instead (the paper: OVR grows logit margins twice as fast as weighted CE on a simple problem). Pass the logits of
    the adversarial examples when training adversarially.

    See :func:`lightning_losses.functional.adversarial.sovr`.

    Args:
        fraction: ``M`` in ``[0, 1]``, the share of the batch switched to OVR (0: cross-entropy, 1: OVR). Default 0.4
            (this library's choice: the paper's value was not verified).
        gather: rank the margins over every DDP rank's samples (one process on the concatenated batch). Default True.
        ignore_index: label ignored in loss, ranking and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> logits, target = torch.tensor([[2.0, 0.0], [0.1, 0.0]]), torch.tensor([0, 0])
        >>> ll.build_loss("sovr", fraction=0.5)(logits=logits, target=target)
        tensor([0.1269, 1.3375])
    """

    def __init__(
        self, fraction: float = 0.4, gather: bool = True, ignore_index: int = -100, validate_args: bool = True
    ) -> None:
        super().__init__(validate_args)
        self.fraction = check_number("fraction", fraction, low=0.0, high=1.0)
        self.gather = check_bool("gather", gather)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.batch_statistics = 0.0 < self.fraction < 1.0  # the switch depends on the other samples' margins

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kw = {"fraction": self.fraction, "gather": self.gather, "ignore_index": self.ignore_index}
        return sovr(logits, target, validate_args=self.validate_args, **kw)
