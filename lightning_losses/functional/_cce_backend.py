"""Optional backend: the ``cut_cross_entropy`` package's fused Triton kernel (Wijmans et al., ICLR 2025).

Used by :func:`lightning_losses.functional.linear_ce.linear_cross_entropy` with ``impl="cce"`` (or ``"auto"`` on
CUDA when the package is importable and the options allow it). Called as ``linear_cross_entropy(e, c, targets,
bias=..., ignore_index=..., softcap=..., reduction="none", filter_eps=None)``: ``filter_eps=None`` turns off its
gradient filtering, so the result is exact (the package's ``cce_exact`` preset). Not exercised by the CPU test suite.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect

import torch

__all__ = ["blocker", "cce_available", "nll"]


def cce_available() -> bool:
    """Whether the optional ``cut_cross_entropy`` package can be imported."""
    return importlib.util.find_spec("cut_cross_entropy") is not None


def blocker(hidden, bias, label_smoothing, z_loss, want_entropy) -> str | None:
    """Why the ``cce`` backend cannot run these inputs (``None`` when it can)."""
    if not cce_available():
        return "the `cut_cross_entropy` package is not installed (pip install cut-cross-entropy)"
    if not hidden.is_cuda:
        return f"it needs CUDA inputs, got `hidden` on {hidden.device}"
    if label_smoothing or z_loss or want_entropy:
        return "it computes plain NLL only (no label smoothing, z-loss or entropy)"
    if bias is not None:
        fn = importlib.import_module("cut_cross_entropy").linear_cross_entropy
        if "bias" not in inspect.signature(fn).parameters:
            return "the installed `cut_cross_entropy` takes no `bias`"
    return None


def nll(hidden, weight, bias, target, ignore_index, softcap) -> torch.Tensor:
    """Per-token NLL (shape of ``target``, float32, 0 on ignored tokens) from the exact kernel (no gradient filter)."""
    fn = importlib.import_module("cut_cross_entropy").linear_cross_entropy
    kwargs = {"bias": bias} if bias is not None else {}
    out = fn(
        hidden, weight, target, ignore_index=ignore_index, softcap=softcap, reduction="none", filter_eps=None, **kwargs
    )
    out = out.reshape(target.shape).float()
    return torch.where(target != ignore_index, out, torch.zeros_like(out))
