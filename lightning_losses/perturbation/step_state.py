"""What the passes of one perturbed step share, and the saved copy of the weights they restore."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from lightning_losses.perturbation.sharding import ShardSum, local, shard_sum_for

__all__ = ["StepState", "saved_copy"]


@dataclass
class StepState:
    """What the passes of one perturbed step share (built after the first pass)."""

    forward_backward: Callable[[str], Tensor | None]
    names: list[str]
    params: list[Tensor]  # the parameters to perturb that got a gradient in the first pass
    zero_grad: Callable[[], None]
    ascent_ctx: Callable[[], Any]
    radius: float = 0.0
    step: int = 0  # the optimizer step (the "stochastic" direction's draw)
    perturbed: bool = False  # the weights were moved (a finite ascent gradient)
    inv_scale: Tensor | None = None
    frozen: Sequence[nn.Module] = ()
    stats: dict[str, Tensor] = field(default_factory=dict)
    first_grads: list[Tensor] | None = None  # LookSAM / descent rules: the unscaled gradient at w (local shards)
    shards: list[Tensor] = field(default_factory=list)  # the local shards of `params` (themselves when not sharded)
    shard_sum: ShardSum | None = None  # sums per-tensor local pieces over the shard groups (None: not sharded)
    descent_grad_norm: Tensor | None = None  # |.grad| at w + delta (loss scale included), from the cosine's sums
    delta: list[Tensor] | None = None  # statistics steps: the perturbation itself (local shards), for the cosine

    def __post_init__(self) -> None:
        self.shard_sum = shard_sum_for(self.params)
        # unsharded (the common case): the parameters themselves, without a DTensor test per tensor
        self.shards = (
            [p.detach() for p in self.params] if self.shard_sum is None else [local(p.detach()) for p in self.params]
        )

    @classmethod
    def after_first_pass(
        cls,
        named_params: Sequence[tuple[str, Tensor]],
        forward_backward: Callable[[str], Tensor | None],
        zero_grad: Callable[[], None] | None,
        ascent_ctx: Callable[[], Any],
    ) -> StepState:
        """Keep the parameters the first pass gave a gradient (a skipped micro-batch leaves none)."""
        kept = [(n, p) for n, p in named_params if p.grad is not None]
        names, params = [n for n, _ in kept], [p for _, p in kept]
        if zero_grad is None:

            def zero_grad() -> None:
                for p in params:
                    p.grad = None

        return cls(forward_backward, names, params, zero_grad, ascent_ctx)


def saved_copy(params: list[Tensor], buffers: list[Tensor] | None) -> list[Tensor]:
    """Copies of ``params`` in ``buffers`` kept between steps (no allocation per step; new buffers when the
    parameters' shapes, dtypes or devices changed). Returns the buffers holding the copies."""
    if (
        buffers is None
        or len(buffers) != len(params)
        or any(b.shape != p.shape or b.dtype != p.dtype or b.device != p.device for b, p in zip(buffers, params))
    ):
        buffers = [torch.empty_like(p) for p in params]
    if buffers:
        with torch.no_grad():
            torch._foreach_copy_(buffers, [p.detach() for p in params])
    return buffers
