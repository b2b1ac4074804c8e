r"""Registered memory-efficient token cross entropy from hidden states: ``linear_cross_entropy``.

Inputs: ``hidden [N, T, H]`` (last hidden states, already aligned with the shifted targets), ``weight [V, H]`` (the
output embedding, e.g. ``lm_head.weight``), ``target [N, T]`` (``ignore_index`` on padding and prompt tokens),
optional ``bias [V]`` and ``token_weight [N, T]`` (multiplies each token's loss). Output: one loss per sequence
``[N]``, the per-token losses of :func:`~lightning_losses.functional.linear_ce.linear_cross_entropy` reduced over the
valid tokens by :func:`~lightning_losses.functional.aggregation.aggregate_tokens` (the same normalisations as the policy
losses); sequences without a valid token are masked out of the objective's normaliser.

Example (a recipe term)::

    objective:
      lm: {loss: linear_cross_entropy, z_loss: 1.0e-4, inputs: {weight: lm_weight}}
"""

from __future__ import annotations

import torch

from lightning_losses._validation import check_choice, check_int, check_number
from lightning_losses._validation.tensors import not_ignored
from lightning_losses.functional import linear_ce as LCE
from lightning_losses.functional.aggregation import NORMALIZATIONS, aggregate_tokens
from lightning_losses.losses.base import LOSSES, Loss

__all__ = ["LinearCrossEntropy"]


@LOSSES.register("linear_cross_entropy", aliases=("fused_linear_cross_entropy",))
class LinearCrossEntropy(Loss):
    r"""Per-sequence token cross entropy computed from ``hidden`` and ``weight`` without the ``[N·T, V]`` logits.

    Token losses :math:`L_t` as in :func:`lightning_losses.functional.linear_ce.linear_cross_entropy` (chunked over
    tokens, logits recomputed in the backward; Wijmans et al., *Cut Your Losses in Large-Vocabulary Language Models*,
    ICLR 2025), times ``token_weight``, then per sequence by ``normalization``.

    Args:
        ignore_index: target id of tokens that do not count. Default -100.
        label_smoothing: :math:`\epsilon \in [0, 1)` (uniform over the vocabulary). Default 0.
        z_loss: PaLM z-loss coefficient :math:`c \ge 0` on :math:`(\log Z)^2` per token. Default 0.
        softcap: logit softcap :math:`s > 0` (:math:`s\tanh(z/s)`, Gemma 2), or ``None``. Default ``None``.
        normalization: ``"sequence"`` (token mean within each sequence), ``"token"`` (global token mean), ``"sum"``
            or ``"constant"`` (see :mod:`lightning_losses.functional.policy`). Default ``"token"``, as
            ``token_cross_entropy``: the mean over every scored token of the global batch.
        chunk_size: tokens per chunk, or ``None`` (about 128 MiB of float32 logits per chunk). Default ``None``.
        impl: ``"auto"``, ``"chunked"`` or ``"cce"`` (``cut_cross_entropy`` on CUDA; see the functional module).
            Default ``"auto"``.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("linear_cross_entropy", normalization="sequence")
        >>> h, w = torch.zeros(2, 3, 4), torch.randn(8, 4)
        >>> loss(hidden=h, weight=w, target=torch.tensor([[1, 2, -100], [3, -100, -100]]))  # uniform: log 8
        tensor([2.0794, 2.0794])
    """

    family = "token"

    def __init__(
        self,
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        normalization: str = "token",
        chunk_size: int | None = None,
        impl: str = "auto",
        validate_args: bool = True,
    ) -> None:
        super().__init__(validate_args)
        self.ignore_index = check_int("ignore_index", ignore_index)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0, high_open=True)
        self.z_loss = check_number("z_loss", z_loss, low=0.0)
        self.softcap = None if softcap is None else check_number("softcap", softcap, low=0.0, low_open=True)
        self.normalization = check_choice("normalization", normalization, NORMALIZATIONS)
        self.chunk_size = None if chunk_size is None else check_int("chunk_size", chunk_size, low=1)
        self.impl = check_choice("impl", impl, LCE.IMPLS)

    def sample_mask(self, *, target: torch.Tensor, **_: torch.Tensor) -> torch.Tensor:
        return not_ignored(target, self.ignore_index).any(-1)

    def forward(
        self,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        target: torch.Tensor,
        bias: torch.Tensor | None = None,
        token_weight: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if isinstance(hidden, torch.Tensor) and hidden.ndim != 3:
            raise ValueError(f"`hidden` must be [N, T, H] (one row of tokens per sequence), got {list(hidden.shape)}")
        token = LCE.linear_cross_entropy(
            hidden,
            weight,
            target,
            bias,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            token_weight=token_weight,
            chunk_size=self.chunk_size,
            impl=self.impl,
            validate_args=self.validate_args,
        )
        return aggregate_tokens(token, not_ignored(target, self.ignore_index), self.normalization)
