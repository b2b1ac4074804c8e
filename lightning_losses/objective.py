"""An objective: named, weighted loss terms whose coefficients follow schedules.

Spec (a mapping, as in a recipe's ``objective:`` section)::

    objective:
      ce:                          # term name (also the loss name unless `loss` is given)
        loss: cross_entropy        # registry name (optional)
        coefficient: 1.0           # number or schedule mapping (optional, default 1.0)
        inputs: {logits: logits}   # loss argument -> name passed to compute_loss (optional, identity)
        label_smoothing: 0.1       # every other key is an argument of the loss
      z_loss: {coefficient: {name: warmup, value: 1e-4, steps: 100}}

``{"focal": {"gamma": 2.0}}`` is the shortest form. The per-sample total is ``sum_t c_t(step) * loss_t`` and is
reduced by :func:`lightning_losses.reduction.weighted_mean` with the reweighter's weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_losses.distributed import is_distributed
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional._checks import upcast_half
from lightning_losses.losses.base import LOSSES, Deferred, Loss
from lightning_losses.reduction import weighted_mean
from lightning_losses.schedules import Schedule, build_schedule

__all__ = ["RESERVED_TERM_KEYS", "Objective", "ObjectiveOutput", "Term"]

RESERVED_TERM_KEYS = ("loss", "coefficient", "inputs")

Reweighter = Callable[..., torch.Tensor]


@dataclass
class Term:
    """One objective term: a loss, its coefficient schedule and how its inputs are named."""

    name: str
    loss: Loss
    coefficient: Schedule
    inputs: dict[str, str] = field(default_factory=dict)

    def source(self, arg: str) -> str:
        return self.inputs.get(arg, arg)


class ObjectiveOutput:
    """What :meth:`Objective.forward` returns.

    Attributes:
        loss: scalar to backpropagate (this rank's share; DDP's gradient average makes it the global mean).
        value: global weighted mean loss (detached, identical on every rank): what to log.
        per_sample: ``[N]`` coefficient-weighted total per sample (with gradient). On the single-term path, where the
            loss's kernel computed the mean itself, evaluated on first access (from the batch's inputs, kept until
            the next call; with gradient when read while the graph is alive, e.g. in ``training_step``; refused with
            a ``RuntimeError`` if ``logits`` or ``target`` were modified in place in between).
        weights: ``[N]`` weights used (detached; 0 for masked samples). Built on first access when every sample
            counted with weight 1 (``weights=None`` at construction): the hot path allocates nothing for it.
        size: ``N``, the number of samples.
        terms: global mean of each term over the counted samples (detached scalars), for logging; a single
            unweighted term with coefficient 1 holds ``value`` itself (the mixin then logs it once, as the loss).
        coefficients: each term's coefficient at this step.
    """

    __slots__ = ("_deferred", "_per_sample", "_weights", "coefficients", "loss", "size", "terms", "value")

    def __init__(
        self,
        loss: torch.Tensor,
        value: torch.Tensor,
        per_sample: torch.Tensor | Deferred,
        weights: torch.Tensor | None,
        terms: dict[str, torch.Tensor],
        coefficients: dict[str, float],
    ) -> None:
        self.loss, self.value, self._weights = loss, value, weights
        self.terms, self.coefficients = terms, coefficients
        if isinstance(per_sample, Deferred):
            self._per_sample, self._deferred, self.size = None, per_sample, per_sample.size
        else:
            self._per_sample, self._deferred, self.size = per_sample, None, per_sample.shape[0]

    @property
    def per_sample(self) -> torch.Tensor:
        if self._per_sample is None:
            self._per_sample = upcast_half(self._deferred.fn())
            self._deferred = None  # the inputs it kept are released
        return self._per_sample

    @property
    def weights(self) -> torch.Tensor:
        if self._weights is None:
            self._weights = self.value.new_ones(self.size)
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


def _to_container(spec: Any) -> Any:
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_file():
            raise ConfigurationError(f"objective recipe file `{spec}` does not exist")
        spec = OmegaConf.load(path)
    if isinstance(spec, DictConfig):
        spec = OmegaConf.to_container(spec, resolve=True)
    if isinstance(spec, Mapping) and "objective" in spec:
        spec = spec["objective"]
    return spec


def _check_term_name(name: Any, seen: set[str]) -> None:
    """A term name becomes a ``torch.nn.ModuleDict`` key: a non-empty string without ``.``, not an attribute of the
    ``ModuleDict`` (``training``, ``keys``, ...) and not given twice; ``seen`` collects the names checked so far."""
    allowed = "a non-empty string without `.` that is not an attribute of torch.nn.ModuleDict (e.g. `ce`)"
    if not isinstance(name, str) or not name or "." in name or hasattr(_TAKEN, name):
        hint = f"; use e.g. {name.replace('.', '_')!r}" if isinstance(name, str) and "." in name else ""
        raise ConfigurationError(f"objective term name must be {allowed}, got {name!r}{hint}")
    if name in seen:
        raise ConfigurationError(f"objective term name {name!r} is given twice; each term needs its own name")
    seen.add(name)


_TAKEN = nn.ModuleDict()  # the attributes a term name must not shadow


def _build_term(name: str, spec: Any) -> Term:
    if spec is None:
        spec = {}
    if isinstance(spec, (Loss, str)):
        spec = {"loss": spec}
    if not isinstance(spec, Mapping):
        raise ConfigurationError(f"objective term `{name}` must be a mapping of loss arguments, got {spec!r}")
    spec = dict(spec)
    loss_spec = spec.pop("loss", name)
    coefficient = build_schedule(spec.pop("coefficient", 1.0))
    inputs = spec.pop("inputs", None) or {}
    if not isinstance(inputs, Mapping) or not all(isinstance(v, str) for v in inputs.values()):
        raise ConfigurationError(f"`inputs` must map loss arguments to tensor names, got {inputs!r}")
    loss = LOSSES.build(loss_spec, **spec) if isinstance(loss_spec, str) else loss_spec
    if not isinstance(loss, Loss):
        raise ConfigurationError(f"term `{name}`: `loss` must name a registered loss, got {loss_spec!r}")
    required, optional = loss.input_names()
    for arg in inputs:
        if arg not in required + optional:
            valid = ", ".join(f"`{a}`" for a in required + optional)
            raise ConfigurationError(f"term `{name}`: `inputs` names unknown argument `{arg}`; valid: {valid}")
    return Term(name, loss, coefficient, dict(inputs))


class Objective(nn.Module):
    """A weighted sum of named loss terms with scheduled coefficients.

    Args:
        spec: mapping ``term name -> term spec`` (see the module docstring), a recipe path / ``DictConfig`` (its
            ``objective`` section is used), or a list of :class:`Term`.

    Example:
        >>> obj = Objective({"ce": {"loss": "cross_entropy"}, "focal": {"coefficient": 0.5}})
        >>> out = obj({"logits": torch.zeros(4, 3), "target": torch.tensor([0, 1, 2, 0])})
        >>> round(float(out.value), 4)
        1.3427
    """

    def __init__(self, spec: Any) -> None:
        super().__init__()
        spec = _to_container(spec)
        if isinstance(spec, Mapping):
            if not spec:
                raise ConfigurationError("an objective needs at least one term, got an empty mapping")
            terms, seen = [], set()
            for name, term_spec in spec.items():
                _check_term_name(str(name), seen)
                try:
                    terms.append(_build_term(str(name), term_spec))
                except ConfigurationError as err:
                    msg = str(err)
                    raise ConfigurationError(msg if msg.startswith("term ") else f"term `{name}`: {msg}") from None
        elif isinstance(spec, (list, tuple)) and spec and all(isinstance(t, Term) for t in spec):
            terms, seen = list(spec), set()
            for term in terms:
                _check_term_name(term.name, seen)
        else:
            raise ConfigurationError(
                f"an objective spec must be a mapping such as {{'cross_entropy': {{}}}}, a YAML path or a "
                f"DictConfig, got {spec!r}"
            )
        self.terms = terms
        self.losses = nn.ModuleDict({t.name: t.loss for t in terms})

    def _uniform(self, per_sample: torch.Tensor) -> torch.Tensor:
        """``full_like(per_sample, 1 / N)``, kept for the next call with the same shape, dtype and device (never
        handed out)."""
        cached = self.__dict__.get("_uniform_cache")
        if (
            cached is None
            or cached.shape != per_sample.shape
            or cached.dtype != per_sample.dtype
            or cached.device != per_sample.device
        ):
            # a first call under `trainer.validate` (inference mode) must not cache an inference tensor
            with torch.inference_mode(False):
                cached = torch.full_like(per_sample, 1.0 / per_sample.shape[0])
            self.__dict__["_uniform_cache"] = cached
        return cached

    def _mean_weights(
        self, per_sample: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(weights, normalised)`` for the one-process mean: ``weights`` is ``None`` when every sample counts (all
        ones, built on access) and ``normalised`` sums to 1 over the counted samples (all zeros for an empty or fully
        masked batch: loss 0, with a graph)."""
        if mask is None and per_sample.numel():
            return None, self._uniform(per_sample)
        weights = torch.ones_like(per_sample) if mask is None else mask.to(per_sample.dtype)
        return weights, weights / weights.sum().clamp_min(1.0)

    @property
    def uses_step(self) -> bool:
        """Whether a coefficient schedule depends on the step (``False``: every coefficient is constant)."""
        return self._plan()[1]

    def _plan(self) -> tuple[list[tuple[Term, tuple[tuple[str, str, bool], ...]]], bool, bool]:
        """Each term with its ``(argument, tensor name, required)`` routes, whether any coefficient reads the step,
        and whether the objective is one per-sample term with the constant coefficient 1 (its mean is the loss);
        built once (terms are fixed after construction; assigning a new ``terms`` list rebuilds it)."""
        cached = self.__dict__.get("_plan_cache")
        if cached is None or cached[0] is not self.terms:
            plan = []
            for term in self.terms:
                required, optional = term.loss.input_names()
                plan.append((term, tuple((arg, term.source(arg), arg in required) for arg in required + optional)))
            uses_step = any(not getattr(t.coefficient, "constant", False) for t in self.terms)
            only = self.terms[0] if len(self.terms) == 1 else None
            single = (
                only is not None
                and not only.loss.batch_level
                and getattr(only.coefficient, "constant", False)
                and only.coefficient(0) == 1.0
            )
            cached = self.__dict__["_plan_cache"] = (self.terms, plan, uses_step, single)
        return cached[1], cached[2], cached[3]

    def forward(
        self,
        tensors: Mapping[str, Any],
        *,
        step: int = 0,
        reweighter: Reweighter | None = None,
        extra_terms: Mapping[str, torch.Tensor] | None = None,
    ) -> ObjectiveOutput:
        """Evaluate every term, weight the per-sample total and reduce it over the global batch.

        Args:
            tensors: named tensors (``logits``, ``target``, ``index``, ``group``, ...).
            step: optimizer step, for coefficient schedules.
            reweighter: ``reweighter(losses=..., sample_mask=..., **tensors) -> [N]`` weights (detached losses in;
                ``sample_mask`` is the boolean ``[N]`` of counted samples, or ``None`` when all count).
            extra_terms: additional coefficient-applied per-sample terms (entropy controls), by name.
        """
        # one process without a reweighter: a loss may report "every sample counts" (mask None) from its own checks.
        # Otherwise masks come from `sample_mask`, whose None-ness depends on the loss only, never on this rank's data:
        # a reweighter's collectives must look the same on every rank
        fast = reweighter is None and not is_distributed()
        plan, _, single = self._plan()
        if fast and single and not extra_terms:
            return self._single_term(plan[0], tensors)
        per_sample: torch.Tensor | None = None
        batch_level: torch.Tensor | None = None
        mask: torch.Tensor | None = None
        values: dict[str, torch.Tensor] = {}
        coefficients: dict[str, float] = {}
        unit = True  # every per-sample term has coefficient 1
        for term, routes in plan:
            args = _route(term, routes, tensors)
            if fast:
                value, term_mask = term.loss.forward_with_mask(**args)
            else:
                value, term_mask = term.loss(**args), term.loss.sample_mask(**args)
            coef = term.coefficient(step)
            coefficients[term.name] = coef
            values[term.name] = value
            if term.loss.batch_level:
                batch_level = coef * value if batch_level is None else batch_level + coef * value
                continue
            if value.ndim != 1:
                raise ValueError(f"loss of term `{term.name}` must be per-sample [N], got shape {list(value.shape)}")
            if coef != 1.0:
                value, unit = coef * value, False
            per_sample = value if per_sample is None else per_sample + value
            if term_mask is not None:
                mask = term_mask if mask is None else mask & term_mask
        if extra_terms:
            for name, value in extra_terms.items():
                values[name] = value
                per_sample = value if per_sample is None else per_sample + value
        if per_sample is None:  # only batch-level terms
            per_sample = next(iter(values.values())).new_zeros(0)
        elif per_sample.dtype in (torch.float16, torch.bfloat16):
            per_sample = per_sample.float()
        names = [n for n, v in values.items() if v.ndim == 1]
        if fast and per_sample.numel():
            # fast path (one process, no reweighter): the same quantities without packing a reduction. The loss is
            # one dot product with the normalised weights: a single autograd node whose backward hands the loss a
            # contiguous gradient (`mean()` backward passes an expanded one, which per-sample kernels handle slowly)
            weights, normalised = self._mean_weights(per_sample, mask)
            loss = torch.dot(per_sample, normalised)
            value = loss.detach()
            if unit and len(names) == 1 and len(values) == 1:
                terms = {names[0]: value}  # the only term, with coefficient 1: its mean is the loss
            else:
                terms = {n: torch.dot(values[n].detach().to(per_sample.dtype), normalised) for n in names}
        else:
            counted = torch.ones_like(per_sample) if mask is None else mask.to(per_sample.dtype)
            weights = counted
            if reweighter is not None:
                weights = reweighter(losses=per_sample.detach(), sample_mask=mask, **tensors)
                weights = weights.detach().to(per_sample.dtype) * counted
            stats = [counted.sum()] + [(values[n].detach().to(per_sample.dtype) * counted).sum() for n in names]
            loss, value, reduced = weighted_mean(per_sample, weights, torch.stack(stats))
            if reweighter is None and unit and len(names) == 1 and len(values) == 1:
                terms = {names[0]: value}  # one term with coefficient 1, unweighted: its mean is the loss
            else:
                count = reduced[0].clamp_min(1.0)
                terms = {n: reduced[1 + i] / count for i, n in enumerate(names)}
        if len(names) != len(values):
            for name, v in values.items():
                if v.ndim == 0:
                    terms[name] = v.detach()
        if batch_level is not None:
            loss = loss + batch_level
            value = value + batch_level.detach()
        return ObjectiveOutput(loss, value, per_sample, weights, terms, coefficients)

    def _single_term(self, planned: tuple[Term, tuple[tuple[str, str, bool], ...]], tensors: Mapping[str, Any]):
        """:meth:`forward`'s fast path for one per-sample term with coefficient 1, one process, no reweighter and no
        extra terms (the default recipe): the same output as the general path without assembling its sums."""
        term, routes = planned
        value, mask, deferred = term.loss.mean_with_mask(**_route(term, routes, tensors))
        if deferred is not None:  # the loss's kernel took the mean over every sample itself
            if value.ndim != 0:
                raise ValueError(f"mean of term `{term.name}` must be a scalar, got shape {list(value.shape)}")
            loss = upcast_half(value)
            value = loss.detach()
            return ObjectiveOutput(loss, value, deferred, None, {term.name: value}, {term.name: 1.0})
        if value.ndim != 1:
            raise ValueError(f"loss of term `{term.name}` must be per-sample [N], got shape {list(value.shape)}")
        per_sample = upcast_half(value)
        weights, normalised = self._mean_weights(per_sample, mask)
        loss = torch.dot(per_sample, normalised)
        value = loss.detach()
        return ObjectiveOutput(loss, value, per_sample, weights, {term.name: value}, {term.name: 1.0})


def _route(term: Term, routes: tuple[tuple[str, str, bool], ...], tensors: Mapping[str, Any]) -> dict[str, Any]:
    """The loss arguments of ``term`` from the named ``tensors`` (a missing required one raises)."""
    args = {}
    for arg, src, required in routes:
        if src in tensors:
            args[arg] = tensors[src]
        elif required:
            _missing(term, arg, src, tensors)
    return args


def _missing(term: Term, arg: str, src: str, tensors: Mapping[str, Any]) -> None:
    via = f" (mapped from `{src}`)" if src != arg else ""
    given = ", ".join(f"`{k}`" for k in tensors) or "none"
    raise ValueError(f"term `{term.name}` needs input `{arg}`{via}; compute_loss got: {given}")
