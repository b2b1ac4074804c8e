r"""Environment penalties as objective terms over the global batch's environments: ``irm_v1``, ``vrex``, ``coral``.

They read the same per-sample ``group`` ids as ``group_dro`` (the demo's spurious digits pass them with every
batch; a module passes ``group=...`` to ``compute_loss``) and are **batch-level**: one scalar for the global batch
(per-environment sums all-reduced with gradients), added to the objective after reweighting. Each is the penalty
only: pair it with the risk term, its coefficient is :math:`\lambda`, and a schedule gives the usual anneal
(DomainBed: weight 1 for 500 steps, then ``irm_lambda = 1e2`` / ``vrex_lambda = 1e1``; recreate the optimizer at the
switch as DomainBed does, or use a warmup schedule)::

    objective:
      cross_entropy: {}
      vrex: {num_groups: 2, coefficient: {name: step, value: 1.0, milestones: [500], gamma: 10.0}}
      coral: {num_groups: 2, inputs: {embeddings: features}}   # the module passes features=... to compute_loss

``num_groups`` (the number of environments) sizes the per-environment sums; without it every call takes it from
the global batch (one extra ``max`` collective and a host read per step). With ``validate_args`` an id outside
``[0, num_groups)`` raises (one host read).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from lightning_losses import distributed
from lightning_losses._validation import check_choice, check_int
from lightning_losses._validation.tensors import not_ignored, shape_str, upcast_half
from lightning_losses.functional import environment as EF
from lightning_losses.losses.base import LOSSES, Loss

__all__ = ["CORAL", "IRMv1", "VREx"]


class _EnvironmentPenalty(Loss):
    """Shared: ``num_groups`` / ``ignore_index`` arguments and the environment-id checks."""

    batch_level = True

    def __init__(self, num_groups: int | None, validate_args: bool) -> None:
        super().__init__(validate_args)
        self.num_groups = None if num_groups is None else check_int("num_groups", num_groups, low=1)

    def _groups(self, group: torch.Tensor, n: int) -> int:
        if group.ndim != 1 or group.shape[0] != n or group.is_floating_point():
            raise ValueError(f"`group` must be integer environment ids of shape [{n}], got {shape_str(group)}")
        if self.num_groups is None:
            local = group.max().reshape(1).long() if group.numel() else group.new_full((1,), -1, dtype=torch.long)
            if distributed.is_distributed():
                dist.all_reduce(local, op=dist.ReduceOp.MAX, group=distributed.data_parallel_group())
            return max(int(local), 0) + 1
        if self.validate_args and group.numel() and bool(((group < 0) | (group >= self.num_groups)).any()):
            raise ValueError(
                f"`group` ids must be in [0, {self.num_groups}) (`num_groups` = {self.num_groups}), got ids "
                f"{sorted({int(g) for g in group.unique().tolist() if not 0 <= g < self.num_groups})}"
            )
        return self.num_groups


class _RiskPenalty(_EnvironmentPenalty):
    family = "multiclass"

    def __init__(self, num_groups: int | None, ignore_index: int, validate_args: bool) -> None:
        super().__init__(num_groups, validate_args)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def _inputs(self, logits: torch.Tensor, target: torch.Tensor, group: torch.Tensor):
        if logits.ndim not in (1, 2) or target.shape != logits.shape[:1]:
            raise ValueError(
                f"`logits` must be [N, C] (or [N] binary) with `target` [N], got {shape_str(logits)} and "
                f"{shape_str(target)}"
            )
        mask = None if target.is_floating_point() else not_ignored(target, self.ignore_index)
        return self._groups(group, logits.shape[0]), mask


@LOSSES.register("irm_v1", aliases=("irm",))
class IRMv1(_RiskPenalty):
    r"""IRMv1 penalty (Arjovsky, Bottou, Gulrajani, Lopez-Paz, *Invariant Risk Minimization*, 2019).

    .. math:: P = \frac1{|E|} \sum_{e \in E} \Big(\frac{\partial}{\partial w} R^e(w \cdot z)\Big|_{w=1}\Big)^2

    over the environments :math:`E` of the global batch, :math:`R^e` the mean cross entropy of environment
    :math:`e` (binary cross entropy for ``logits [N]``), in closed form (the gradient of the loss with respect to the
    dummy multiplier is :math:`(\mathrm{softmax}(z) - e_y)^\top z`; the penalty is differentiated through it). This is
    the authors' full-batch estimator; DomainBed's split-half product is not used. The full objective is
    :math:`\sum_e R^e + \lambda P`: the ``cross_entropy`` term plus this one with coefficient :math:`\lambda`
    (ColoredMNIST reference: :math:`\lambda \approx 9\cdot10^4` after 190 steps, and the loss divided by
    :math:`\lambda`; DomainBed: ``irm_lambda = 1e2`` after 500 steps).

    Args:
        num_groups: number of environments (default: from each global batch, one extra collective per step).
        ignore_index: integer labels that count nowhere. Default -100.
        validate_args: check the environment ids (one host read). Default True.

    Example:
        >>> loss = IRMv1(num_groups=2)
        >>> logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
        >>> round(float(loss(logits=logits, target=target, group=torch.tensor([0, 1]))), 4)
        0.2956
    """

    def __init__(self, num_groups: int | None = None, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(num_groups, ignore_index, validate_args)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        num_groups, mask = self._inputs(logits, target, group)
        logits = upcast_half(logits)
        return EF.irm_v1_penalty(logits, target, group, num_groups, mask).to(logits.dtype)


@LOSSES.register("vrex", aliases=("v_rex",))
class VREx(_RiskPenalty):
    r"""V-REx penalty (Krueger et al., *Out-of-Distribution Generalization via Risk Extrapolation*, ICML 2021).

    .. math:: P = \frac1{|E|} \sum_{e \in E} (R^e - \bar R)^2, \qquad \bar R = \frac1{|E|} \sum_{e} R^e

    the population variance of the environments' mean cross entropies over the global batch (binary cross entropy
    for ``logits [N]``), as DomainBed computes it. The full objective is :math:`\frac1{|E|}\sum_e R^e + \lambda P`:
    the ``cross_entropy`` term (the sample mean, equal to the mean of the environments' risks when they are equally
    represented) plus this one with coefficient :math:`\lambda` (DomainBed: ``vrex_lambda = 1e1`` after 500 steps
    at weight 1).

    Args:
        num_groups: number of environments (default: from each global batch, one extra collective per step).
        ignore_index: integer labels that count nowhere. Default -100.
        validate_args: check the environment ids (one host read). Default True.

    Example:
        >>> loss = VREx(num_groups=2)
        >>> logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]])
        >>> round(float(loss(logits=logits, target=torch.tensor([0, 1, 0]), group=torch.tensor([0, 0, 1]))), 4)
        0.1039
    """

    def __init__(self, num_groups: int | None = None, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(num_groups, ignore_index, validate_args)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        num_groups, mask = self._inputs(logits, target, group)
        logits = upcast_half(logits)
        risk = EF.per_sample_risk(logits, target)
        return EF.vrex_penalty(risk, group, num_groups, mask).to(logits.dtype)


@LOSSES.register("coral", aliases=("causirl_coral",))
class CORAL(_EnvironmentPenalty):
    r"""CausIRL-CORAL penalty (Chevalley, Bunne, Krause, Bauer, *Invariant Causal Mechanisms through Distribution
    Matching*, 2022; DomainBed's ``CausIRL_CORAL``).

    Every environment's samples of the global batch (in rank order) are cut at :math:`\lfloor u_e n_e \rfloor`, the
    first pieces pooled into :math:`A` and the rest into :math:`B`:

    .. math:: P = \operatorname{mean}_d (\mu_A - \mu_B)^2 + \operatorname{mean}_{d, d'} (\Sigma_A - \Sigma_B)^2

    with unbiased covariances of the ``embeddings`` (the featurizer's output), 0 unless both pools have two samples.
    :math:`u_e \sim U[0, 1)` per step (``split="random"``, DomainBed's random cut; drawn from torch's global RNG on
    rank 0) or :math:`1/2` (``split="half"``). The means and second moments of both pools are summed over ranks
    (:math:`2(1 + D + D^2)` values). Objective: ``cross_entropy`` plus this term with coefficient ``mmd_gamma``
    (DomainBed default 1.0).

    Args:
        num_groups: number of environments (default: from each global batch, one extra collective per step).
        split: ``"random"`` (default) or ``"half"``.
        validate_args: check the environment ids (one host read). Default True.

    Example:
        >>> loss = CORAL(num_groups=1, split="half")
        >>> x = torch.tensor([[0.0], [2.0], [1.0], [5.0]])
        >>> float(loss(embeddings=x, group=torch.zeros(4, dtype=torch.long)))
        40.0
    """

    family = "embedding"

    def __init__(self, num_groups: int | None = None, split: str = "random", validate_args: bool = True) -> None:
        super().__init__(num_groups, validate_args)
        self.split = check_choice("split", split, ("random", "half"))

    def forward(self, embeddings: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim < 2:
            raise ValueError(f"`embeddings` must be [N, D], got {shape_str(embeddings)}")
        num_groups = self._groups(group, embeddings.shape[0])
        if self.split == "half":
            cut = torch.full((num_groups,), 0.5, dtype=torch.float64)
        else:
            cut = torch.rand(num_groups, dtype=torch.float64)
        return EF.coral_penalty(embeddings, group, num_groups, cut).to(upcast_half(embeddings).dtype)
