r"""Poly-1 for sigmoid (binary / multi-label) outputs: ``logits [N]`` or ``[N, K]``, ``target`` alike in [0, 1]."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import check_binary
from lightning_losses._validation.tensors import upcast_half as _upcast

__all__ = ["sigmoid_poly1"]


def sigmoid_poly1(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    epsilon: float = 1.0,
    pos_weight: torch.Tensor | None = None,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample sigmoid Poly-1 loss (Leng et al., *PolyLoss: A Polynomial Expansion Perspective of Classification
    Loss Functions*, ICLR 2022), the paper's Poly-1 with the sigmoid in place of the softmax:

    .. math:: \ell = \mathrm{BCE}(z, y) + \varepsilon\,(1 - p_t),\qquad 1 - p_t = y\,\sigma(-z) + (1 - y)\,\sigma(z)

    per label, then the mean over the ``K`` labels (as :func:`~lightning_losses.functional.bce`). ``epsilon >= -1``
    (default 1, the paper's). ``pos_weight`` (``[K]`` or scalar) weighs the positive term of the BCE part only, as
    ``binary_cross_entropy_with_logits``. ``1 - p_t`` is computed from two sigmoids, never ``1 - sigmoid``.

    Example:
        >>> sigmoid_poly1(torch.tensor([0.0]), torch.tensor([1.0])).round(decimals=4)
        tensor([1.1931])
    """
    check_binary(logits, target, validate_args=validate_args)
    z = _upcast(logits)
    y = target.to(z.dtype)
    if pos_weight is not None:
        pos_weight = pos_weight.to(device=z.device, dtype=z.dtype)
    bce = F.binary_cross_entropy_with_logits(z, y, pos_weight=pos_weight, reduction="none")
    one_minus_pt = y * torch.sigmoid(-z) + (1.0 - y) * torch.sigmoid(z)
    loss = bce + epsilon * one_minus_pt
    return loss.mean(dim=-1) if loss.ndim == 2 else loss
