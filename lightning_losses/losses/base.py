"""The :class:`Loss` base class and the loss registry.

A loss is an ``nn.Module`` whose ``forward`` takes named tensors (keyword arguments, names shared across the library:
``logits``, ``target``, ``pred``, ``embeddings``, ...) and returns the **per-sample** loss ``[N]``. The module only
stores validated hyperparameters; the computation is the pure function in :mod:`lightning_losses.functional`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn
from torch.nn.modules import module as _nn_module

from lightning_losses._validation import check_bool
from lightning_losses.registry import Registry

__all__ = ["LOSSES", "Loss", "build_loss", "has_hooks", "list_losses"]

LOSSES: Registry[type[Loss]] = Registry("loss")
_INPUT_NAMES: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


def has_hooks(module: nn.Module) -> bool:
    """Whether calling ``module`` would run hooks around ``forward`` (its own or global ones), as
    ``nn.Module.__call__`` decides; without any, ``module(...)`` and ``module.forward(...)`` are the same."""
    state = module.__dict__
    if (
        state.get("_forward_hooks")
        or state.get("_forward_pre_hooks")
        or state.get("_backward_hooks")
        or state.get("_backward_pre_hooks")
    ):
        return True
    return any(_GLOBAL_HOOKS)


# torch's registries of global module hooks (dicts filled in place by `register_module_forward_hook` etc.)
_GLOBAL_HOOKS = tuple(
    getattr(_nn_module, name, {})
    for name in (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    )
)


#: the largest inputs (elements of ``logits``) a deferred per-sample evaluation keeps alive until the next step;
#: above it the objective takes the per-sample route (whose fixed cost per step is negligible at that size)
DEFER_MAX_ELEMENTS = 1 << 20


class Deferred(NamedTuple):
    """Per-sample values not computed yet: ``fn()`` evaluates the ``[N]`` values (``size`` = N) when asked for."""

    size: int
    fn: Callable[[], torch.Tensor]


class Loss(nn.Module):
    """Base class of every registered loss.

    Subclasses implement ``forward(**named_tensors) -> Tensor[N]`` and validate their arguments in ``__init__``.

    Attributes:
        batch_level: ``True`` for set-level losses (global Dice, AnyLoss) whose ``forward`` returns a scalar for the
            whole (global) batch; such terms are added to the objective after reweighting.
    """

    batch_level: ClassVar[bool] = False

    def __init__(self, validate_args: bool = True) -> None:
        super().__init__()
        self.validate_args = check_bool("validate_args", validate_args)

    @classmethod
    def input_names(cls) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(required, optional)`` input names, read from the ``forward`` signature (cached per class)."""
        cached = _INPUT_NAMES.get(cls)
        if cached is None:
            params = list(inspect.signature(cls.forward).parameters.values())[1:]
            kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
            required = tuple(p.name for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)
            optional = tuple(p.name for p in params if p.kind in kinds and p.default is not inspect.Parameter.empty)
            cached = _INPUT_NAMES[cls] = (required, optional)
        return cached

    def sample_mask(self, **inputs: torch.Tensor) -> torch.Tensor | None:
        """Boolean ``[N]`` of samples that count (e.g. not ``ignore_index``), or ``None`` when all do."""
        return None

    def forward_with_mask(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(self(**inputs), self.sample_mask(**inputs))``: what the objective calls.

        Subclasses override it to share work between the two; losses on integer labels, for instance, learn from their
        one label-range check whether any sample is ignored and then return ``None`` (every sample counts), which
        spares the objective a masked reduction.
        """
        return self(**inputs), self.sample_mask(**inputs)

    def mean_with_mask(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, Deferred | None]:
        """:meth:`forward_with_mask`, or the mean over the batch when every sample counts and the loss's kernel can
        reduce by itself (the objective's single-term path asks for it: torch's fused mean saves a reduction node in
        the forward and backward pass).

        Returns:
            ``(per_sample [N], mask, None)``, or ``(mean, None, deferred)``: the scalar mean over the ``N`` samples
            (with gradient) and a :class:`Deferred` that evaluates the per-sample values when they are asked for.
            The default is :meth:`forward_with_mask`'s result.
        """
        value, mask = self.forward_with_mask(**inputs)
        return value, mask, None

    def extra_repr(self) -> str:
        hidden = {"training", "validate_args"}
        items = [f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and k not in hidden]
        return ", ".join(items)


def list_losses(filter: Any = None) -> list[str]:
    """Sorted canonical names of the registered losses (optionally filtered by substring or predicate).

    Example:
        >>> "focal" in list_losses()
        True
    """
    return LOSSES.list(filter)


def build_loss(name: str | dict[str, Any], /, **kwargs: Any) -> Loss:
    """Build a registered loss by name: ``build_loss("focal", gamma=2.0)``.

    Raises:
        ConfigurationError: unknown name (with the nearest valid one), unknown argument or invalid value.
    """
    return LOSSES.build(name, **kwargs)
