"""Input handling of the chunked linear cross entropy (:mod:`lightning_losses.functional.linear_ce`): the casts of
``torch.autocast``, the argument checks, and the call of the chunked autograd function on flattened tokens."""

from __future__ import annotations

import torch

from lightning_losses._validation.tensors import not_ignored, shape_str
from lightning_losses.functional._linear_ce_kernel import ChunkedLinearCE, default_chunk_size

try:  # torch >= 2.4 exposes DTensor publicly
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover - builds without distributed
    DTensor = None  # type: ignore[assignment,misc]

__all__ = ["autocast_dtype", "autocast_inputs", "check_inputs", "check_options", "gather_sharded", "run_chunked"]


def autocast_dtype(device: str) -> torch.dtype | None:
    """The dtype of ``torch.autocast`` on ``device`` (``"cuda"``, ``"cpu"``), or ``None`` when it is off."""
    try:  # torch >= 2.4
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    except (AttributeError, TypeError, RuntimeError):  # torch 2.3
        if device == "cuda" and torch.is_autocast_enabled():
            return torch.get_autocast_gpu_dtype()
        if device == "cpu" and torch.is_autocast_cpu_enabled():
            return torch.get_autocast_cpu_dtype()
        return None


def _is_dtensor(t) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def gather_sharded(hidden, weight, bias):
    """A sharded ``weight`` / ``bias`` (a ``DTensor``: FSDP2 or tensor parallelism) gathered whole, once per call.

    The gradient of the gathered tensor is declared ``Partial("avg")`` over every mesh dimension: the backward
    reduce-scatters it to the parameter's shards, averaging over the ranks, as FSDP2 does for the gradient of an
    unsharded parameter (equal to DDP's average; on a tensor-parallel dimension the ranks share the tokens, so the
    average is the value itself). ``hidden`` stays this rank's tokens: it must be a plain tensor.
    """
    if _is_dtensor(hidden):
        raise TypeError(
            f"`hidden` must be this rank's local hidden states (a torch.Tensor), got a DTensor with placements "
            f"{tuple(hidden.placements)}; call `hidden.full_tensor()` or `hidden.to_local()` first"
        )
    return hidden, _gathered(weight), _gathered(bias)


def _gathered(t):
    if not _is_dtensor(t):
        return t
    from torch.distributed.tensor import Partial

    return t.full_tensor(grad_placements=[Partial("avg")] * t.device_mesh.ndim)


def autocast_inputs(hidden, weight, bias):
    """Under ``torch.autocast`` cast the matmul inputs to its dtype, as ``F.linear`` would (softmax stays float32)."""
    if not (isinstance(hidden, torch.Tensor) and isinstance(weight, torch.Tensor)):
        return hidden, weight, bias
    dtype = autocast_dtype(hidden.device.type)
    if dtype is None:
        return hidden, weight, bias
    cast = lambda t: t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t  # noqa: E731
    return cast(hidden), cast(weight), cast(bias)


def check_inputs(hidden, weight, bias, target, token_weight, chunk_size, validate_args, ignore_index) -> None:
    """Types, shapes, dtypes and devices of the tensor arguments (and, with ``validate_args``, the target ids'
    range: one host sync); ``ValueError`` / ``TypeError`` naming the argument."""
    for name, t in (("hidden", hidden), ("weight", weight), ("bias", bias), ("target", target)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if hidden.ndim < 2 or not hidden.is_floating_point():
        raise ValueError(
            f"`hidden` must be a floating tensor [..., H] (e.g. [N, T, H]), got {hidden.dtype} {shape_str(hidden)}"
        )
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            f"`weight` must have shape [V, H] with H = {hidden.shape[-1]} (the last dim of `hidden`), "
            f"got {shape_str(weight)}"
        )
    if weight.dtype != hidden.dtype or weight.device != hidden.device:
        raise ValueError(
            f"`weight` must have the dtype and device of `hidden` ({hidden.dtype}, {hidden.device}), "
            f"got {weight.dtype}, {weight.device} (cast one, or run under torch.autocast)"
        )
    if bias is not None and (bias.shape != weight.shape[:1] or bias.dtype != weight.dtype):
        raise ValueError(
            f"`bias` must be a {weight.dtype} tensor of shape [V] = [{weight.shape[0]}], got "
            f"{bias.dtype} {shape_str(bias)}"
        )
    if target is not None:
        if target.is_floating_point() or target.dtype == torch.bool or target.is_complex():
            raise ValueError(f"`target` must hold integer token ids (int64), got {target.dtype}")
        if target.shape != hidden.shape[:-1]:
            raise ValueError(
                f"`target` must have shape {list(hidden.shape[:-1])} (the leading dims of `hidden` "
                f"{shape_str(hidden)}), got {shape_str(target)}"
            )
        if validate_args and target.numel():
            bad = not_ignored(target, ignore_index) & ((target < 0) | (target >= weight.shape[0]))
            if bool(bad.any()):
                raise ValueError(
                    f"`target` ids must be in [0, {weight.shape[0] - 1}] (or `ignore_index` = "
                    f"{ignore_index}), got {target[bad][:5].tolist()}"
                )
    if token_weight is not None:
        if not isinstance(token_weight, torch.Tensor) or not token_weight.is_floating_point():
            got = token_weight.dtype if isinstance(token_weight, torch.Tensor) else type(token_weight).__name__
            raise ValueError(f"`token_weight` must be a floating tensor, got {got}")
        if token_weight.shape != hidden.shape[:-1]:
            raise ValueError(
                f"`token_weight` must have shape {list(hidden.shape[:-1])} (that of `target`), got "
                f"{shape_str(token_weight)}"
            )
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"`chunk_size` must be a positive integer or None (automatic), got {chunk_size!r}")


def check_options(label_smoothing: float, z_loss: float, softcap: float | None) -> None:
    """Ranges of ``label_smoothing`` (``[0, 1)``), ``z_loss`` (``>= 0``) and ``softcap`` (``> 0`` or ``None``)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1), got {label_smoothing!r}")
    if not z_loss >= 0.0:
        raise ValueError(f"`z_loss` must be >= 0, got {z_loss!r}")
    if softcap is not None and not softcap > 0.0:
        raise ValueError(f"`softcap` must be > 0 or None, got {softcap!r}")


def run_chunked(hidden, weight, bias, target, *, ignore_index, eps, z_coef, softcap, chunk_size, want_entropy):
    """``(token losses or None, token entropies or None)``, shaped as the leading dims of ``hidden``, from the
    chunked autograd function (``target=None``: entropy only)."""
    lead = hidden.shape[:-1]
    x = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    chunk = chunk_size or default_chunk_size(x.shape[0], weight.shape[0])
    if target is not None:
        y = target.reshape(-1)
        valid = y != ignore_index
        y = torch.where(valid, y, torch.zeros_like(y))
    else:
        y = valid = None
    loss, ent = ChunkedLinearCE.apply(
        x, weight, bias, y, valid, eps, z_coef, softcap, chunk, target is not None, want_entropy
    )
    return (loss.view(lead) if target is not None else None), (ent.view(lead) if want_entropy else None)
