"""The objective's second half: the evaluated terms reduced to the loss (weights, sample masks and the global
normalisation over the data-parallel group), and what the objective returns (:class:`ObjectiveOutput`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch

from lightning_losses.functional._checks import upcast_half
from lightning_losses.reduction import weighted_mean

__all__ = ["ObjectiveOutput", "Reweighter", "TermValues", "reduce_terms"]

Reweighter = Callable[..., torch.Tensor]
_HALF = (torch.float16, torch.bfloat16)


class TermValues(NamedTuple):
    """What :meth:`~lightning_losses.objective.Objective.evaluate` returns and :func:`reduce_terms` takes.

    Attributes:
        values: each term's values by name, before its coefficient: ``[N]`` per sample, or a scalar (batch-level).
        coefficients: each term's coefficient at the step.
        mask: boolean ``[N]`` of the samples that count, or ``None`` when all do.
        extra: the extra per-sample terms by name (``extra_terms``: coefficient already applied).
    """

    values: dict[str, torch.Tensor]
    coefficients: dict[str, float]
    mask: torch.Tensor | None
    extra: dict[str, torch.Tensor]


class ObjectiveOutput:
    """What :meth:`Objective.forward` returns.

    Attributes:
        loss: scalar to backpropagate (this rank's share; DDP's gradient average makes it the global mean).
        value: global weighted mean loss (detached, identical on every rank): what to log.
        per_sample: ``[N]`` coefficient-weighted total per sample (with gradient).
        weights: ``[N]`` weights used (detached; 0 for masked samples).
        size: ``N``, the number of samples.
        terms: global mean of each term over the counted samples (detached scalars), for logging; a single
            unweighted term with coefficient 1 holds ``value`` itself (the mixin then logs it once, as the loss).
        coefficients: each term's coefficient at this step.
        term_values: each term's values by name before its coefficient (``[N]`` per sample with gradient, or a
            scalar for a batch-level term; the extra terms too): what the non-finite counts per term are taken of.
    """

    __slots__ = ("_weights", "coefficients", "loss", "per_sample", "size", "term_values", "terms", "value")

    def __init__(
        self,
        loss: torch.Tensor,
        value: torch.Tensor,
        per_sample: torch.Tensor,
        weights: torch.Tensor | None,
        terms: dict[str, torch.Tensor],
        coefficients: dict[str, float],
        term_values: dict[str, torch.Tensor] | None = None,
    ) -> None:
        self.loss, self.value, self.per_sample, self._weights = loss, value, per_sample, weights
        self.terms, self.coefficients, self.size = terms, coefficients, per_sample.shape[0]
        self.term_values = {} if term_values is None else term_values

    @property
    def weights(self) -> torch.Tensor:
        """``[N]`` weights used (detached; 0 for masked samples): ones, built on first read, when every sample
        counted with weight 1."""
        if self._weights is None:
            self._weights = torch.ones_like(self.per_sample, requires_grad=False)
        return self._weights

    def __repr__(self) -> str:
        return f"ObjectiveOutput(value={float(self.value):.6g}, samples={self.size}, terms={sorted(self.terms)})"

    # transient: a copied or pickled module (EMA copies, ``torch.save(model)``) gets ``objective_output = None``
    # instead of this step's graph, which cannot be deep-copied
    def __deepcopy__(self, memo: dict) -> None:
        return None

    def __copy__(self) -> ObjectiveOutput:
        twin = object.__new__(ObjectiveOutput)
        for name in self.__slots__:
            setattr(twin, name, getattr(self, name))
        return twin

    def __reduce__(self) -> tuple:
        return (_none, ())


def _none() -> None:
    return None


def reduce_terms(
    evaluated: TermValues, tensors: Mapping[str, Any], reweighter: Reweighter | None = None
) -> ObjectiveOutput:
    """The coefficient-weighted per-sample total of ``evaluated``, weighted (``reweighter``, masked samples 0) and
    normalised over the global batch by :func:`~lightning_losses.reduction.weighted_mean` (one collective, which also
    sums the terms' logging statistics); batch-level terms are added after the reduction.

    Args:
        evaluated: what :meth:`~lightning_losses.objective.Objective.evaluate` returned.
        tensors: the named tensors, handed to the reweighter.
        reweighter: ``reweighter(losses=..., sample_mask=..., **tensors) -> [N]`` weights, or ``None`` (every counted
            sample weighs 1).
    """
    coefficients, mask, extra = evaluated.coefficients, evaluated.mask, evaluated.extra
    per_sample: torch.Tensor | None = None
    batch_level: torch.Tensor | None = None
    for name, value in evaluated.values.items():
        coef = coefficients[name]
        weighted = value if coef == 1.0 else coef * value
        if value.ndim == 0:
            batch_level = weighted if batch_level is None else batch_level + weighted
        else:
            per_sample = weighted if per_sample is None else per_sample + weighted
    for value in extra.values():
        per_sample = value if per_sample is None else per_sample + value
    values = {**evaluated.values, **extra} if extra else evaluated.values  # by name, for logging
    names = [n for n, v in values.items() if v.ndim == 1]  # the per-sample terms
    if per_sample is None:  # only batch-level terms
        per_sample = next(iter(values.values())).new_zeros(0)
    if per_sample.dtype in _HALF:  # `upcast_half`, inlined
        per_sample = upcast_half(per_sample)
    if reweighter is None and mask is not None and mask.device.type == "cpu" and bool(mask.all()):
        # no sample left out: unit weights, which spare weighted_mean a weight vector and its normalisation (on CPU
        # the host read is one scalar copy; on an accelerator it would be a sync, and the mask is used as it is). A
        # reweighter always gets the mask as evaluated: its None-ness never depends on the data.
        mask = None
    # `None`: every sample counts with weight 1, and no weight vector is built (see weighted_mean)
    weights = counted = None if mask is None else mask.to(per_sample.dtype)
    if reweighter is not None:
        weights = reweighter(losses=per_sample.detach(), sample_mask=mask, **tensors).detach().to(per_sample.dtype)
        weights = weights * (torch.ones_like(per_sample) if counted is None else counted)  # a copy: 0 when masked
    if reweighter is None and len(values) == 1 and names and coefficients.get(names[0], 1.0) == 1.0:
        # one term with coefficient 1, unweighted: its mean is the loss, with no statistics of its own
        loss, value, _ = weighted_mean(per_sample, weights)
        terms = {names[0]: value}
    else:
        # the counted samples and each term's sum over them, in weighted_mean's one collective
        if counted is None:
            counted = torch.ones_like(per_sample)
        rows = torch.stack([counted] + [values[n].detach().to(per_sample.dtype) for n in names])
        loss, value, reduced = weighted_mean(
            per_sample, weights if weights is not None else counted, torch.mv(rows, counted)
        )
        count = reduced[0].clamp_min(1.0)
        terms = {n: reduced[1 + i] / count for i, n in enumerate(names)}
    for name, v in values.items():
        if v.ndim == 0:
            terms[name] = v.detach()
    if batch_level is not None:
        loss = loss + batch_level
        value = value + batch_level.detach()
    return ObjectiveOutput(loss, value, per_sample, weights, terms, coefficients, values)
