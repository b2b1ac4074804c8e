r"""Per-sample binary and multi-label losses (pure functions). ``[N]`` or ``[N, K]`` logits -> ``[N]``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import as_index, check_binary, check_multiclass, check_per_class

__all__ = ["bce"]


def bce(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample binary cross entropy with logits, averaged over the ``K`` labels of a multi-label sample.

    .. math::
        \ell_{ik} = -\big[p_k\, y_{ik} \log\sigma(z_{ik}) + (1 - y_{ik}) \log(1 - \sigma(z_{ik}))\big],
        \qquad \ell_i = \tfrac{1}{K}\sum_k \ell_{ik}

    ``p_k`` is the optional positive-class weight (``pos_weight``, shape ``[K]`` or scalar). Computed in the stable
    log-sigmoid form; float32 for half-precision inputs. The logistic log-likelihood (Cox, *The Regression Analysis
    of Binary Sequences*, JRSS B 1958); ``pos_weight`` as in ``torch.nn.BCEWithLogitsLoss``.

    Label smoothing ``ε`` (``label_smoothing``): a ``target`` shaped like ``logits`` becomes
    :math:`y(1 - \varepsilon) + \varepsilon/2` (each label a two-class problem, as Keras' ``BinaryCrossentropy``);
    integer labels ``target [N]`` with ``logits [N, C]`` (multi-class training with BCE, timm's
    ``BinaryCrossEntropy``) become one-hot targets with :math:`1 - \varepsilon + \varepsilon/C` on the label and
    :math:`\varepsilon/C` elsewhere (``ε = 0``: plain one-hot).

    Example:
        >>> bce(torch.tensor([0.0, 3.0]), torch.tensor([1.0, 1.0])).round(decimals=4)
        tensor([0.6931, 0.0486])
    """
    dense = (
        isinstance(target, torch.Tensor)
        and isinstance(logits, torch.Tensor)
        and not target.is_floating_point()
        and logits.ndim == 2
        and target.shape != logits.shape
    )
    if dense:  # integer labels [N] for logits [N, C]: one-hot (smoothed) targets
        check_multiclass(logits, target, validate_args=validate_args)
    else:
        check_binary(logits, target, validate_args=validate_args)
    z = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    if dense:
        off = label_smoothing / z.shape[-1]
        y = torch.full_like(z, off).scatter_(-1, as_index(target).unsqueeze(-1), 1.0 - label_smoothing + off)
    else:
        y = target.to(z.dtype)
        if label_smoothing:
            y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
    if pos_weight is not None:
        check_per_class("pos_weight", pos_weight, z.shape[-1] if z.ndim == 2 else 1, "K", scalar_ok=True)
        pos_weight = pos_weight.to(device=z.device, dtype=z.dtype)
    loss = F.binary_cross_entropy_with_logits(z, y, pos_weight=pos_weight, reduction="none")
    return loss.mean(dim=-1) if loss.ndim == 2 else loss
