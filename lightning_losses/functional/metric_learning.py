r"""Per-anchor metric-learning losses (pure functions): ``embeddings [N, D]``, ``target [N]`` int -> ``[N]``.

Input convention (shared by every loss here, pytorch-metric-learning's ``ref_emb`` / ``ref_labels`` idea):

- **anchors** are the rows of ``embeddings`` (this rank's batch), with labels ``target``;
- **references** are ``embeddings`` themselves (the anchor's own row excluded) unless ``ref_embeddings [M, D]`` is
  given (no row is excluded then). ``ref_target [M]`` labels the references and defaults to ``target`` (the
  *paired-views* form: row ``i`` of ``ref_embeddings`` is another view of the instance in row ``i``, so ``M = N``);
- a reference is a **positive** of anchor ``i`` when its label equals ``target[i]``, a **negative** otherwise.

Under DDP with ``gather=True`` (default) the references are all-gathered from every rank with gradients
(:func:`lightning_losses.distributed.all_gather_with_grad`), so each rank computes the exact per-anchor losses of its
own anchors against the *global* batch. No extra scaling is needed: the Objective's share
``k * sum_local(w l) / sum_global(w)`` plus the gather's backward (sum of every rank's upstream gradient, then this
rank's slice) gives each rank ``k`` times the one-process gradient of its rows, and DDP's average over ``k`` ranks
restores the one-process gradient exactly (derivation in ``tests/losses/test_metric_learning.py``). Every rank must
call the loss (it is a collective). Labels must mean the same thing on every rank (instance ids must be global).

Anchors without a valid positive (and, where the loss needs one, without a negative) get loss 0;
:func:`valid_anchors` returns the mask the Objective uses to drop them from the normaliser.

Computation runs in float32 (float64 stays float64) with autocast disabled, so half-precision embeddings and
``torch.autocast`` give finite losses; masked log-sum-exps never see ``-inf``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses.functional._metric_pairs import (
    finish,
    full_precision,
    masked_lse,
    run,
    sim,
    valid_anchors,
    valid_rows,
)
from lightning_losses.functional.metric_pairwise import MINING as MINING  # re-exported (old import path)
from lightning_losses.functional.metric_pairwise import circle, multi_similarity, triplet

__all__ = ["circle", "info_nce", "multi_similarity", "supcon", "triplet", "valid_anchors"]


@full_precision
def info_nce(
    embeddings: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    ref_embeddings: torch.Tensor | None = None,
    ref_target: torch.Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    gather: bool = True,
) -> torch.Tensor:
    r"""InfoNCE / NT-Xent per anchor (Oord et al. 2018; Chen et al., SimCLR, ICML 2020).

    For anchor ``i`` with positives :math:`P_i`, negatives :math:`N_i` and :math:`l_{ij} = s_{ij}/\tau`:

    .. math::
        \ell_i = \frac{1}{|P_i|}\sum_{p\in P_i} -\log\frac{e^{l_{ip}}}{e^{l_{ip}} + \sum_{n\in N_i} e^{l_{in}}}

    Each positive is contrasted with the negatives only (pytorch-metric-learning's ``NTXentLoss``, which reduces the
    same pair losses by a mean over *pairs*; ours averages per anchor, identical when every anchor has one positive as
    in SimCLR). Forms: SimCLR (both views stacked in ``embeddings``, ``target`` = instance id), paired views
    (``ref_embeddings`` with ``target=None``: row ``i`` of ``ref_embeddings`` is the only positive of row ``i``, the
    other references are negatives: CLIP / MoCo style, one direction), or labels (any shared label is a positive).
    ``s`` is cosine similarity (``normalize=True``, default) or the dot product. Anchors without a positive or a
    negative get 0.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
        >>> info_nce(x, torch.tensor([0, 0, 1, 1]), temperature=0.5).round(decimals=4)
        tensor([0.2650, 0.3147, 0.2650, 0.3147])
    """
    p = run(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather, labels_required=False)
    logits = sim(p) / temperature
    neg_lse = masked_lse(logits, p.neg)
    pair = F.softplus(neg_lse[:, None] - logits)  # -log(e^l_p / (e^l_p + sum_n e^l_n))
    pair = torch.where(p.pos, pair, torch.zeros_like(pair))
    loss = pair.sum(dim=1) / p.pos.sum(dim=1).clamp_min(1)
    return finish(loss, valid_rows(p, needs_negative=True))


@full_precision
def supcon(
    embeddings: torch.Tensor,
    target: torch.Tensor,
    *,
    ref_embeddings: torch.Tensor | None = None,
    ref_target: torch.Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    gather: bool = True,
) -> torch.Tensor:
    r"""Supervised contrastive loss per anchor (Khosla et al., NeurIPS 2020, :math:`\mathcal{L}^{sup}_{out}`).

    .. math::
        \ell_i = -\frac{1}{|P_i|}\sum_{p\in P_i}\log\frac{\exp(s_{ip}/\tau)}{\sum_{a\ne i}\exp(s_{ia}/\tau)}

    The denominator runs over every reference except the anchor itself (positives and negatives). Equals
    pytorch-metric-learning's ``SupConLoss`` per anchor. Anchors without a positive get 0.

    Example:
        >>> x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
        >>> supcon(x, torch.tensor([0, 0, 1, 1]), temperature=0.5).round(decimals=4)
        tensor([0.2650, 0.3147, 0.2650, 0.3147])
    """
    p = run(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather)
    logits = sim(p) / temperature
    log_prob = logits - masked_lse(logits, p.pos | p.neg)[:, None]
    total = torch.where(p.pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    loss = -total / p.pos.sum(dim=1).clamp_min(1)
    return finish(loss, valid_rows(p, needs_negative=False))
