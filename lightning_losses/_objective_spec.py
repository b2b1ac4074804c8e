"""The objective's specification: :class:`Term` and how a term spec (a mapping) becomes one."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_losses.errors import ConfigurationError
from lightning_losses.losses.base import LOSSES, Loss
from lightning_losses.schedules import Schedule, build_schedule

__all__ = ["RESERVED_TERM_KEYS", "Term", "build_term", "check_term_name", "to_container"]

RESERVED_TERM_KEYS = ("loss", "coefficient", "inputs")


@dataclass
class Term:
    """One objective term: a loss, its coefficient schedule and how its inputs are named."""

    name: str
    loss: Loss
    coefficient: Schedule
    inputs: dict[str, str] = field(default_factory=dict)

    def source(self, arg: str) -> str:
        """The name of the tensor given to the loss argument ``arg`` (``arg`` itself unless ``inputs`` maps it)."""
        return self.inputs.get(arg, arg)


def to_container(spec: Any) -> Any:
    """``spec`` as plain containers: a YAML path is loaded, a ``DictConfig`` resolved, and a recipe's ``objective``
    section taken when there is one."""
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


def check_term_name(name: Any, seen: set[str]) -> None:
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


def build_term(name: str, spec: Any) -> Term:
    """The :class:`Term` named ``name`` from its spec (``None``, a loss, a registry name or a mapping of loss
    arguments plus the reserved keys ``loss``, ``coefficient`` and ``inputs``).

    Raises:
        ConfigurationError: an unknown loss or argument, an invalid coefficient or ``inputs`` mapping.
    """
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
