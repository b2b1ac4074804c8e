r"""Per-sample binary and multi-label losses (pure functions). ``[N]`` or ``[N, K]`` logits -> ``[N]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import check_binary, check_per_class

__all__ = ["bce"]


def bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    pos_weight: torch.Tensor | None = None,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample binary cross entropy with logits, averaged over the ``K`` labels of a multi-label sample.

    .. math::
        \ell_{ik} = -\big[p_k\, y_{ik} \log\sigma(z_{ik}) + (1 - y_{ik}) \log(1 - \sigma(z_{ik}))\big],
        \qquad \ell_i = \tfrac{1}{K}\sum_k \ell_{ik}

    ``p_k`` is the optional positive-class weight (``pos_weight``, shape ``[K]`` or scalar). Computed in the stable
    log-sigmoid form; float32 for half-precision inputs. The logistic log-likelihood (Cox, *The Regression Analysis
    of Binary Sequences*, JRSS B 1958); ``pos_weight`` as in ``torch.nn.BCEWithLogitsLoss``.

    Example:
        >>> bce(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 1.0])).round(decimals=4)
        tensor([0.6931, 0.0486])
    """
    check_binary(logits, target, validate_args=validate_args)
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if pos_weight is not None:
        check_per_class("pos_weight", pos_weight, z.shape[-1] if z.ndim == 2 else 1, "K", scalar_ok=True)
        pos_weight = pos_weight.to(device=z.device, dtype=z.dtype)
    loss = F.binary_cross_entropy_with_logits(z, target.to(z.dtype), pos_weight=pos_weight, reduction="none")
    return loss.mean(dim=-1) if loss.ndim == 2 else loss
