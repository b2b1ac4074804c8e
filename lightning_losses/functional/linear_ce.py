r"""Memory-efficient token cross entropy, log-probs and entropy from hidden states and the output weight.

For hidden states ``hidden [N, T, H]`` (or any ``[..., H]``), the output embedding ``weight [V, H]`` and an optional
``bias [V]``, the logits :math:`z = h W^\top + b` are never materialised for all tokens at once: a custom autograd
function works through chunks of tokens, keeps only the per-token log-sum-exp in the forward and recomputes each
chunk's logits in the backward (the idea of *Cut Your Losses in Large-Vocabulary Language Models*, Wijmans et al.,
ICLR 2025, done chunk-wise in PyTorch as Liger-Kernel's fused linear cross entropy does). Extra memory is one
chunk-sized buffer (``chunk_size × V`` floats, about 128 MiB by default; two with entropy, one more with a softcap or
half inputs) plus ``grad_weight``, instead of several ``[N·T, V]`` tensors; the price is one more
``[N·T, H] × [H, V]`` matmul in the backward (4 instead of 3). With a frozen head (``weight`` and ``bias`` need no
gradient) the forward computes the per-token gradient rows of ``hidden`` instead, and nothing is recomputed.

The per-token results are exact (to float tolerance) against the materialised path for any upstream gradient, so
per-token weights, ``reduction="none"`` and per-sequence normalisation
(:func:`~lightning_losses.functional.aggregation.aggregate_tokens`) get correct gradients.

Sharded weights (FSDP2, tensor parallelism): a ``weight`` / ``bias`` that is a ``DTensor`` is gathered whole once
per call (``V × H``, as FSDP2's own unshard of the head module would; not per chunk) and its gradient is
reduce-scattered back to the shards, averaged over the ranks (DDP's average); ``hidden`` must be this rank's plain
tensor, and the ``[N·T, V]`` logits stay chunked and local (never gathered). A head in FSDP2's root unit is already
unsharded by the root's forward and passes through unchanged.

Backends (``impl``): ``"chunked"`` (this module, any device), ``"cce"`` (the ``cut_cross_entropy`` package's fused
Triton kernel, CUDA only, exact mode ``filter_eps=None``; plain NLL with optional softcap and bias only), ``"auto"``
(``"cce"`` when importable, on CUDA and the options allow it, else ``"chunked"``).
"""

from __future__ import annotations

import torch

from lightning_losses._validation.tensors import as_index, not_ignored
from lightning_losses.functional import _cce_backend as CCE
from lightning_losses.functional._cce_backend import cce_available
from lightning_losses.functional._linear_ce_inputs import (
    autocast_inputs,
    check_inputs,
    check_options,
    gather_sharded,
    run_chunked,
)
from lightning_losses.functional._linear_ce_kernel import default_chunk_size

__all__ = [
    "IMPLS",
    "REDUCTIONS",
    "cce_available",
    "default_chunk_size",
    "linear_cross_entropy",
    "linear_entropy",
    "linear_log_probs",
]

IMPLS = ("auto", "chunked", "cce")
REDUCTIONS = ("none", "sum", "mean")


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    token_weight: torch.Tensor | None = None,
    reduction: str = "none",
    chunk_size: int | None = None,
    impl: str = "auto",
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Token cross entropy of ``z = cap(hidden @ weight.T + bias)`` without materialising all logits.

    Per token, :math:`L_t = (1-\epsilon)(\ell_t - z_{t,y_t}) + \epsilon(\ell_t - \tfrac1V\sum_v z_{t,v}) +
    c\,\ell_t^2` with :math:`\ell_t = \log\sum_v e^{z_{t,v}}` (label smoothing as in ``torch.nn.functional.
    cross_entropy``; PaLM's z-loss, Chowdhery et al. 2022, coefficient ``z_loss``), times ``token_weight`` when
    given, and 0 on ``ignore_index`` tokens. The softcap is Gemma 2's :math:`s\tanh(z/s)`.

    Args:
        hidden: ``[..., H]`` hidden states (``[N, T, H]``); float16 / bfloat16 are computed in float32.
        weight: ``[V, H]`` output embedding (``lm_head.weight``), same dtype and device.
        target: integer ``[...]`` (``[N, T]``), already shifted; ``ignore_index`` marks tokens that do not count.
        bias: optional ``[V]``.
        ignore_index: ignored target id. Default -100.
        label_smoothing: :math:`\epsilon \in [0, 1)`. Default 0.
        z_loss: :math:`c \ge 0`. Default 0.
        softcap: :math:`s > 0` or ``None`` (off). Default ``None``.
        token_weight: optional floating ``[...]`` multiplying each token's loss (gradients flow to it too).
        reduction: ``"none"`` (per token, shape of ``target``), ``"sum"``, or ``"mean"`` (the sum divided by the number
            of valid tokens, at least 1). Default ``"none"``.
        chunk_size: tokens per chunk, or ``None`` for about 128 MiB of float32 logits per chunk.
        impl: ``"auto"``, ``"chunked"`` or ``"cce"`` (see the module docstring). Default ``"auto"``.
        validate_args: check that target ids are in range (one host sync). Default ``True``.

    Returns:
        float32 for half inputs, else the input dtype; shape per ``reduction``.

    Example:
        >>> h, w = torch.randn(2, 3, 4), torch.randn(5, 4)
        >>> y = torch.tensor([[0, 1, -100], [4, 2, 3]])
        >>> naive = torch.nn.functional.cross_entropy((h @ w.T).flatten(0, 1), y.flatten(), reduction="none")
        >>> torch.allclose(linear_cross_entropy(h, w, y, chunk_size=4), naive.view(2, 3), atol=1e-6)
        True
    """
    hidden, weight, bias = autocast_inputs(*gather_sharded(hidden, weight, bias))
    check_inputs(hidden, weight, bias, target, token_weight, chunk_size, validate_args, ignore_index)
    target = as_index(target)
    check_options(label_smoothing, z_loss, softcap)
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
    if impl not in IMPLS:
        raise ValueError(f"`impl` must be one of {IMPLS}, got {impl!r}")
    use_chunked = impl == "chunked" or (impl == "auto" and not hidden.is_cuda)  # no package lookup on CPU
    blocker = "chunked" if use_chunked else CCE.blocker(hidden, bias, label_smoothing, z_loss, False)
    if impl == "cce" and blocker is not None:
        raise RuntimeError(f"`impl='cce'` cannot run: {blocker}; use impl='chunked' or 'auto'")
    if blocker is None:
        token = CCE.nll(hidden, weight, bias, target, ignore_index, softcap)
    else:
        token, _ = run_chunked(
            hidden,
            weight,
            bias,
            target,
            ignore_index=ignore_index,
            eps=float(label_smoothing),
            z_coef=float(z_loss),
            softcap=softcap,
            chunk_size=chunk_size,
            want_entropy=False,
        )
    if token_weight is not None:
        token = token * token_weight.to(token.dtype)
    if reduction == "none":
        return token
    total = token.sum()
    if reduction == "sum":
        return total
    return total / not_ignored(target, ignore_index).sum().clamp_min(1).to(total.dtype)


def linear_log_probs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    return_entropy: bool = False,
    chunk_size: int | None = None,
    validate_args: bool = True,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    r"""Per-token :math:`\log p(y_t) = z_{t,y_t} - \ell_t` (0 on ``ignore_index``), chunked, with gradients.

    With ``return_entropy=True`` also the per-token entropy (every token, as :func:`linear_entropy`) from the same
    pass: ``(logps, entropy)``, what policy-gradient losses with an entropy bonus need. Arguments as in
    :func:`linear_cross_entropy`. Sum over a response for a sequence log-prob (preference losses).

    Example:
        >>> h, w, y = torch.randn(1, 3, 4), torch.randn(6, 4), torch.tensor([[1, 5, -100]])
        >>> ref = torch.log_softmax(h @ w.T, -1).gather(-1, y.clamp_min(0)[..., None])[..., 0] * (y >= 0)
        >>> torch.allclose(linear_log_probs(h, w, y), ref, atol=1e-6)
        True
    """
    hidden, weight, bias = autocast_inputs(*gather_sharded(hidden, weight, bias))
    check_inputs(hidden, weight, bias, target, None, chunk_size, validate_args, ignore_index)
    target = as_index(target)
    check_options(0.0, 0.0, softcap)
    nll, ent = run_chunked(
        hidden,
        weight,
        bias,
        target,
        ignore_index=ignore_index,
        eps=0.0,
        z_coef=0.0,
        softcap=softcap,
        chunk_size=chunk_size,
        want_entropy=bool(return_entropy),
    )
    return (-nll, ent) if return_entropy else -nll


def linear_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    softcap: float | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    r"""Per-token entropy :math:`H_t = -\sum_v p_{t,v}\log p_{t,v}` of ``softmax(cap(hidden @ weight.T + b))``, chunked.

    The backward recomputes each chunk's logits (:math:`\partial H/\partial z_v = -p_v(\log p_v + H)`); mask padding
    yourself. Returns ``[...]`` (the leading dims of ``hidden``).

    Example:
        >>> linear_entropy(torch.zeros(2, 4), torch.randn(8, 4))  # uniform over 8: log 8
        tensor([2.0794, 2.0794])
    """
    hidden, weight, bias = autocast_inputs(*gather_sharded(hidden, weight, bias))
    check_inputs(hidden, weight, bias, None, None, chunk_size, False, -100)
    check_options(0.0, 0.0, softcap)
    _, ent = run_chunked(
        hidden,
        weight,
        bias,
        None,
        ignore_index=-100,
        eps=0.0,
        z_coef=0.0,
        softcap=softcap,
        chunk_size=chunk_size,
        want_entropy=True,
    )
    return ent
