"""Registered multi-class losses (thin modules over :mod:`lightning_losses.functional.classification`)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from lightning_losses import functional as LF
from lightning_losses._validation import check_int, check_number, check_probability_vector
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional._checks import check_label_range, check_per_class, not_ignored
from lightning_losses.functional.classification import _cross_entropy
from lightning_losses.losses.base import DEFER_MAX_ELEMENTS, LOSSES, Deferred, Loss, has_hooks

__all__ = ["CrossEntropy", "Focal"]


class _LabelLoss(Loss):
    """Shared ``ignore_index`` handling for losses on integer labels."""

    ignore_index: int

    def sample_mask(self, *, target: torch.Tensor, **_: torch.Tensor) -> torch.Tensor | None:
        if target.is_floating_point():
            return None
        return not_ignored(target, self.ignore_index)

    def forward_with_mask(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss and its sample mask from one label-range check (one host sync, as ``forward`` alone).

        The check runs here, the loss is then evaluated without repeating it, and the mask is ``None`` when the check
        showed that every label is a class (no ``ignore_index``): the objective then takes a plain mean.
        """
        value, mask, _ = self._evaluate(inputs, reduce=False)
        return value, mask

    def mean_with_mask(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, Deferred | None]:
        """:meth:`forward_with_mask`, or, when every sample counts and the kernel reduces by itself
        (:meth:`_checked_mean`), the batch mean and the per-sample values deferred until asked for."""
        return self._evaluate(inputs, reduce=True)

    def _evaluate(
        self, inputs: dict[str, torch.Tensor], reduce: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, Deferred | None]:
        logits, target = inputs.get("logits"), inputs.get("target")
        state = self.__dict__  # plain attributes: skip nn.Module.__getattr__ / __setattr__ on the hot path
        plain_labels = (  # logits [N, C] with non-empty integer labels [N]; anything else takes the checked default
            state["validate_args"]
            and isinstance(logits, torch.Tensor)
            and isinstance(target, torch.Tensor)
            and logits.ndim == 2
            and target.shape == logits.shape[:1]
            and logits.is_floating_point()
            and target.dtype in _INTEGER
            and target.numel() > 0
        )
        if not plain_labels:
            return self(**inputs), self.sample_mask(**inputs), None
        num_classes, ignore_index = logits.shape[1], self.ignore_index
        kernels = _kernels(type(self))
        direct = len(inputs) == 2 and kernels.direct and not has_hooks(self)
        checked = not (direct and kernels.checks_labels and target.is_cpu)
        if checked:
            counted = check_label_range(target, num_classes, ignore_index) and not 0 <= ignore_index < num_classes
        else:
            # the CPU kernel rejects every label outside [0, C) but `ignore_index` itself: one scalar read tells
            # whether `ignore_index` occurs, and a rejected label gets the message of `check_label_range`
            counted = _none_ignored(target, num_classes, ignore_index)
        try:
            if direct:  # nothing runs around `forward`: the kernel directly
                if reduce and counted and kernels.mean and logits.numel() <= DEFER_MAX_ELEMENTS:
                    mean = self._checked_mean(logits, target)
                    if mean is not None:
                        return mean, None, Deferred(target.shape[0], _later(self._checked_forward, logits, target))
                value = self._checked_forward(logits, target)
            else:
                with self._labels_checked():  # checked once above, for the loss and the mask
                    value = self(**inputs)
        except (IndexError, RuntimeError):
            if not checked:
                check_label_range(target, num_classes, ignore_index)
            raise
        return value, None if counted else not_ignored(target, ignore_index), None

    def _checked_forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``forward`` on ``logits [N, C]`` and integer labels ``[N]`` already checked (shapes and label range).

        Losses override it with their kernel minus the checks; the default is ``forward`` without the label check."""
        with self._labels_checked():
            return self.forward(logits=logits, target=target)

    def _checked_mean(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        """The mean of :meth:`_checked_forward` over the batch, from a kernel that reduces by itself, or ``None``
        (no such kernel). Called only when every sample counts, by the class that defines ``_checked_forward``."""
        return None

    @contextlib.contextmanager
    def _labels_checked(self):
        """Inside: ``validate_args`` is off (the labels were just checked); restored even if the loss raises."""
        state = self.__dict__  # a plain attribute: skip `nn.Module.__setattr__` on the hot path
        state["validate_args"] = False
        try:
            yield
        finally:
            state["validate_args"] = True


_INTEGER = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _later(kernel: Callable, logits: torch.Tensor, target: torch.Tensor) -> Callable[[], torch.Tensor]:
    """``kernel(logits, target)`` evaluated when called, refused (as autograd refuses) if either input was modified in
    place since: the values would no longer be those of the loss."""
    try:
        versions = (logits._version, target._version)
    except RuntimeError:  # inference tensors (validation under inference mode) keep no version counter
        versions = None

    def evaluate() -> torch.Tensor:
        if versions is not None and (logits._version, target._version) != versions:
            raise RuntimeError(
                "the per-sample values of this objective output were deferred, and its `logits` or `target` have been "
                "modified in place since `compute_loss`; read `objective_output.per_sample` before modifying them"
            )
        return kernel(logits, target)

    return evaluate


class _Kernels(NamedTuple):
    """What a label-loss class's kernels may be trusted with (:func:`_kernels`)."""

    direct: bool  #: ``_checked_forward`` computes ``forward``
    checks_labels: bool  #: on CPU, the kernel raises for every label outside [0, C) but ``ignore_index``
    mean: bool  #: ``_checked_mean`` is the mean of ``_checked_forward`` (or the generic ``None``)


@functools.cache
def _kernels(cls: type) -> _Kernels:
    """Decided once per class from where each method is defined: ``_checked_forward`` computes ``forward`` when it is
    the generic one (which calls ``forward``) or is defined by the class that defines ``forward`` (a subclass
    overriding only ``forward`` keeps its ``forward``); the label and mean promises hold for the class that defines
    ``_checked_forward`` (``_kernel_checks_labels = True`` in its own body; ``_checked_mean`` defined beside it)."""
    owner = {
        name: next(k for k in cls.__mro__ if name in vars(k))
        for name in ("forward", "_checked_forward", "_checked_mean")
    }
    kernel = owner["_checked_forward"]
    return _Kernels(
        direct=kernel in (_LabelLoss, owner["forward"]),
        checks_labels=vars(kernel).get("_kernel_checks_labels", False) is True,
        mean=owner["_checked_mean"] in (_LabelLoss, kernel),
    )


def _none_ignored(target: torch.Tensor, num_classes: int, ignore_index: int) -> bool:
    """Whether no label equals ``ignore_index``, for labels a checking kernel accepts (``[0, C)`` and
    ``ignore_index``): the bound on ``ignore_index``'s side decides it, and an ``ignore_index`` that is a class id
    may occur among valid labels (``False``, nothing read)."""
    if ignore_index < 0:
        return target.min().item() >= 0
    if ignore_index >= num_classes:
        return target.max().item() < num_classes
    return False


@LOSSES.register("cross_entropy", aliases=("ce", "xent"))
class CrossEntropy(_LabelLoss):
    r"""Per-sample cross entropy: :math:`\ell_i = -\sum_c w_c q_{ic}\log\mathrm{softmax}(z_i)_c`.

    See :func:`lightning_losses.functional.cross_entropy` for the formula and the smoothing construction
    (PyTorch's: ``ε/C`` to every class).

    Args:
        label_smoothing: ``ε`` in ``[0, 1]``. Default 0.
        weight: optional per-class weights ``[C]`` (non-negative).
        ignore_index: label ignored in loss and normaliser. Default -100.
        validate_args: check label ranges at call time (one host sync).

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("cross_entropy", label_smoothing=0.1)
        >>> loss(logits=torch.zeros(3, 4), target=torch.tensor([0, 1, 2])).shape
        torch.Size([3])
    """

    family = "multiclass"
    _kernel_checks_labels = True  # torch's `nll_loss` on CPU raises for a label outside [0, C) but `ignore_index`

    def __init__(
        self,
        label_smoothing: float = 0.0,
        weight: Sequence[float] | None = None,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.register_buffer("weight", check_probability_vector("weight", weight), persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.cross_entropy(
            logits,
            target,
            label_smoothing=self.label_smoothing,
            weight=self.weight,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )

    def _checked_forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weight = self._buffers["weight"]  # a buffer read without `nn.Module.__getattr__`
        if weight is not None:
            check_per_class("weight", weight, logits.shape[1])
        return _cross_entropy(logits, target, self.label_smoothing, weight, self.ignore_index)

    def _checked_mean(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
        if self._buffers["weight"] is not None:
            return None  # torch's weighted mean divides by the labels' weights, the objective by the sample count
        return _cross_entropy(logits, target, self.label_smoothing, None, self.ignore_index, reduction="mean")


@LOSSES.register("focal", aliases=("focal_loss",))
class Focal(_LabelLoss):
    r"""Softmax focal loss (Lin et al., ICCV 2017): :math:`\ell_i = -\alpha_{y_i}(1-p_{i,y_i})^\gamma\log p_{i,y_i}`.

    Stable for any ``gamma >= 0`` at saturated logits (see :func:`lightning_losses.functional.focal_term`).

    Args:
        gamma: focusing parameter ``>= 0``. Default 2.0 (paper). ``0`` is cross entropy.
        alpha: ``None`` (default: no class weighting, as fvcore's ``alpha=-1``), a positive scalar, or
            per-class weights ``[C]``.
        ignore_index: label ignored in loss and normaliser. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("focal", gamma=2.0)(logits=torch.zeros(2, 3), target=torch.tensor([0, 1])).shape
        torch.Size([2])
    """

    family = "multiclass"

    def __init__(
        self,
        gamma: float = 2.0,
        alpha: float | Sequence[float] | None = None,
        ignore_index: int = -100,
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.ignore_index = check_int("ignore_index", ignore_index)
        if alpha is None or isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            alpha_t = None if alpha is None else torch.tensor(check_number("alpha", alpha, low=0.0, low_open=True))
        elif isinstance(alpha, Sequence) and not isinstance(alpha, str):
            alpha_t = check_probability_vector("alpha", alpha)
        else:
            raise ConfigurationError(f"`alpha` must be None, a positive number or per-class weights, got {alpha!r}")
        self.register_buffer("alpha", alpha_t, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LF.focal(
            logits,
            target,
            gamma=self.gamma,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            validate_args=self.validate_args,
        )
