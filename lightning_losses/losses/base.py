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

__all__ = ["FAMILIES", "LOSSES", "Loss", "build_loss", "list_losses"]

LOSSES: Registry[type[Loss]] = Registry("loss")
#: the documented values of :attr:`Loss.family`
FAMILIES = ("multiclass", "binary", "regression", "embedding", "distillation", "preference", "token", "policy")
_INPUT_NAMES: dict[type, tuple[tuple[str, ...], tuple[str, ...]]] = {}


class Loss(nn.Module):
    """Base class of every registered loss.

    **The contract.** ``forward(**named_tensors) -> Tensor[N]``: the per-sample loss (a scalar for the whole batch
    when :attr:`batch_level`), taking the library's shared input names as keyword arguments; its signature is the
    loss's inputs (:meth:`input_names`). :meth:`sample_mask` says which samples count.

    **Writing a loss** (one style for every loss): validate each hyperparameter in ``__init__`` and store it as an
    attribute of the same name (``repr`` shows them); write ``forward`` with the named inputs it needs, calling the
    pure function with the stored hyperparameters; set ``family`` (or subclass a family base such as
    :class:`~lightning_losses.losses.LabelLoss`, which also brings the ``ignore_index`` mask); register it:

    >>> import torch
    >>> from lightning_losses.losses import LOSSES, LabelLoss, build_loss
    >>> from lightning_losses._validation import check_int, check_number
    >>>
    >>> @LOSSES.register("margin_hinge", aliases=("hinge_margin",))
    ... class MarginHinge(LabelLoss):
    ...     # multi-class hinge: max(0, margin + max_{c != y} z_c - z_y) per sample
    ...     def __init__(self, margin: float = 1.0, ignore_index: int = -100, validate_args: bool = True) -> None:
    ...         super().__init__(validate_args)
    ...         self.margin = check_number("margin", margin, low=0.0)
    ...         self.ignore_index = check_int("ignore_index", ignore_index)
    ...
    ...     def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    ...         y = target.clamp_min(0).unsqueeze(1)  # ignored labels: masked by sample_mask
    ...         true = logits.gather(1, y).squeeze(1)
    ...         other = logits.scatter(1, y, float("-inf")).amax(1)
    ...         return (self.margin + other - true).clamp_min(0.0)
    >>> loss = build_loss("hinge_margin", margin=0.5)
    >>> loss
    MarginHinge(margin=0.5, ignore_index=-100)
    >>> loss(logits=torch.tensor([[2.0, 0.0], [0.0, 0.2]]), target=torch.tensor([0, 1]))
    tensor([0.0000, 0.3000])
    >>> loss.input_names(), loss.sample_mask(target=torch.tensor([0, -100])).tolist()
    ((('logits', 'target'), ()), [True, False])
    >>> LOSSES.unregister("margin_hinge")  # keep the doctest's registry clean

    Attributes:
        family: the kind of inputs and target the loss takes, one of :data:`FAMILIES`: ``"multiclass"``
            (``logits [N, C]``, integer ``target``), ``"binary"`` (``logits`` and 0 / 1 ``target`` of the same
            shape), ``"regression"`` (``pred`` / real ``target``), ``"embedding"`` (``embeddings``, ``target``),
            ``"distillation"`` (``logits``, ``teacher_logits``), ``"preference"`` (per-sequence log-probabilities),
            ``"token"`` (``logits [N, T, V]``, ``target [N, T]``) and ``"policy"`` (token ``logps``,
            ``advantages``). It describes the loss for users and tools; the registry-wide contract test
            (``tests/losses/test_contract.py``) uses it to choose the inputs it calls every registered loss with.
            ``None`` (the default) lets that test infer it from unambiguous input names. The family bases
            (:class:`~lightning_losses.losses.LabelLoss`, ...) set it.
        batch_level: ``True`` for set-level losses (global Dice, AnyLoss) whose ``forward`` returns a scalar for the
            whole (global) batch; such terms are added to the objective after reweighting.
        batch_statistics: ``True`` for per-sample losses whose values depend on the other samples of the batch (a
            ranking, a calibration) even where no global reduction runs (one process, ``gather=False``): under
            gradient accumulation they are named in the ``AccumulationWarning`` (``lightning_losses._accumulation``).
    """

    family: ClassVar[str | None] = None
    batch_level: ClassVar[bool] = False
    batch_statistics: bool = False

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
        hidden = {"training", "validate_args", "batch_statistics"}
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
