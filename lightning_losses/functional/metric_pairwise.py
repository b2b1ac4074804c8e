"""Pair-based metric-learning losses per anchor: triplet, Multi-Similarity and Circle.

Same input convention, DDP gathering and precision rules as the contrastive losses: see
:mod:`lightning_losses.functional.metric_learning` (which re-exports these functions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses.functional._metric_pairs import Pairs, finish, full_precision, masked_lse, run, sim, valid_rows

__all__ = ["MINING", "circle", "multi_similarity", "triplet"]

MINING = ("batch_all", "batch_hard")


def _distances(p: Pairs) -> torch.Tensor:
    sq = p.anchors.square().sum(1)[:, None] + p.refs.square().sum(1)[None, :] - 2.0 * sim(p)
    # clamp: the (masked) self pair and duplicates have distance 0, where sqrt has an infinite derivative
    return sq.clamp_min(torch.finfo(sq.dtype).eps).sqrt()


@full_precision
def triplet(
    embeddings: torch.Tensor,
    target: torch.Tensor,
    *,
    ref_embeddings: torch.Tensor | None = None,
    ref_target: torch.Tensor | None = None,
    margin: float = 0.2,
    mining: str = "batch_all",
    normalize: bool = True,
    gather: bool = True,
) -> torch.Tensor:
    r"""Triplet margin loss per anchor with Euclidean distance (Schroff et al., FaceNet, CVPR 2015).

    - ``mining="batch_all"`` (default): mean over every triplet of the anchor,
      :math:`\ell_i = \frac{1}{|P_i||N_i|}\sum_{p\in P_i}\sum_{n\in N_i}[d_{ip} - d_{in} + m]_+`, computed by sorting
      the negative distances (``O(M log M)`` per anchor, no ``[N, M, M]`` tensor).
    - ``mining="batch_hard"``: hardest positive and negative (Hermans et al. 2017),
      :math:`\ell_i = [\max_{p} d_{ip} - \min_{n} d_{in} + m]_+`.

    ``d`` is the Euclidean distance between L2-normalised embeddings (``normalize=True``, default, as
    pytorch-metric-learning's ``LpDistance``) or raw ones. pytorch-metric-learning's ``TripletMarginLoss`` (default
    ``margin=0.05``) averages over the triplets with non-zero loss (``AvgNonZeroReducer``); ours averages the
    anchor's triplets, then the Objective averages the anchors. Anchors without a positive or a negative get 0.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
        >>> triplet(x, torch.tensor([0, 0, 1, 1]), margin=0.2).round(decimals=4)
        tensor([0.9069, 0.9069, 0.9069, 0.9069])
    """
    p = run(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather)
    d = _distances(p)
    valid = valid_rows(p, needs_negative=True)
    if mining == "batch_hard":
        low = torch.full_like(d, -torch.inf)
        hardest_pos = torch.where(p.pos, d, low).amax(dim=1)
        hardest_neg = torch.where(p.neg, d, -low).amin(dim=1)
        loss = F.relu(torch.where(valid, hardest_pos - hardest_neg, torch.zeros_like(hardest_pos)) + margin)
        return finish(loss, valid)
    if mining != "batch_all":
        raise ValueError(f"`mining` must be one of {MINING}, got {mining!r}")
    # sum_{p,n} [d_ip + m - d_in]_+ = sum_p (c_ip (d_ip + m) - S_ip), c/S = count/sum of d_in below d_ip + m
    neg_sorted = torch.where(p.neg, d, torch.full_like(d, torch.inf)).sort(dim=1).values
    finite = torch.where(torch.isfinite(neg_sorted), neg_sorted, torch.zeros_like(neg_sorted))
    csum = torch.cat([finite.new_zeros(finite.shape[0], 1), finite.cumsum(dim=1)], dim=1)
    threshold = d + margin
    count = torch.searchsorted(neg_sorted.detach(), threshold.detach().contiguous())
    below_sum = csum.gather(1, count)
    per_pair = count.to(d.dtype) * threshold - below_sum
    total = torch.where(p.pos, per_pair, torch.zeros_like(per_pair)).sum(dim=1)
    num_triplets = (p.pos.sum(dim=1) * p.neg.sum(dim=1)).clamp_min(1)
    return finish(total / num_triplets, valid)


@full_precision
def multi_similarity(
    embeddings: torch.Tensor,
    target: torch.Tensor,
    *,
    ref_embeddings: torch.Tensor | None = None,
    ref_target: torch.Tensor | None = None,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    normalize: bool = True,
    gather: bool = True,
) -> torch.Tensor:
    r"""Multi-Similarity loss per anchor (Wang et al., CVPR 2019), without the pair-mining step.

    .. math::
        \ell_i = \frac{1}{\alpha}\log\Big(1 + \sum_{p\in P_i} e^{-\alpha(s_{ip}-\lambda)}\Big)
               + \frac{1}{\beta}\log\Big(1 + \sum_{n\in N_i} e^{\beta(s_{in}-\lambda)}\Big)

    with ``λ = base`` and ``s`` cosine similarity (``normalize=True``, default). Equals pytorch-metric-learning's
    ``MultiSimilarityLoss`` per anchor for anchors with a positive; PML keeps the negative term of anchors without a
    positive, here they get 0 and leave the normaliser (the library-wide rule). Add a miner upstream for the paper's
    ε-mining.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> multi_similarity(x, torch.tensor([0, 0, 1, 1])).round(decimals=4)
        tensor([0.1566, 0.1566, 0.1566, 0.1566])
    """
    p = run(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather)
    s = sim(p)
    pos_term = F.softplus(masked_lse(-alpha * (s - base), p.pos)) / alpha
    neg_term = F.softplus(masked_lse(beta * (s - base), p.neg)) / beta
    return finish(pos_term + neg_term, valid_rows(p, needs_negative=False))


@full_precision
def circle(
    embeddings: torch.Tensor,
    target: torch.Tensor,
    *,
    ref_embeddings: torch.Tensor | None = None,
    ref_target: torch.Tensor | None = None,
    m: float = 0.25,
    gamma: float = 256.0,
    normalize: bool = True,
    gather: bool = True,
) -> torch.Tensor:
    r"""Circle loss per anchor (Sun et al., CVPR 2020), pair-label form.

    .. math::
        \ell_i = \log\Big[1 + \sum_{n\in N_i} e^{\gamma\alpha_n(s_n - \Delta_n)}
                 \sum_{p\in P_i} e^{-\gamma\alpha_p(s_p - \Delta_p)}\Big],\quad
        \alpha_p = [1 + m - s_p]_+,\ \alpha_n = [s_n + m]_+,\ \Delta_p = 1 - m,\ \Delta_n = m

    The weights ``α`` are treated as constants in the gradient (detached, as in the paper and in
    pytorch-metric-learning's ``CircleLoss``, whose defaults are ``m=0.4, gamma=80``; ours follow the paper's face
    recognition setting). ``s`` is cosine similarity (``normalize=True``, default). Anchors without a positive or a
    negative get 0.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
        >>> circle(x, torch.tensor([0, 0, 1, 1]), gamma=32.0).round(decimals=4)
        tensor([0.0360, 0.0360, 0.0360, 0.0360])
    """
    p = run(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather)
    s = sim(p)
    alpha_p = F.relu(1.0 + m - s.detach())
    alpha_n = F.relu(s.detach() + m)
    logit_p = -gamma * alpha_p * (s - (1.0 - m))
    logit_n = gamma * alpha_n * (s - m)
    valid = valid_rows(p, needs_negative=True)
    z = masked_lse(logit_p, p.pos) + masked_lse(logit_n, p.neg)
    return finish(F.softplus(torch.where(valid, z, torch.zeros_like(z))), valid)
