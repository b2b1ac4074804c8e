r"""AugMix consistency (Hendrycks, Mu, Cubuk, Zoph, Gilmer & Lakshminarayanan, *AugMix: A Simple Data Processing
Method to Improve Robustness and Uncertainty*, ICLR 2020): the Jensen-Shannon divergence among the predictions on
``K`` views of each sample.

.. math:: \mathrm{JS}(p_1, \dots, p_K) = \frac1K\sum_{k=1}^{K}\mathrm{KL}(p_k \,\|\, M),\qquad M = \frac1K\sum_k p_k

The paper's total loss is :math:`\mathrm{CE}(p_{\text{orig}}, y) + \lambda\,\mathrm{JS}(p_{\text{orig}};
p_{\text{augmix1}}; p_{\text{augmix2}})` with ``λ = 12`` and ``K = 3`` (the clean view first).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import check_multiclass, shape_str
from lightning_losses._validation.tensors import upcast_half as _upcast

__all__ = ["js_divergence", "jsd"]


def _check_views(logits: torch.Tensor) -> None:
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3 or not logits.is_floating_point():
        got = f"{logits.dtype} {shape_str(logits)}" if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"`logits` must be a floating tensor of shape [N, K, C] (K views, the clean one first), got {got}"
        )
    if logits.shape[1] < 2:
        raise ValueError(f"`logits` must hold K >= 2 views on axis 1, got {shape_str(logits)}")


def js_divergence(logits: torch.Tensor) -> torch.Tensor:
    r"""Per-sample generalised Jensen-Shannon divergence among the ``K`` softmax predictions ``logits [N, K, C]``:
    ``[N]`` (module docstring). Computed in log space: :math:`\log M = \mathrm{logsumexp}_k \log p_k - \log K`, so
    no probability is clamped (the reference code clamps ``M`` to ``[1e-7, 1]``).

    Example:
        >>> js_divergence(torch.tensor([[[0.0, 0.0], [0.0, 0.0]]]))
        tensor([0.])
    """
    _check_views(logits)
    logp = torch.log_softmax(_upcast(logits), dim=-1)
    log_m = torch.logsumexp(logp, dim=1, keepdim=True) - math.log(logits.shape[1])
    return (logp.exp() * (logp - log_m)).sum(dim=-1).mean(dim=1)


def jsd(
    logits: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    lam: float = 12.0,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample AugMix loss :math:`\ell_i = \mathrm{CE}(z_{i,0}, y_i) + \lambda\,\mathrm{JS}(p_{i,1..K})`.

    ``logits [N, K, C]``: ``K >= 2`` views of each sample, the clean view first (axis 1). With ``target`` (integer
    labels ``[N]`` or probabilities ``[N, C]``) the cross entropy of the clean view is added, as in the paper;
    without it the loss is the consistency term alone (unlabelled data). ``lam >= 0`` (default 12, the paper's). A
    sample labelled ``ignore_index`` keeps its consistency term (it needs no label).

    Example:
        >>> jsd(torch.zeros(1, 3, 2), torch.tensor([0])).round(decimals=4)
        tensor([0.6931])
    """
    consistency = js_divergence(logits)
    loss = lam * consistency if lam != 1.0 else consistency
    if target is None:
        return loss
    clean = logits[:, 0]
    soft = check_multiclass(clean, target, ignore_index=ignore_index, validate_args=validate_args)
    if soft:
        ce = F.cross_entropy(_upcast(clean), target.to(consistency.dtype), reduction="none")
    else:
        ce = F.cross_entropy(_upcast(clean), target.long(), ignore_index=ignore_index, reduction="none")
    return loss + ce
