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
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_losses.errors import ConfigurationError
from lightning_losses.functional._checks import upcast_half
from lightning_losses.losses.base import LOSSES, Loss
from lightning_losses.reduction import weighted_mean
from lightning_losses.schedules import Schedule, build_schedule

__all__ = ["RESERVED_TERM_KEYS", "Objective", "ObjectiveOutput", "Term", "TermValues"]

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
        per_sample: ``[N]`` coefficient-weighted total per sample (with gradient).
        weights: ``[N]`` weights used (detached; 0 for masked samples).
        size: ``N``, the number of samples.
        terms: global mean of each term over the counted samples (detached scalars), for logging; a single
            unweighted term with coefficient 1 holds ``value`` itself (the mixin then logs it once, as the loss).
        coefficients: each term's coefficient at this step.
    """

    __slots__ = ("coefficients", "loss", "per_sample", "size", "terms", "value", "weights")

    def __init__(
        self,
        loss: torch.Tensor,
        value: torch.Tensor,
        per_sample: torch.Tensor,
        weights: torch.Tensor,
        terms: dict[str, torch.Tensor],
        coefficients: dict[str, float],
    ) -> None:
        self.loss, self.value, self.per_sample, self.weights = loss, value, per_sample, weights
        self.terms, self.coefficients, self.size = terms, coefficients, per_sample.shape[0]

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

    @property
    def uses_step(self) -> bool:
        """Whether a coefficient schedule depends on the step (``False``: every coefficient is constant)."""
        return any(not getattr(t.coefficient, "constant", False) for t in self.terms)

    def forward(
        self,
        tensors: Mapping[str, Any],
        *,
        step: int = 0,
        reweighter: Reweighter | None = None,
        extra_terms: Mapping[str, torch.Tensor] | None = None,
    ) -> ObjectiveOutput:
        """Evaluate every term (:meth:`evaluate`), then weight the per-sample total and reduce it over the global
        batch (:meth:`reduce`).

        Args:
            tensors: named tensors (``logits``, ``target``, ``index``, ``group``, ...).
            step: optimizer step, for coefficient schedules.
            reweighter: ``reweighter(losses=..., sample_mask=..., **tensors) -> [N]`` weights (detached losses in;
                ``sample_mask`` is the boolean ``[N]`` of counted samples, or ``None`` when all count).
            extra_terms: additional coefficient-applied per-sample terms (entropy controls), by name.
        """
        return self.reduce(self.evaluate(tensors, step=step, extra_terms=extra_terms), tensors, reweighter)

    def evaluate(
        self, tensors: Mapping[str, Any], *, step: int = 0, extra_terms: Mapping[str, torch.Tensor] | None = None
    ) -> TermValues:
        """Each term's values on ``tensors`` (per-sample ``[N]``, or a scalar for a batch-level loss), its coefficient
        at ``step`` and the samples that count (the ``sample_mask`` of every per-sample term, combined)."""
        values: dict[str, torch.Tensor] = {}
        coefficients: dict[str, float] = {}
        mask: torch.Tensor | None = None
        for term in self.terms:
            args = _route(term, tensors)
            value = term.loss(**args)
            coefficients[term.name] = term.coefficient(step)
            values[term.name] = value
            if term.loss.batch_level:
                continue
            if value.ndim != 1:
                raise ValueError(f"loss of term `{term.name}` must be per-sample [N], got shape {list(value.shape)}")
            term_mask = term.loss.sample_mask(**args)
            if term_mask is not None:
                mask = term_mask if mask is None else mask & term_mask
        return TermValues(values, coefficients, mask, dict(extra_terms or {}))

    def reduce(
        self, evaluated: TermValues, tensors: Mapping[str, Any], reweighter: Reweighter | None = None
    ) -> ObjectiveOutput:
        """The coefficient-weighted per-sample total of ``evaluated``, weighted (``reweighter``, masked samples 0) and
        normalised over the global batch by :func:`~lightning_losses.reduction.weighted_mean`; batch-level terms are
        added after the reduction. ``tensors`` are handed to the reweighter."""
        coefficients, mask = evaluated.coefficients, evaluated.mask
        per_sample: torch.Tensor | None = None
        batch_level: torch.Tensor | None = None
        for name, value in evaluated.values.items():
            coef = coefficients[name]
            weighted = value if coef == 1.0 else coef * value
            if value.ndim == 0:
                batch_level = weighted if batch_level is None else batch_level + weighted
            else:
                per_sample = weighted if per_sample is None else per_sample + weighted
        for value in evaluated.extra.values():
            per_sample = value if per_sample is None else per_sample + value
        values = {**evaluated.values, **evaluated.extra}  # by name, for logging
        names = [n for n, v in values.items() if v.ndim == 1]  # the per-sample terms
        if per_sample is None:  # only batch-level terms
            per_sample = next(iter(values.values())).new_zeros(0)
        per_sample = upcast_half(per_sample)
        counted = torch.ones_like(per_sample) if mask is None else mask.to(per_sample.dtype)
        weights = counted
        if reweighter is not None:
            weights = reweighter(losses=per_sample.detach(), sample_mask=mask, **tensors)
            weights = weights.detach().to(per_sample.dtype) * counted
        # the counted samples and each term's sum over them, in weighted_mean's one collective
        rows = torch.stack([counted] + [values[n].detach().to(per_sample.dtype) for n in names])
        loss, value, reduced = weighted_mean(per_sample, weights, torch.mv(rows, counted))
        if reweighter is None and len(values) == 1 and names and coefficients.get(names[0], 1.0) == 1.0:
            terms = {names[0]: value}  # one term with coefficient 1, unweighted: its mean is the loss
        else:
            count = reduced[0].clamp_min(1.0)
            terms = {n: reduced[1 + i] / count for i, n in enumerate(names)}
        for name, v in values.items():
            if v.ndim == 0:
                terms[name] = v.detach()
        if batch_level is not None:
            loss = loss + batch_level
            value = value + batch_level.detach()
        return ObjectiveOutput(loss, value, per_sample, weights, terms, coefficients)


class TermValues(NamedTuple):
    """What :meth:`Objective.evaluate` returns and :meth:`Objective.reduce` takes.

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


def _route(term: Term, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """The loss arguments of ``term`` from the named ``tensors`` (a missing required one raises)."""
    required, optional = term.loss.input_names()
    args = {}
    for arg in required + optional:
        src = term.source(arg)
        if src in tensors:
            args[arg] = tensors[src]
        elif arg in required:
            _missing(term, arg, src, tensors)
    return args


def _missing(term: Term, arg: str, src: str, tensors: Mapping[str, Any]) -> None:
    via = f" (mapped from `{src}`)" if src != arg else ""
    given = ", ".join(f"`{k}`" for k in tensors) or "none"
    raise ValueError(f"term `{term.name}` needs input `{arg}`{via}; compute_loss got: {given}")
