r"""Environment penalties over the global batch's groups (environments): IRMv1, V-REx and CausIRL-CORAL.

Each function returns one scalar for the **global** batch: per-environment sums and counts are summed over the
data-parallel group with gradients (:func:`~lightning_losses.distributed.all_reduce_sum_with_grad`), so every rank
computes the same penalty, and adding it to each rank's loss as is makes DDP's gradient average equal one process on
the concatenated batch. Environments absent from the global batch are left out of the means. ``group`` holds the
environment id of each sample in ``[0, num_groups)``; other ids and masked samples count nowhere.

* :func:`irm_v1_penalty`: :math:`\frac1{|E|}\sum_e \big(\partial_w R^e(w\,z)\big|_{w=1}\big)^2`, in closed form:
  :math:`\partial_w \mathrm{CE}(w z, y)|_{w=1} = (\mathrm{softmax}(z) - e_y)^\top z` (binary:
  :math:`(\sigma(z) - y)\,z`), averaged over the environment's samples.
* :func:`vrex_penalty`: :math:`\frac1{|E|}\sum_e (R^e - \bar R)^2`, :math:`\bar R = \frac1{|E|}\sum_e R^e`.
* :func:`coral_penalty`: each environment's samples are cut at ``floor(cut_e * n_e)`` (in global batch order); the
  first pieces of all environments pool into :math:`A`, the rest into :math:`B`; the penalty is
  :math:`\operatorname{mean}_d(\mu_A - \mu_B)^2 + \operatorname{mean}_{d,d'}(\Sigma_A - \Sigma_B)^2` (unbiased
  covariances), 0 unless both pools have at least 2 samples.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from lightning_losses import distributed

__all__ = ["environment_sums", "global_positions", "irm_v1_penalty", "irm_v1_scale_grad", "vrex_penalty"]
__all__ += ["coral_penalty", "per_sample_risk"]


def _onehot(group: torch.Tensor, num_groups: int, mask: torch.Tensor | None) -> torch.Tensor:
    valid = (group >= 0) & (group < num_groups)
    if mask is not None:
        valid = valid & mask
    return F.one_hot(group.long().masked_fill(~valid, 0), num_groups).to(torch.float64) * valid.unsqueeze(1)


def environment_sums(
    values: torch.Tensor, group: torch.Tensor, num_groups: int, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-environment sums of ``values [N]`` and counts over the global batch (float64 ``[G]`` each, with
    gradients through the sums; one collective under DDP)."""
    onehot = _onehot(group, num_groups, mask)
    packed = torch.cat([onehot.T @ values.to(torch.float64), onehot.sum(0)])
    packed = distributed.all_reduce_sum_with_grad(packed)
    return packed[:num_groups], packed[num_groups:]


def _mean_over_present(values: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    present = (counts > 0).to(values.dtype)
    return (values * present).sum() / present.sum().clamp_min(1.0)


def per_sample_risk(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross entropy for ``logits [N, C]`` and integer ``target`` (ignored labels: 0), binary cross entropy for
    ``logits [N]`` and 0 / 1 ``target``."""
    if logits.ndim == 1:
        return F.binary_cross_entropy_with_logits(logits, target.to(logits.dtype), reduction="none")
    return F.cross_entropy(logits, target.long().clamp_min(0), reduction="none")


def irm_v1_scale_grad(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""Per sample, :math:`\partial_w \ell(w z, y)|_{w=1}` of the risk of :func:`per_sample_risk`."""
    if logits.ndim == 1:
        return (torch.sigmoid(logits) - target.to(logits.dtype)) * logits
    p = torch.softmax(logits, -1)
    return (p * logits).sum(-1) - logits.gather(-1, target.long().clamp_min(0).unsqueeze(-1)).squeeze(-1)


def irm_v1_penalty(
    logits: torch.Tensor, target: torch.Tensor, group: torch.Tensor, num_groups: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """IRMv1 penalty (Arjovsky et al., 2019) of the global batch: the mean over environments of the squared gradient
    of the environment's risk with respect to a scalar multiplier of the logits at 1 (float64 scalar).

    Example:
        >>> logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
        >>> round(float(irm_v1_penalty(logits, target, torch.tensor([0, 1]), 2)), 4)
        0.2956
    """
    sums, counts = environment_sums(irm_v1_scale_grad(logits, target), group, num_groups, mask)
    return _mean_over_present((sums / counts.clamp_min(1.0)).pow(2), counts)


def vrex_penalty(
    losses: torch.Tensor, group: torch.Tensor, num_groups: int, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """V-REx penalty (Krueger et al., ICML 2021) of the global batch: the population variance of the environments'
    mean losses (float64 scalar).

    Example:
        >>> float(vrex_penalty(torch.tensor([1.0, 3.0, 5.0]), torch.tensor([0, 0, 1]), 2))  # risks 2 and 5
        2.25
    """
    sums, counts = environment_sums(losses, group, num_groups, mask)
    risks = sums / counts.clamp_min(1.0)
    mean = _mean_over_present(risks, counts)
    return _mean_over_present((risks - mean).pow(2), counts)


def global_positions(
    group: torch.Tensor, num_groups: int, draws: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(position, counts, draws)``: each sample's position among its environment's samples in the global batch
    (ranks concatenated in order), the global count of each environment, and rank 0's ``draws [G]`` (one
    all-gather of counts and draws under DDP, without gradients)."""
    onehot = _onehot(group, num_groups, mask)
    local_pos = ((onehot.cumsum(0) - 1) * onehot).sum(1)
    local_counts = onehot.sum(0)
    row = torch.cat([local_counts, draws.to(torch.float64).to(group.device)])
    if distributed.is_distributed():
        rows = [torch.empty_like(row) for _ in range(distributed.world_size())]
        dist.all_gather(rows, row, group=distributed.data_parallel_group())
        table = torch.stack(rows)
    else:
        table = row.unsqueeze(0)
    counts = table[:, :num_groups]
    offsets = counts[: distributed.rank()].sum(0)
    return local_pos + onehot @ offsets, counts.sum(0), table[0, num_groups:]


def _moments(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``[n, sum x, sum x x^T]`` of the rows of ``x`` with 0 / 1 ``weight``, flattened (float64)."""
    xw = x * weight.unsqueeze(1)
    return torch.cat([weight.sum().reshape(1), xw.sum(0), (xw.T @ x).reshape(-1)])


def coral_penalty(
    features: torch.Tensor,
    group: torch.Tensor,
    num_groups: int,
    cut: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """CausIRL-CORAL penalty (*Invariant Causal Mechanisms through Distribution Matching*, Chevalley et al., 2022) of
    the global batch (float64 scalar): CORAL distance between the first ``floor(cut_e * n_e)`` samples of every
    environment ``e`` and the rest (``cut [G]`` in ``[0, 1)``; rank 0's values are used under DDP).

    Example:
        >>> x = torch.tensor([[0.0], [2.0], [1.0], [5.0]])
        >>> float(coral_penalty(x, torch.tensor([0, 0, 0, 0]), 1, torch.tensor([0.5])))  # A = {0, 2}, B = {1, 5}
        40.0
    """
    position, counts, cut = global_positions(group, num_groups, cut, mask)
    valid = _onehot(group, num_groups, mask).sum(1)
    threshold = torch.floor(cut * counts)
    first = (position < (_onehot(group, num_groups, mask) @ threshold)).to(torch.float64) * valid
    second = valid - first
    x = features.reshape(features.shape[0], -1).to(torch.float64)
    d = x.shape[1]
    stats = distributed.all_reduce_sum_with_grad(torch.cat([_moments(x, first), _moments(x, second)]))
    size = 1 + d + d * d
    pools = []
    for part in (stats[:size], stats[size:]):
        n, s, ss = part[0], part[1 : 1 + d], part[1 + d :].reshape(d, d)
        mean = s / n.clamp_min(1.0)
        cov = (ss - n * torch.outer(mean, mean)) / (n - 1).clamp_min(1.0)
        pools.append((n, mean, cov))
    (n_a, mean_a, cov_a), (n_b, mean_b, cov_b) = pools
    penalty = (mean_a - mean_b).pow(2).mean() + (cov_a - cov_b).pow(2).mean()
    return torch.where((n_a > 1) & (n_b > 1), penalty, torch.zeros_like(penalty))
