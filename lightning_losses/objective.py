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
reduced by :func:`lightning_losses.reduction.weighted_mean` with the reweighter's weights, in two steps on one path
(one process or many): :meth:`Objective.evaluate` (each term's per-sample values, coefficients and ``sample_mask``)
and :meth:`Objective.reduce` (weights, masks and the global normalisation, in :mod:`lightning_losses._objective_reduce`;
the spec's parsing is in :mod:`lightning_losses._objective_spec`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lightning_losses._objective_reduce import ObjectiveOutput, Reweighter, TermValues, reduce_terms
from lightning_losses._objective_spec import RESERVED_TERM_KEYS, Term, build_term, check_term_name, to_container
from lightning_losses.errors import ConfigurationError

__all__ = ["RESERVED_TERM_KEYS", "Objective", "ObjectiveOutput", "Term", "TermValues"]


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
        spec = to_container(spec)
        if isinstance(spec, Mapping):
            if not spec:
                raise ConfigurationError("an objective needs at least one term, got an empty mapping")
            terms, seen = [], set()
            for name, term_spec in spec.items():
                check_term_name(str(name), seen)
                try:
                    terms.append(build_term(str(name), term_spec))
                except ConfigurationError as err:
                    msg = str(err)
                    raise ConfigurationError(msg if msg.startswith("term ") else f"term `{name}`: {msg}") from None
        elif isinstance(spec, (list, tuple)) and spec and all(isinstance(t, Term) for t in spec):
            terms, seen = list(spec), set()
            for term in terms:
                check_term_name(term.name, seen)
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
        for term in self.terms:  # a loop, not `any(generator)`: read on every training step
            if not getattr(term.coefficient, "constant", False):
                return True
        return False

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
        return reduce_terms(self.evaluate(tensors, step=step, extra_terms=extra_terms), tensors, reweighter)

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
        return TermValues(values, coefficients, mask, dict(extra_terms) if extra_terms else {})

    def reduce(
        self, evaluated: TermValues, tensors: Mapping[str, Any], reweighter: Reweighter | None = None
    ) -> ObjectiveOutput:
        """:func:`~lightning_losses._objective_reduce.reduce_terms`: ``evaluated`` weighted and normalised over the
        global batch."""
        return reduce_terms(evaluated, tensors, reweighter)


def _route(term: Term, tensors: Mapping[str, Any]) -> dict[str, Any]:
    """The loss arguments of ``term`` from the named ``tensors`` (a missing required one raises)."""
    required, optional = term.loss.input_names()
    inputs = term.inputs  # `Term.source`, inlined: this runs for every term on every step
    args = {}
    for arg in required:
        src = inputs.get(arg, arg)
        if src not in tensors:
            _missing(term, arg, src, tensors)
        args[arg] = tensors[src]
    for arg in optional:
        src = inputs.get(arg, arg)
        if src in tensors:
            args[arg] = tensors[src]
    return args


def _missing(term: Term, arg: str, src: str, tensors: Mapping[str, Any]) -> None:
    via = f" (mapped from `{src}`)" if src != arg else ""
    given = ", ".join(f"`{k}`" for k in tensors) or "none"
    raise ValueError(f"term `{term.name}` needs input `{arg}`{via}; compute_loss got: {given}")
