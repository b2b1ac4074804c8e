r"""Lovász losses (Berman, Rannen Triki & Blaschko, *The Lovász-Softmax loss: A tractable surrogate for the
optimization of the intersection-over-union measure in neural networks*, CVPR 2018), per image: ``[N]``.

The Jaccard loss of a set of mispredicted pixels ``M`` is :math:`\Delta_J(M) = |M| / |\{y = 1\} \cup M|`, a
submodular set function. Its Lovász extension evaluated at a vector of pixel errors ``m`` is

.. math:: \bar\Delta_J(m) = \sum_{i} m_{\pi_i}\,g_i,\qquad
          g_i = \Delta_J(\{\pi_1, \dots, \pi_i\}) - \Delta_J(\{\pi_1, \dots, \pi_{i-1}\})

with :math:`\pi` the order of decreasing errors. With ``gts = |{y = 1}|`` and the labels sorted by ``π``,
:math:`1 - \Delta_J(\text{first } i) = (gts - \sum_{k \le i} y_{\pi_k}) / (gts + \sum_{k \le i} (1 - y_{\pi_k}))`:
two cumulative sums. The sort runs batched over samples (and classes); no Python loop.
"""

from __future__ import annotations

import torch

from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.functional.segmentation import check_binary_nd, class_probs

__all__ = ["LOVASZ_CLASSES", "lovasz_grad", "lovasz_hinge", "lovasz_softmax"]

LOVASZ_CLASSES = ("present", "all")


def lovasz_grad(gt_sorted: torch.Tensor) -> torch.Tensor:
    """The increments ``g`` of the Jaccard loss along the last axis of the labels ``gt_sorted`` (0 / 1, sorted by
    decreasing error); ``1 - Δ_J`` has a positive denominator wherever there is a pixel."""
    gts = gt_sorted.sum(dim=-1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(dim=-1)
    union = gts + (1.0 - gt_sorted).cumsum(dim=-1)
    jac = 1.0 - intersection / union.clamp_min(1.0)
    return torch.cat([jac[..., :1], jac[..., 1:] - jac[..., :-1]], dim=-1)


def _extension(errors: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``Σ_i max(m_{π_i}, 0) g_i`` along the last axis (errors below 0 count as 0: hinge / ignored pixels)."""
    errors_sorted, perm = torch.sort(errors, dim=-1, descending=True)
    grad = lovasz_grad(labels.gather(-1, perm))
    return (errors_sorted.clamp_min(0.0) * grad).sum(dim=-1)


def lovasz_hinge(logits: torch.Tensor, target: torch.Tensor, *, validate_args: bool = True) -> torch.Tensor:
    r"""Per-image binary Lovász hinge loss (Berman et al., CVPR 2018, eq. 9; the paper's ``per_image`` form).

    Hinge errors :math:`m_j = \max(0, 1 - z_j s_j)`, :math:`s_j = 2y_j - 1`, over all the non-batch elements of one
    sample (``logits [N, ...]``, ``target`` alike in {0, 1}); the loss is :math:`\bar\Delta_J(m)` (module docstring),
    a convex surrogate of ``1 - IoU`` of the foreground.

    Example:
        >>> lovasz_hinge(torch.tensor([[2.0, -2.0], [0.0, 0.0]]), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
        tensor([0., 1.])
    """
    check_binary_nd(logits, target, validate_args=validate_args)
    z = _upcast(logits).reshape(logits.shape[0], -1)
    y = target.reshape(target.shape[0], -1).to(z.dtype)
    errors = 1.0 - z * (2.0 * y - 1.0)
    return _extension(errors, y)


def lovasz_softmax(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    classes: str = "present",
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-image multi-class Lovász-Softmax loss (Berman et al., CVPR 2018, eq. 12; the ``per_image`` form).

    For each class ``c`` the pixel errors are :math:`m_j(c) = |[y_j = c] - p_j(c)|` with ``p = softmax(logits)``
    over axis 1 (``logits [N, C, ...]``, integer ``target [N, ...]``); pixels labelled ``ignore_index`` are left
    out. The loss is the mean over classes of :math:`\bar\Delta_{J_c}(m(c))`: over the classes present in the
    sample's labels (``classes="present"``, default, the authors' default; 0 for a sample without any) or over all
    ``C`` classes (``"all"``; reported to train to near-zero mIoU, authors' issue #20). The authors' default for
    the softmax form is one value over the whole batch (``per_image=False``); this is the per-image form, which
    makes it a per-sample loss.

    Example:
        >>> lovasz_softmax(torch.tensor([[[4.0, -4.0], [-4.0, 4.0]]]), torch.tensor([[0, 1]])).round(decimals=4)
        tensor([0.0003])
    """
    if classes not in LOVASZ_CLASSES:
        raise ValueError(f"`classes` must be one of {LOVASZ_CLASSES}, got {classes!r}")
    parts = class_probs(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    errors = torch.where(parts.valid, (parts.fg - parts.p).abs(), -1.0)  # ignored pixels sort last and count 0
    per_class = _extension(errors, parts.fg)  # [N, C]
    if classes == "all":
        return per_class.mean(dim=1)
    present = (parts.fg.sum(dim=-1) > 0).to(per_class.dtype)
    return (per_class * present).sum(dim=1) / present.sum(dim=1).clamp_min(1.0)
