"""Call-time tensor input checks (shapes, dtypes, label ranges) for the losses and the objective.

Shape and dtype checks are free (no host-device sync) and always run. Value checks (label range) need a sync and
run only when ``validate_args=True`` (the default, as in torchmetrics).
"""

from __future__ import annotations

import torch

__all__ = [
    "as_index",
    "check_binary",
    "check_label_range",
    "check_multiclass",
    "check_per_class",
    "check_regression",
    "not_ignored",
    "require_tensor",
    "shape_str",
    "upcast_half",
]


def shape_str(t: torch.Tensor) -> str:
    """``t``'s shape as ``"[2, 3]"`` (for error messages)."""
    return f"[{', '.join(str(s) for s in t.shape)}]"


def upcast_half(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is float16 / bfloat16 (losses compute in float32 for half inputs), else ``t``."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def as_index(target: torch.Tensor) -> torch.Tensor:
    """Integer labels as int64 (torch's ``gather``, ``one_hot`` and ``nll_loss`` index with int64; labels may
    arrive as int32, int16, int8 or uint8)."""
    return target if target.dtype == torch.int64 else target.long()


def not_ignored(target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """``target != ignore_index`` without the wrap-around of a narrow integer dtype (torch casts the Python int to
    the tensor's dtype: a uint8 label compared with -100 is compared with 156); a value the dtype cannot hold is
    never a label."""
    if target.dtype != torch.int64 and not target.is_floating_point() and target.dtype != torch.bool:
        info = torch.iinfo(target.dtype)
        if not info.min <= ignore_index <= info.max:
            return torch.ones_like(target, dtype=torch.bool)
    return target != ignore_index


def require_tensor(name: str, value: object) -> torch.Tensor:
    """``value`` itself; ``TypeError`` naming ``name`` when it is not a tensor."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(value).__name__}")
    return value


def check_multiclass(
    logits: torch.Tensor, target: torch.Tensor, *, ignore_index: int | None = None, validate_args: bool = True
) -> bool:
    """Validate ``logits [N, C]`` with ``target [N]`` (integer labels) or ``[N, C]`` (probabilities).

    Returns:
        ``True`` for soft (probability) targets, ``False`` for integer labels.
    """
    if not (isinstance(logits, torch.Tensor) and isinstance(target, torch.Tensor)):  # one test on the hot path
        require_tensor("logits", logits)
        require_tensor("target", target)
    if logits.ndim != 2 or not logits.is_floating_point():
        raise ValueError(f"`logits` must be a floating tensor of shape [N, C], got {logits.dtype} {shape_str(logits)}")
    if target.is_floating_point():
        if target.shape == logits.shape[:1]:
            raise ValueError(
                f"`target` of shape [N] must hold integer class labels (int64), got {target.dtype}; soft targets are "
                f"probabilities shaped like `logits` {shape_str(logits)}"
            )
        if target.shape != logits.shape:
            raise ValueError(
                f"soft `target` must have the shape of `logits` {shape_str(logits)}, got {shape_str(target)}"
            )
        return True
    if target.dtype == torch.bool or target.is_complex():
        raise ValueError(f"`target` must hold integer class labels (int64), got {target.dtype}")
    if target.shape != logits.shape[:1]:
        raise ValueError(
            f"`target` must have shape [N] = [{logits.shape[0]}] to match `logits` {shape_str(logits)}, "
            f"got {shape_str(target)}"
        )
    if validate_args and target.numel():
        check_label_range(target, logits.shape[1], ignore_index)
    return False


def check_label_range(target: torch.Tensor, num_classes: int, ignore_index: int | None = None) -> bool:
    """Raise unless every label of the integer ``target`` is in ``[0, num_classes)`` or equals ``ignore_index``.

    Returns:
        ``True`` when every label is in ``[0, num_classes)`` (known from one reduction and one sync), ``False`` when
        some label lies outside and is ``ignore_index`` (a second reduction checked it).
    """
    if not target.numel():
        return True
    low, high = torch.aminmax(target)  # one reduction, one sync
    if target.device.type == "cpu":  # two scalar reads are cheaper than packing on the host
        low, high = low.item(), high.item()
    else:
        low, high = torch.stack((low, high)).tolist()  # one device-to-host copy
    if low >= 0 and high < num_classes:
        return True
    valid = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        valid |= ~not_ignored(target, ignore_index)
    if not bool(valid.all()):
        bad = target[~valid][:5].tolist()
        raise ValueError(f"`target` labels must be in [0, {num_classes - 1}] (or `ignore_index`), got {bad}")
    return False


def check_binary(logits: torch.Tensor, target: torch.Tensor, *, validate_args: bool = True) -> None:
    """Validate ``logits [N]`` or ``[N, K]`` with a ``target`` of the same shape in {0, 1} (floats in [0, 1] ok)."""
    require_tensor("logits", logits)
    require_tensor("target", target)
    if logits.ndim not in (1, 2) or not logits.is_floating_point():
        raise ValueError(
            f"`logits` must be a floating tensor of shape [N] or [N, K], got {logits.dtype} {shape_str(logits)}"
        )
    if target.shape != logits.shape:
        raise ValueError(f"`target` must have the shape of `logits` {shape_str(logits)}, got {shape_str(target)}")
    if validate_args and target.numel():
        t = target.float()
        if not bool(((t >= 0) & (t <= 1)).all()):
            raise ValueError("`target` values must be in [0, 1] for binary / multi-label losses")


def check_regression(pred: torch.Tensor, target: torch.Tensor) -> None:
    """Validate ``pred [N]`` or ``[N, ...]`` with a floating ``target`` of the same shape."""
    require_tensor("pred", pred)
    require_tensor("target", target)
    if pred.ndim < 1 or not pred.is_floating_point():
        raise ValueError(f"`pred` must be a floating tensor of shape [N] or [N, D], got {pred.dtype} {shape_str(pred)}")
    if target.shape != pred.shape:
        raise ValueError(f"`target` must have the shape of `pred` {shape_str(pred)}, got {shape_str(target)}")


def check_per_class(name: str, values: torch.Tensor, size: int, axis: str = "C", *, scalar_ok: bool = False) -> None:
    """Validate a per-class vector (class weights, ``alpha``, ``pos_weight``) against the ``size`` of the class axis.

    ``scalar_ok`` also accepts one value (``[]`` or ``[1]``) that broadcasts over the classes.
    """
    if scalar_ok and values.numel() == 1 and values.ndim <= 1:
        return
    if values.shape != (size,):
        raise ValueError(f"`{name}` must have shape [{axis}] = [{size}], got {list(values.shape)}")
