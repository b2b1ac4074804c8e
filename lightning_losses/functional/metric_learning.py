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

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import shape_str
from lightning_losses.distributed import all_gather_with_grad, is_distributed, rank

__all__ = ["circle", "info_nce", "multi_similarity", "supcon", "triplet", "valid_anchors"]

MINING = ("batch_all", "batch_hard")


def _check_labels(name: str, labels: object, rows: int, of: str) -> None:
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"`{name}` must hold integer labels (int64), got {labels.dtype}")
    if labels.shape != (rows,):
        raise ValueError(f"`{name}` must have shape [{rows}] to match `{of}`, got {shape_str(labels)}")


def _check_embeddings(name: str, x: object, dim: int | None = None) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2 or not x.is_floating_point():
        raise ValueError(f"`{name}` must be a floating tensor of shape [N, D], got {x.dtype} {shape_str(x)}")
    if dim is not None and x.shape[1] != dim:
        raise ValueError(f"`{name}` must have D = {dim} columns like `embeddings`, got {shape_str(x)}")


def _check_inputs(embeddings, target, ref_embeddings, ref_target, *, labels_required: bool) -> None:
    _check_embeddings("embeddings", embeddings)
    n = embeddings.shape[0]
    if target is None:
        if labels_required:
            raise ValueError("`target` [N] integer labels are required")
        if ref_embeddings is None:
            raise ValueError("without `target`, pass `ref_embeddings` (paired views: row i is the positive of row i)")
    else:
        _check_labels("target", target, n, "embeddings")
    if ref_embeddings is None:
        if ref_target is not None:
            raise ValueError("`ref_target` was given without `ref_embeddings`")
        return
    _check_embeddings("ref_embeddings", ref_embeddings, embeddings.shape[1])
    m = ref_embeddings.shape[0]
    if ref_target is None:
        if m != n:
            raise ValueError(
                f"`ref_embeddings` has {m} rows but `embeddings` {n}: pass `ref_target` unless the rows are paired"
            )
    else:
        if target is None:
            raise ValueError("`ref_target` needs `target` (labels on both sides)")
        _check_labels("ref_target", ref_target, m, "ref_embeddings")


@dataclass
class _Pairs:
    """Anchors, references and the pair masks of one call (``[n, M]`` booleans)."""

    anchors: torch.Tensor
    refs: torch.Tensor
    pos: torch.Tensor
    neg: torch.Tensor


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _labels(target, ref_target, n: int, m_local: int, gather: bool, device) -> tuple:
    """Anchor labels ``[n]``, reference labels ``[M]`` and this rank's row offset in the gathered references."""
    local_ref = target if ref_target is None else ref_target
    if local_ref is None:  # paired views without labels: instance ids = global row index
        local_ref = torch.arange(m_local, device=device)
    offset = torch.zeros((), dtype=torch.long, device=device)
    ref_labels = local_ref
    if gather and is_distributed():
        owner = torch.full((m_local,), rank(), dtype=torch.long, device=device)
        packed = all_gather_with_grad(torch.stack([local_ref.long(), owner], dim=1))
        ref_labels, offset = packed[:, 0], (packed[:, 1] < rank()).sum()
    if target is None:
        ref_labels = torch.arange(ref_labels.shape[0], device=device)
        anchor_labels = offset + torch.arange(n, device=device)
    else:
        anchor_labels = target
    return anchor_labels.long(), ref_labels.long(), offset


def _masks(target, ref_embeddings, ref_target, n: int, m_local: int, gather: bool, device):
    anchor_labels, ref_labels, offset = _labels(target, ref_target, n, m_local, gather, device)
    same = anchor_labels[:, None] == ref_labels[None, :]
    neg = ~same
    if ref_embeddings is None:  # references are the anchors themselves: exclude the self pair
        cols = torch.arange(ref_labels.shape[0], device=device)
        same = same & (cols[None, :] != (offset + torch.arange(n, device=device))[:, None])
    return same, neg


def _pairs(embeddings, target, ref_embeddings, ref_target, *, normalize: bool, gather: bool) -> _Pairs:
    dtype = _compute_dtype(embeddings)
    anchors = embeddings.to(dtype)
    if normalize:
        anchors = F.normalize(anchors, dim=1)
    if ref_embeddings is None:
        refs = anchors
    else:
        refs = ref_embeddings.to(dtype)
        refs = F.normalize(refs, dim=1) if normalize else refs
    m_local = refs.shape[0]
    if gather and is_distributed():
        refs = all_gather_with_grad(refs)
    pos, neg = _masks(target, ref_embeddings, ref_target, anchors.shape[0], m_local, gather, anchors.device)
    return _Pairs(anchors, refs, pos, neg)


def _masked_lse(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row-wise ``log sum_{mask} exp(x)``; rows with no entry get a very negative finite value (callers zero them)."""
    filled = torch.where(mask, x, torch.full_like(x, torch.finfo(x.dtype).min))
    return torch.logsumexp(filled, dim=1)


def _sim(p: _Pairs) -> torch.Tensor:
    return p.anchors @ p.refs.T


def _finish(loss: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    return torch.where(valid, loss, torch.zeros_like(loss))


def _valid(p: _Pairs, needs_negative: bool) -> torch.Tensor:
    valid = p.pos.any(dim=1)
    return valid & p.neg.any(dim=1) if needs_negative else valid


def valid_anchors(
    embeddings: torch.Tensor,
    target: torch.Tensor | None,
    *,
    ref_embeddings: torch.Tensor | None = None,
    ref_target: torch.Tensor | None = None,
    needs_negative: bool = False,
    gather: bool = True,
) -> torch.Tensor:
    """Boolean ``[N]``: anchors with at least one positive (and one negative when ``needs_negative``).

    Under DDP with ``gather=True`` the labels of every rank count (one small all-gather of labels).

    Example:
        >>> valid_anchors(torch.zeros(3, 2), torch.tensor([0, 0, 1]))
        tensor([ True,  True, False])
    """
    _check_inputs(embeddings, target, ref_embeddings, ref_target, labels_required=False)
    m_local = embeddings.shape[0] if ref_embeddings is None else ref_embeddings.shape[0]
    with torch.no_grad():
        pos, neg = _masks(target, ref_embeddings, ref_target, embeddings.shape[0], m_local, gather, embeddings.device)
    valid = pos.any(dim=1)
    return valid & neg.any(dim=1) if needs_negative else valid


def _run(embeddings, target, ref_embeddings, ref_target, *, normalize, gather, labels_required=True) -> _Pairs:
    _check_inputs(embeddings, target, ref_embeddings, ref_target, labels_required=labels_required)
    return _pairs(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather)


def _full_precision(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run ``fn`` with autocast disabled (its inputs are upcast to float32 inside)."""

    @functools.wraps(fn)
    def wrapper(embeddings, *args, **kwargs):
        device = embeddings.device.type if isinstance(embeddings, torch.Tensor) else "cpu"
        with torch.autocast(device_type=device, enabled=False):
            return fn(embeddings, *args, **kwargs)

    return wrapper


@_full_precision
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
    p = _run(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather, labels_required=False)
    logits = _sim(p) / temperature
    neg_lse = _masked_lse(logits, p.neg)
    pair = F.softplus(neg_lse[:, None] - logits)  # -log(e^l_p / (e^l_p + sum_n e^l_n))
    pair = torch.where(p.pos, pair, torch.zeros_like(pair))
    loss = pair.sum(dim=1) / p.pos.sum(dim=1).clamp_min(1)
    return _finish(loss, _valid(p, needs_negative=True))


@_full_precision
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
    p = _run(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather)
    logits = _sim(p) / temperature
    log_prob = logits - _masked_lse(logits, p.pos | p.neg)[:, None]
    total = torch.where(p.pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    loss = -total / p.pos.sum(dim=1).clamp_min(1)
    return _finish(loss, _valid(p, needs_negative=False))


def _distances(p: _Pairs) -> torch.Tensor:
    sq = p.anchors.square().sum(1)[:, None] + p.refs.square().sum(1)[None, :] - 2.0 * _sim(p)
    # clamp: the (masked) self pair and duplicates have distance 0, where sqrt has an infinite derivative
    return sq.clamp_min(torch.finfo(sq.dtype).eps).sqrt()


@_full_precision
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
    p = _run(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather)
    d = _distances(p)
    valid = _valid(p, needs_negative=True)
    if mining == "batch_hard":
        low = torch.full_like(d, -torch.inf)
        hardest_pos = torch.where(p.pos, d, low).amax(dim=1)
        hardest_neg = torch.where(p.neg, d, -low).amin(dim=1)
        loss = F.relu(torch.where(valid, hardest_pos - hardest_neg, torch.zeros_like(hardest_pos)) + margin)
        return _finish(loss, valid)
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
    return _finish(total / num_triplets, valid)


@_full_precision
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
    p = _run(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather)
    s = _sim(p)
    pos_term = F.softplus(_masked_lse(-alpha * (s - base), p.pos)) / alpha
    neg_term = F.softplus(_masked_lse(beta * (s - base), p.neg)) / beta
    return _finish(pos_term + neg_term, _valid(p, needs_negative=False))


@_full_precision
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
    p = _run(embeddings, target, ref_embeddings, ref_target, normalize=normalize, gather=gather)
    s = _sim(p)
    alpha_p = F.relu(1.0 + m - s.detach())
    alpha_n = F.relu(s.detach() + m)
    logit_p = -gamma * alpha_p * (s - (1.0 - m))
    logit_n = gamma * alpha_n * (s - m)
    valid = _valid(p, needs_negative=True)
    z = _masked_lse(logit_p, p.pos) + _masked_lse(logit_n, p.neg)
    return _finish(F.softplus(torch.where(valid, z, torch.zeros_like(z))), valid)
