r"""⊥Grad: the orthogonal gradient of the StableMax paper, as a step option (callback ``perp_grad``).

Prieto, Barsbey, Mediano, Birdal, *Grokking at the Edge of Numerical Stability* (ICLR 2025): once a model fits its
training data, the gradient aligns with the weights ("naïve loss minimisation": scaling the logits up), which drives
softmax towards floating-point collapse. ⊥Grad removes that direction before the optimizer step. Per parameter tensor
:math:`w` (flattened) with gradient :math:`g`, as in the authors' ``orthograd.py``:

.. math:: g_\perp = g - \frac{w^\top g}{w^\top w + \varepsilon}\,w,\qquad
    g \leftarrow g_\perp\,\frac{\lVert g\rVert}{\lVert g_\perp\rVert + \varepsilon},\qquad \varepsilon = 10^{-30}

(the rescale to the original norm is the authors' code; the paper's equation is the projection alone:
``rescale=False``). Per tensor, not over the whole model: each tensor keeps its own gradient norm, so the global
gradient norm is unchanged too.

Where it acts: ``on_before_optimizer_step``, i.e. on the **final descent gradient** of the step:

* after the whole closure: under a perturbation callback (SAM, ASAM, AMP, AWP, ...) that is the gradient at
  :math:`w + \epsilon`, and the weights are already restored, so it is projected against :math:`w` (the callbacks'
  list order does not matter);
* after the GradScaler's ``unscale_`` (``16-mixed``), on the summed gradient of every micro-batch
  (``accumulate_grad_batches``), and after DDP's all-reduce (DDP reduces in ``backward``): every rank projects the
  same gradient against the same weights, no communication;
* not WSAM's decoupled form (``decouple=True``, its default): its sharpness term is applied after the optimizer
  step, outside the gradient, so ``setup`` refuses it (``decouple=False`` puts the whole term in the gradient);
* **before gradient clipping** (Lightning clips right after this hook): norm clipping sees the same global norm as
  without ⊥Grad (each tensor's norm is kept), value clipping acts on :math:`g_\perp`.

FSDP2 / tensor parallelism: a parameter's gradient is a ``DTensor`` shard; the three per-tensor sums (and
:math:`\lVert g_\perp\rVert^2`) are sums of local pieces all-reduced over the groups that shard each tensor
(:class:`~lightning_losses.perturbation.sharding.ShardSum`: two all-reduces per step for the whole model), so each
tensor is projected as a whole. A tensor with a non-finite gradient is left unchanged (the GradScaler, if any, then
skips the step as usual). Dot products are accumulated in at least float32.

Stateless: nothing is saved in checkpoints (no ``state_dict``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lightning_losses._validation import check_number
from lightning_losses.callbacks import CALLBACKS, step_logs_due
from lightning_losses.diagnostics import log_scalars
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation.sharding import grad_shard, local, shard_sum_for
from lightning_losses.strategies import check_strategy

__all__ = ["PerpGrad", "orthogonalize_gradients_"]

EPS = 1e-30  # the authors' guard in both denominators


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.promote_types(t.dtype, torch.float32)


@torch.no_grad()
def orthogonalize_gradients_(
    params: Iterable[torch.Tensor], *, rescale: bool = True, eps: float = EPS
) -> torch.Tensor | None:
    r"""Replace each parameter's gradient by :math:`g_\perp` (rescaled to :math:`\lVert g\rVert` when ``rescale``),
    in place; parameters without a gradient are skipped. Sharded (``DTensor``) parameters are projected as whole
    tensors (all-reduced sums).

    Returns:
        The fraction of the gradient's norm that was removed before the rescale,
        :math:`\sqrt{\sum_t (w_t^\top g_t)^2 / w_t^\top w_t} / \sqrt{\sum_t g_t^\top g_t}` over the finite tensors (a
        0-dim float64 tensor, no host sync), or ``None`` without any gradient.

    Example:
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
        >>> w.grad = torch.tensor([3.0, 4.0])
        >>> orthogonalize_gradients_([w])  # the [3, 0] along w is removed; [0, 4] rescaled to the norm 5
        tensor(0.6000, dtype=torch.float64)
        >>> w.grad
        tensor([0., 5.])
    """
    items = []
    for p in params:
        g = grad_shard(p)
        if g is not None:
            items.append((p, local(p), g))  # same shapes; not flattened (a copy would lose the in-place edit)
    if not items:
        return None
    reduce = shard_sum_for([p for p, _, _ in items])
    stats = torch.stack([_sums(w, g) for _, w, g in items])  # [n, 3]: w.w, w.g, g.g
    if reduce is not None:
        stats = reduce(stats)
    ww, wg, gg = stats.unbind(-1)
    finite = torch.isfinite(stats).all(-1)
    coef = torch.where(finite, wg / (ww + eps), torch.zeros_like(wg))
    perp_sq = []
    for (_, w, g), c in zip(items, coef.unbind()):
        work = g.to(_compute_dtype(g))  # g itself unless half precision
        work.sub_(w.to(work.dtype) * c.to(work.dtype))  # a 0-dim device tensor: no host sync
        perp_sq.append((work * work).sum().to(torch.float64))
        if work is not g:
            g.copy_(work)
    if rescale:
        pp = torch.stack(perp_sq).unsqueeze(-1)
        if reduce is not None:
            pp = reduce(pp)
        scale = torch.where(finite, gg.sqrt() / (pp.squeeze(-1).sqrt() + eps), torch.ones_like(gg))
        for (_, _, g), k in zip(items, scale.unbind()):
            g.mul_(k.to(g.dtype))
    removed = torch.where(finite, wg.square() / (ww + eps), torch.zeros_like(wg)).sum()
    return (removed / torch.where(finite, gg, torch.zeros_like(gg)).sum().clamp_min(eps)).sqrt()


def _sums(w: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``[w.w, w.g, g.g]`` of two local pieces of the same shape, accumulated in at least float32, as float64."""
    w, g = w.to(_compute_dtype(w)), g.to(_compute_dtype(g))
    return torch.stack([(w * w).sum(), (w * g).sum(), (g * g).sum()]).to(torch.float64)


@CALLBACKS.register("perp_grad", aliases=("orthograd",))
class PerpGrad(Callback):
    r"""⊥Grad (Prieto et al., *Grokking at the Edge of Numerical Stability*, ICLR 2025) as a Trainer callback: the
    gradient of every parameter the optimizer updates loses its component along that parameter, per tensor, before
    the optimizer step (:func:`orthogonalize_gradients_`; where it acts relative to perturbation, precision,
    accumulation, DDP and clipping: :mod:`lightning_losses.perturbation.perp_grad`). Stateless.

    Needs no :class:`~lightning_losses.LossesMixin`; works with any optimizer (the paper pairs it with SGD and
    AdamW) and composes with the perturbation callbacks (SAM etc.: the final descent gradient is projected against
    the restored weights). Logs ``perp_grad/removed_fraction`` (the norm fraction of the gradient that lay along the
    weights) on the Trainer's logging steps.

    Args:
        rescale: rescale each tensor's projected gradient to its original norm (the authors' code). Default True;
            ``False`` is the paper's bare projection.
        eps: the guard added to :math:`w^\top w` and :math:`\lVert g_\perp\rVert` ``> 0``. Default 1e-30 (authors').

    Example:
        >>> import lightning_losses as ll
        >>> type(ll.build_callbacks({"perp_grad": {}})[0]).__name__
        'PerpGrad'
    """

    def __init__(self, rescale: bool = True, eps: float = EPS) -> None:
        if not isinstance(rescale, bool):
            raise ConfigurationError(f"`rescale` must be a bool (True or False), got {rescale!r}")
        self.rescale = rescale
        self.eps = check_number("eps", eps, low=0.0, low_open=True)
        self._removed: torch.Tensor | None = None

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        check_strategy(
            trainer.strategy,
            type(self).__name__,
            deepspeed="DeepSpeed keeps the gradients in its own partitioned buffers, so there is no `param.grad` to "
            "project",
        )
        for cb in trainer.callbacks:
            engine = getattr(cb, "engine", None)
            if getattr(engine, "decouple", False):
                raise ConfigurationError(
                    f"PerpGrad cannot project the sharpness term of {type(cb).__name__} with `decouple=True`: that "
                    "term is applied after `optimizer.step()`, outside the gradient PerpGrad projects, so part of "
                    f"the update would keep its component along the weights; pass {type(cb).__name__}(..., "
                    "decouple=False) (the whole descent gradient is then projected) or drop PerpGrad"
                )

    @override
    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self._removed = orthogonalize_gradients_(params, rescale=self.rescale, eps=self.eps)

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._removed is not None and step_logs_due(trainer):
            log_scalars(trainer, pl_module, {"perp_grad/removed_fraction": self._removed})
        self._removed = None
