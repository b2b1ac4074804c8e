r"""The phases of a perturbed step after its first pass (steps 2 to 4 of
:meth:`~lightning_losses.perturbation.Perturbation.step`), mixed into
:class:`~lightning_losses.perturbation.Perturbation`: the ascent to :math:`w + \delta`, the descent pass there, the
exact restore of :math:`w` and the step's statistics. They read the engine's configuration and its saved weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from lightning_losses.distributed import global_mean, is_distributed
from lightning_losses.perturbation import functional as F
from lightning_losses.perturbation import looksam
from lightning_losses.perturbation.gradient_rules import DESCENT_RULES, DIRECTION_RULES
from lightning_losses.perturbation.passes import restored_buffers
from lightning_losses.perturbation.sharding import grad_shard, local
from lightning_losses.perturbation.step_state import StepState

__all__ = ["KEEP_DELTA_NUMEL", "StepPhases"]

#: on a statistics step, the perturbation of at most this many elements (local) is kept for the cosine: no
#: subtraction kernel per tensor, for one parameter-sized buffer more during the descent (larger: w + delta - w)
KEEP_DELTA_NUMEL = 1 << 22


class StepPhases:
    """The ascent, descent, restore and statistics phases of :class:`~lightning_losses.perturbation.Perturbation`
    (a mixin: the attributes below are the engine's, set in its constructor)."""

    rule: str
    radius_mode: str
    scaling: str | None
    eta: float
    inner_lr: float
    inner_steps: int
    reuse_alpha: float | None
    direction: str
    descent: str
    descent_weight: float
    decouple: bool
    pending: tuple[list[Tensor], list[Tensor]] | None
    sync_ascent: bool
    eps: float
    skipped: int
    orthogonal: list[Tensor] | None
    last_stats: dict[str, Tensor]
    collect_stats: bool
    _saved: list[Tensor] | None
    _frozen_buffers: dict[int, Tensor]

    def scale_mask(self, names: Sequence[str]) -> list[bool] | None:
        """Which of ``names`` the ``"adaptive"`` scaling applies to (defined by the engine)."""
        raise NotImplementedError

    def _frozen_bn(self, modules: Sequence[nn.Module]) -> contextlib.AbstractContextManager:
        """:func:`frozen_batchnorm` that also exposes the snapshots to :meth:`original_weights`."""
        return restored_buffers(modules, self._frozen_buffers) if modules else contextlib.nullcontext()

    def _ascend(self, run: StepState) -> bool:
        r"""Move the weights to :math:`w + \delta` (``inner_steps`` ascent steps from the gradient in ``.grad``, the
        later ones re-evaluated at the current :math:`w + \delta`); ``.grad`` ends cleared. Returns whether the
        weights were perturbed (``False``: a non-finite ascent gradient, counted in :attr:`skipped`)."""
        params, stats = run.params, run.stats
        mask = self.scale_mask(run.names)
        delta: list[Tensor] | None = None
        for i in range(self.inner_steps):
            # the ascent gradients are discarded after this iteration: unscaled and turned into the step in their
            # own storage (no per-step allocation of a parameter-sized list)
            # not sharded (`shard_sum` is None): no parameter, hence no gradient, is a DTensor
            grads = (
                [p.grad.detach() for p in params] if run.shard_sum is None else [grad_shard(p).detach() for p in params]
            )
            if run.inv_scale is not None:
                torch._foreach_mul_(grads, run.inv_scale.to(grads[0].device))
            norms = F.tensor_norms(grads, run.shard_sum)
            gnorm = torch.linalg.vector_norm(norms) if grads else torch.zeros(())
            radius = run.radius
            if i == 0:
                stats["grad_norm"] = gnorm
                if self.reuse_alpha is not None or self.descent != "perturbed":
                    run.first_grads = [g.clone() for g in grads]
            if not bool(torch.isfinite(gnorm)):  # the one host sync of a step
                self.skipped += 1
                return False
            if i == 0 and self.direction != "gradient":  # FriendlySAM / ESAM: another direction than g
                radius = radius * DIRECTION_RULES[self.direction].transform(self, grads, run.step)
                norms = F.tensor_norms(grads, run.shard_sum)
            with torch.no_grad():
                delta = F.ascent_step(
                    delta,
                    grads,
                    self._saved,
                    rule=self.rule,
                    radius_mode=self.radius_mode,
                    radius=radius,
                    scaling=self.scaling,
                    eta=self.eta,
                    scale_mask=mask,
                    step_size=F.ASCENT_RULES[self.rule].step_size(self.inner_lr, self.inner_steps),
                    eps=self.eps,
                    grad_norms=norms,
                    inplace=True,
                    shard_sum=run.shard_sum,
                )
                if i > 0:  # the first step starts from w itself
                    torch._foreach_copy_(run.shards, self._saved)
                if any(d.dtype != p.dtype for d, p in zip(delta, run.shards)):
                    delta = [d.to(p.dtype) for d, p in zip(delta, run.shards)]
                torch._foreach_add_(run.shards, delta)
                if self.collect_stats:
                    stats["norm"] = F.global_norm(delta, run.shard_sum)
                    if sum(d.numel() for d in delta) <= KEEP_DELTA_NUMEL:  # in the ascent gradients' storage
                        run.delta = delta
            grads = None  # release the old gradients before the next backward (cache-friendly reuse)
            run.zero_grad()
            if i + 1 < self.inner_steps:
                with run.ascent_ctx(), self._frozen_bn(run.frozen):
                    run.forward_backward("ascent")
        return True

    def _descend(self, run: StepState, perturbed: bool) -> Tensor | None:
        r"""The full loss and its gradient at the current weights (:math:`w + \delta`, or :math:`w` itself when the
        ascent was skipped), BatchNorm statistics frozen. Returns that loss."""
        if not perturbed:
            with torch.no_grad():
                torch._foreach_copy_(run.shards, self._saved)
            run.zero_grad()
            run.stats["norm"] = torch.zeros(())
        with self._frozen_bn(run.frozen):
            loss = run.forward_backward("descent")
        if perturbed and self.collect_stats:  # before `_restore`: delta = params - saved where it was not kept
            grads = [grad_shard(p) for p in run.params]
            delta, run.delta = run.delta, None
            if delta is not None and any(g is not None and g.data_ptr() == d.data_ptr() for g, d in zip(grads, delta)):
                delta = None  # the descent's gradients took its storage back (DDP's bucket views)
            # |delta| is the ascent's `norm`: only the dot products and |g_p| are computed (one collective if sharded)
            cos, run.descent_grad_norm = F.delta_grad_statistics(
                run.shards, self._saved, grads, run.shard_sum, delta_norm=run.stats["norm"], delta=delta
            )
            run.stats["cos_delta_grad"] = cos
        return loss

    def _restore(self, shards: list[Tensor]) -> None:
        """Put the saved :math:`w` back (exact copy, into the local shards) and leave the perturbed state."""
        with torch.no_grad():
            torch._foreach_copy_(shards, self._saved)
        self._saved = None

    def _combine(self, run: StepState) -> None:
        r"""The descent rule (GSAM, WSAM): replace :math:`g_p` in ``.grad`` by its combination with :math:`g` (kept in
        ``run.first_grads``, unscaled; averaged over ranks first unless it already is: ``sync_ascent`` or shards)."""
        combine = DESCENT_RULES[self.descent].combine
        if combine is None or not run.perturbed or run.first_grads is None or not run.params:
            return
        if any(p.grad is None for p in run.params):
            return
        first = run.first_grads
        if run.shard_sum is None and not self.sync_ascent:
            first = looksam.mean_over_ranks(first)
        final = [grad_shard(p) for p in run.params]
        if run.inv_scale is not None:  # .grad carries the loss scale: bring g to it
            first = torch._foreach_div(first, run.inv_scale.to(final[0].device))
        with torch.no_grad():
            if self.decouple:  # WSAM decoupled: g to the optimizer, a (g_p - g) (unscaled) applied after its step
                a = self.descent_weight / (1.0 - self.descent_weight)
                terms = torch._foreach_sub([f.detach() for f in final], first)
                torch._foreach_mul_(terms, a if run.inv_scale is None else run.inv_scale.to(terms[0].device) * a)
                self.pending = (list(run.params), list(terms))
                torch._foreach_copy_(final, first)
                return
            new = combine(first, [f.detach() for f in final], self.descent_weight, self.eps, run.shard_sum)
            torch._foreach_copy_(final, new)

    def _finish(self, run: StepState, loss0: Tensor | None, loss1: Tensor | None) -> None:
        """The descent rule, LookSAM's stored direction and the step's statistics (:attr:`last_stats`; the perturbed
        gradient's norm is that of :math:`g_p`, before the descent rule)."""
        params, stats, inv_scale = run.params, run.stats, run.inv_scale
        if self.collect_stats and params and all(p.grad is not None for p in params):
            g1 = run.descent_grad_norm  # from the cosine's sums when the step was perturbed
            if g1 is None:
                g1 = F.global_norm([grad_shard(p) for p in params], run.shard_sum)
            stats["grad_norm_perturbed"] = g1 if inv_scale is None else g1 * inv_scale.to(g1.device)
        self._combine(run)
        if self.reuse_alpha is not None and run.first_grads is not None and params:
            self.orthogonal = looksam.orthogonal(run.first_grads, params, inv_scale, run.shard_sum)
        if self.collect_stats:
            if loss0 is not None and loss1 is not None:
                # each rank's losses are of its own batch: the mean over the data-parallel group is the global
                # batch's (k ranks = 1 process; with a per-replica ascent, the mean m-sharpness); one all-reduce
                sharpness = local(loss1.detach() - loss0.detach())  # a replicated DTensor (tensor parallel): its value
                if is_distributed():
                    sharpness = global_mean(sharpness)
                stats["sharpness"] = sharpness.float()
            stats["radius"] = torch.tensor(run.radius)
            stats["skipped"] = torch.tensor(float(self.skipped))
        self.last_stats = stats
