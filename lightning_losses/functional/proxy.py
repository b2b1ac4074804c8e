r"""Proxy-based metric-learning losses (pure functions): ``embeddings [N, D]``, integer ``target [N]`` and class
``proxies [C * K, D]`` (learnable, held by the loss module; row ``c * K + k`` is sub-center ``k`` of class ``c``).

Cosine similarities :math:`s_{ic}` between the L2-normalised embeddings and proxies. ArcFace, CosFace and sub-center
ArcFace are cross entropy on the margin-modified, scaled cosines, one value per sample (``[N]``); samples whose label is
``ignore_index`` get 0. Proxy-Anchor is a batch-level scalar (its terms are per proxy, sums over the samples inside a
log); with ``gather=True`` under DDP the embeddings and labels of every rank are all-gathered with gradients, so each
rank computes the global-batch loss and DDP's gradient average equals one process on the concatenated batch.

Computation runs in float32 (float64 when the embeddings or proxies are float64) with autocast disabled.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import as_index, check_label_range, not_ignored, shape_str
from lightning_losses.distributed import all_gather_with_grad, is_distributed
from lightning_losses.functional._metric_pairs import full_precision

__all__ = ["arcface", "cosface", "proxy_anchor", "proxy_cosine"]


def proxy_cosine(
    embeddings: torch.Tensor, proxies: torch.Tensor, *, sub_centers: int = 1, validate: bool = True
) -> torch.Tensor:
    """Cosine similarity ``[N, C]`` of each embedding to each class: the largest over the class's ``sub_centers``
    proxies (rows ``c * K .. c * K + K - 1`` of ``proxies [C * K, D]``)."""
    if validate:
        _check(embeddings, proxies, sub_centers)
    dtype = torch.float64 if torch.float64 in (embeddings.dtype, proxies.dtype) else torch.float32
    cos = F.normalize(embeddings.to(dtype), dim=1) @ F.normalize(proxies.to(dtype), dim=1).T
    if sub_centers > 1:
        cos = cos.view(cos.shape[0], -1, sub_centers).amax(dim=2)
    return cos


def _check(embeddings: torch.Tensor, proxies: torch.Tensor, sub_centers: int) -> None:
    for name, x in (("embeddings", embeddings), ("proxies", proxies)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim != 2 or not x.is_floating_point():
            raise ValueError(f"`{name}` must be a floating tensor of shape [N, D], got {x.dtype} {shape_str(x)}")
    if embeddings.shape[1] != proxies.shape[1]:
        raise ValueError(
            f"`embeddings` must have D = {proxies.shape[1]} columns like the proxies (`embedding_size`), got "
            f"{shape_str(embeddings)}"
        )
    if proxies.shape[0] % sub_centers:
        raise ValueError(f"`proxies` rows ({proxies.shape[0]}) must be a multiple of `sub_centers` ({sub_centers})")


def _labels(target: torch.Tensor, n: int, num_classes: int, ignore_index: int | None, validate: bool) -> None:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"`target` must be a torch.Tensor, got {type(target).__name__}")
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise ValueError(f"`target` must hold integer class labels (int64), got {target.dtype}")
    if target.shape != (n,):
        raise ValueError(f"`target` must have shape [N] = [{n}] to match `embeddings`, got {shape_str(target)}")
    if validate:
        check_label_range(target, num_classes, ignore_index)


def _margin_ce(cos: torch.Tensor, target: torch.Tensor, target_logit, scale: float, ignore_index: int):
    valid = not_ignored(target, ignore_index)
    y = as_index(torch.where(valid, target, torch.zeros_like(target)))
    onehot = F.one_hot(y, cos.shape[1]).to(torch.bool)
    cos_y = cos.gather(1, y[:, None]).squeeze(1)
    logits = torch.where(onehot, target_logit(cos_y)[:, None], cos) * scale
    loss = torch.logsumexp(logits, dim=1) - logits.gather(1, y[:, None]).squeeze(1)
    return torch.where(valid, loss, torch.zeros_like(loss))


@full_precision
def arcface(
    embeddings: torch.Tensor,
    target: torch.Tensor,
    proxies: torch.Tensor,
    *,
    margin: float = 0.5,
    scale: float = 64.0,
    sub_centers: int = 1,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample ArcFace (additive angular margin; Deng et al., CVPR 2019), sub-center ArcFace when
    ``sub_centers = K > 1`` (Deng et al., ECCV 2020: the class cosine is the largest over its ``K`` proxies).

    .. math::
        \ell_i = -\log\frac{e^{s\,\psi(\theta_{iy})}}{e^{s\,\psi(\theta_{iy})} + \sum_{c\ne y} e^{s\cos\theta_{ic}}},
        \qquad \psi(\theta) = \begin{cases}\cos(\theta + m) & \theta \le \pi - m\\
        \cos\theta - m\sin m & \text{otherwise}\end{cases}

    (the second branch keeps the target logit decreasing in :math:`\theta`, as insightface and
    pytorch-metric-learning). ``cos(θ + m)`` is computed as ``cos θ cos m - sin θ sin m`` with
    ``sin θ = sqrt(max(1 - cos²θ, 1e-12))``, so the gradient stays finite at ``cos θ = ±1``.

    Args:
        margin: ``m`` in radians (pytorch-metric-learning takes degrees: its 28.6 is 0.4992 rad). Default 0.5.
        scale: ``s``. Default 64.

    Example:
        >>> proxies = torch.eye(3)
        >>> arcface(torch.eye(3), torch.tensor([0, 1, 2]), proxies, scale=4.0).round(decimals=4)
        tensor([0.0581, 0.0581, 0.0581])
    """
    cos = proxy_cosine(embeddings, proxies, sub_centers=sub_centers)
    _labels(target, cos.shape[0], cos.shape[1], ignore_index, validate_args)
    cos_m, sin_m = math.cos(margin), math.sin(margin)

    def psi(c: torch.Tensor) -> torch.Tensor:
        sin = (1.0 - c * c).clamp_min(1e-12).sqrt()
        return torch.where(c >= -cos_m, c * cos_m - sin * sin_m, c - margin * sin_m)

    return _margin_ce(cos, target, psi, scale, ignore_index)


@full_precision
def cosface(
    embeddings: torch.Tensor,
    target: torch.Tensor,
    proxies: torch.Tensor,
    *,
    margin: float = 0.35,
    scale: float = 64.0,
    ignore_index: int = -100,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sample CosFace / large-margin cosine loss (Wang et al., CVPR 2018):

    .. math:: \ell_i = -\log\frac{e^{s(\cos\theta_{iy} - m)}}{e^{s(\cos\theta_{iy} - m)} + \sum_{c\ne y}
        e^{s\cos\theta_{ic}}}

    Example:
        >>> cosface(torch.eye(3), torch.tensor([0, 1, 2]), torch.eye(3), scale=4.0).round(decimals=4)
        tensor([0.1385, 0.1385, 0.1385])
    """
    cos = proxy_cosine(embeddings, proxies)
    _labels(target, cos.shape[0], cos.shape[1], ignore_index, validate_args)
    return _margin_ce(cos, target, lambda c: c - margin, scale, ignore_index)


@full_precision
def proxy_anchor(
    embeddings: torch.Tensor,
    target: torch.Tensor,
    proxies: torch.Tensor,
    *,
    margin: float = 0.1,
    alpha: float = 32.0,
    gather: bool = True,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Proxy-Anchor loss (Kim et al., CVPR 2020), a batch-level scalar:

    .. math::
        \frac{1}{|P^+|}\sum_{p\in P^+}\log\Bigl(1 + \sum_{x\in X_p^+} e^{-\alpha(s(x,p) - \delta)}\Bigr)
        + \frac{1}{|P|}\sum_{p\in P}\log\Bigl(1 + \sum_{x\in X_p^-} e^{\alpha(s(x,p) + \delta)}\Bigr)

    :math:`P^+`: the proxies with a positive in the (global) batch, :math:`X_p^\pm` the batch's samples of / not of
    class ``p``, ``δ = margin``. Equals pytorch-metric-learning's ``ProxyAnchorLoss``. Under DDP with ``gather=True``
    (default) the batch is the global one (every rank must call it).

    Example:
        >>> proxy_anchor(torch.eye(2), torch.tensor([0, 1]), torch.eye(2), alpha=4.0).round(decimals=4)
        tensor(0.9400)
    """
    _check(embeddings, proxies, 1)
    _labels(target, embeddings.shape[0], proxies.shape[0], None, validate_args)
    if gather and is_distributed():
        embeddings = all_gather_with_grad(embeddings)
        target = all_gather_with_grad(target)
    cos = proxy_cosine(embeddings, proxies, validate=False)
    pos = F.one_hot(as_index(target), proxies.shape[0]).to(torch.bool)
    lowest = torch.finfo(cos.dtype).min
    pos_lse = torch.logsumexp(torch.where(pos, alpha * (margin - cos), lowest), dim=0)
    neg_lse = torch.logsumexp(torch.where(pos, lowest, alpha * (cos + margin)), dim=0)
    with_pos = pos.any(dim=0)
    pos_term = torch.where(with_pos, F.softplus(pos_lse), torch.zeros_like(pos_lse)).sum()
    neg_term = torch.where(pos.all(dim=0), torch.zeros_like(neg_lse), F.softplus(neg_lse)).sum()
    return pos_term / with_pos.sum().clamp_min(1) + neg_term / proxies.shape[0]
