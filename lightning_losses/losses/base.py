"""The :class:`Loss` base class and the loss registry.

A loss is an ``nn.Module`` whose ``forward`` takes named tensors (keyword arguments, names shared across the library:
``logits``, ``target``, ``pred``, ``embeddings``, ...) and returns the **per-sample** loss ``[N]``. The module only
stores validated hyperparameters; the computation is the pure function in :mod:`lightning_losses.functional`.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
from torch import nn

from lightning_losses._validation import check_bool
from lightning_losses.registry import Registry

__all__ = ["LOSSES", "Loss", "build_loss", "list_losses"]

LOSSES: Registry[type[Loss]] = Registry("loss")
_INPUT_NAMES: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


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
