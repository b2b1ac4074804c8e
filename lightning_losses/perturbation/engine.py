r"""The weight-perturbation engine: one implementation behind SAM, ASAM, Adversarial Model Perturbation and AWP.

A perturbed step (see :meth:`Perturbation.step`; steps 2, 3 and 4 are its ``_ascend``, ``_descend`` and ``_restore``,
in :mod:`~lightning_losses.perturbation.step_phases`):

1. gradient of the *ascent* loss at :math:`w` (under DDP's ``no_sync`` unless ``sync_ascent``: per-replica ascent);
2. :math:`\delta` from that gradient (:func:`~lightning_losses.perturbation.functional.ascent_step`), repeated
   ``inner_steps`` times with the gradient re-evaluated at :math:`w + \delta`;
3. the *full* loss and its gradient at :math:`w + \delta` (synchronised; BatchNorm running statistics frozen);
4. :math:`w` restored from a saved copy (exact, in a ``finally``), leaving the descent gradient in ``.grad`` for the
   optimizer. The engine never touches the optimizer or its state.

A non-finite ascent gradient skips the perturbation (:math:`\delta = 0`, counted in :attr:`Perturbation.skipped`);
the descent pass still runs so every rank issues the same collectives. Deciding this costs one host sync per step.

Sharded parameters (``DTensor``: FSDP2 through Lightning's ``ModelParallelStrategy``) are perturbed through their
local shards (:mod:`~lightning_losses.perturbation.sharding`): norms are those of the full tensors (local sums of
squares all-reduced over each parameter's shard group), the ascent is applied in place on the shards, and the
originals are saved and restored per shard. The gradients FSDP2 leaves after ``backward`` are already reduced over
the data-parallel group, so the ascent is always the synchronised one there (``sync_ascent=True``; the callback
refuses ``sync_ascent=False`` under a sharding strategy).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_losses._validation import check_state_keys
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import looksam
from lightning_losses.perturbation.bayes_step import BAYES, bayes_step
from lightning_losses.perturbation.options import PerturbationOptions
from lightning_losses.perturbation.passes import batchnorm_modules, frozen_batchnorm
from lightning_losses.perturbation.selection import select_parameters
from lightning_losses.perturbation.sharding import to_global
from lightning_losses.perturbation.step_phases import StepPhases
from lightning_losses.perturbation.step_state import StepState, saved_copy

__all__ = ["PHASES", "Perturbation", "batchnorm_modules", "frozen_batchnorm", "select_parameters"]

#: the passes a ``forward_backward(phase)`` callable is asked for.
PHASES = ("first", "ascent", "descent", "plain")


class Perturbation(PerturbationOptions, StepPhases):
    r"""A configured perturbation rule (built by the presets :func:`~lightning_losses.perturbation.sam` etc.).

    Args:
        rule: ``"normalise"`` (SAM-like) or ``"clip"`` (Adversarial Model Perturbation).
        radius_mode: ``"global"``, ``"per_tensor"`` or ``"layer_relative"`` (AWP).
        radius: :math:`\rho` / :math:`\epsilon` / :math:`\gamma`: a number or a schedule mapping over optimizer steps
            (``{name: linear, start: 0.0, end: 0.05, steps: 1000}``). Default 0.05.
        scaling: ``None``, ``"adaptive"`` (ASAM, :math:`T = |w| + \eta`) or ``"adaptive_p2"`` (:math:`T = |w|`).
        eta: :math:`\eta` of ``"adaptive"``. Default 0.01.
        scale_params: globs of the parameter names ``"adaptive"`` scales (others get :math:`T = 1`). Default
            ``["*weight*"]`` (the ASAM authors' rule: names containing ``weight``).
        inner_lr: :math:`\zeta`, the step of the ``"clip"`` rule. Default 1.0.
        inner_steps: ascent steps (``"normalise"`` takes steps of :math:`R/N` and projects). Default 1.
        params / exclude / min_ndim: which parameters are perturbed (:func:`select_parameters`).
        ascent_terms: objective term names whose gradient drives the ascent (others are detached in the ascent
            passes; the descent uses the full loss), e.g. ``["task"]`` as SDAT. Default: all terms.
        sync_ascent: under DDP, all-reduce the ascent gradient (one :math:`\epsilon` from the global batch) instead of
            per-replica ascent (the SAM paper's m-sharpness with m = per-device batch). Default False.
        freeze_bn: keep BatchNorm running statistics unchanged by the perturbed passes. Default True.
        every_n_steps: perturb on every n-th optimizer step only; plain steps in between (cost ~ 1 + 1/n). Default 1.
        probability: perturb on a step with this probability (randomised SAM); the draw is a pure function of
            ``seed`` and the step, identical on every rank and after a resume. Default 1.
        reuse_alpha: LookSAM (Liu et al. 2022): on plain steps between perturbed ones (``every_n_steps > 1``) add
            :math:`\alpha \|g\|/\|g_v\| g_v`, the stored component of the SAM gradient orthogonal to :math:`g`.
            ``None`` (default) turns it off.
        warmup_epochs: no perturbation before this epoch (AWP). Default 0.
        direction: what the ascent normalises (:data:`~lightning_losses.perturbation.gradient_rules.DIRECTION_RULES`):
            ``"gradient"`` (default), ``"friendly"`` (FriendlySAM: :math:`g - \sigma m`), ``"stochastic"`` (ESAM:
            each tensor kept with probability ``keep_probability``, radius divided by it).
        sigma / lmbda: FriendlySAM's :math:`\sigma` and EMA decay :math:`\lambda` (``direction="friendly"`` only).
            Default 1.0 and 0.9.
        keep_probability: ESAM's :math:`\beta` (``direction="stochastic"`` only). Default 1.0.
        descent: the gradient left for the optimizer
            (:data:`~lightning_losses.perturbation.gradient_rules.DESCENT_RULES`): ``"perturbed"`` (:math:`g_p`,
            default), ``"surrogate_gap"`` (GSAM) or ``"weighted"`` (WSAM).
        decouple: WSAM's decoupled form (:mod:`~lightning_losses.perturbation.decoupled`): ``.grad`` holds
            :math:`g` and the sharpness term is applied after ``optimizer.step()`` as a plain SGD step
            (``descent="weighted"`` only; the optimizer must be known: the callback's, or ``perturbed_backward(...,
            optimizer=opt)``). Default False.
        select_fraction: ESAM's data selection :math:`\gamma`: the descent pass keeps the
            :math:`\lfloor\gamma B\rfloor` samples whose loss rose most
            (:mod:`~lightning_losses.perturbation.data_selection`; needs per-sample losses: ``compute_loss`` under
            the callback, a loss function returning ``[N]`` in :func:`perturbed_backward`). Default 1 (all).
        descent_weight: GSAM's :math:`\alpha` (:math:`\ge 0`) or WSAM's :math:`\gamma` (in :math:`[0, 1)`).
            Default 0.
        seed: seed of ``probability`` and of the ``"stochastic"`` direction's draws. Default 0.
        eps: added to norms in denominators. Default 1e-12.
    """

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped": self.skipped,
            "perturbed_steps": self.perturbed_steps,
            "calls": self.calls,
            "orthogonal": self.orthogonal,
            "direction_state": dict(self.direction_state),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        keys = ("skipped", "perturbed_steps", "calls", "orthogonal", "direction_state")
        check_state_keys(type(self).__name__, state, keys, optional=("direction_state",))
        self.direction_state = dict(state.get("direction_state") or {})
        self.skipped = int(state["skipped"])
        self.perturbed_steps = int(state["perturbed_steps"])
        self.calls = int(state["calls"])
        self.orthogonal = state["orthogonal"]

    @property
    def perturbed(self) -> bool:
        """True while the weights are away from their saved originals (inside a step)."""
        return self._saved is not None

    def original_weights(self) -> dict[int, Tensor]:
        """``id(tensor) -> saved original`` while :attr:`perturbed` (for checkpoints written mid-step): the perturbed
        parameters and, during a perturbed pass with ``freeze_bn``, the BatchNorm buffers it is changing."""
        if self._saved is None:
            return {}
        saved = {id(p): to_global(s, p) for p, s in zip(self._active_params, self._saved)}
        return {**self._frozen_buffers, **saved}

    # ------------------------------------------------------------------ the step
    def step(
        self,
        forward_backward: Callable[[str], Tensor | None],
        named_params: Sequence[tuple[str, Tensor]],
        *,
        step: int = 0,
        epoch: int = 0,
        zero_grad: Callable[[], None] | None = None,
        no_sync: Callable[[], Any] | None = None,
        grad_scale: Tensor | float | None = None,
        bn_modules: Sequence[nn.Module] = (),
        skip_on_none: bool = False,
        optimizer: Any = None,
    ) -> Tensor | None:
        """Run one (possibly perturbed) step and leave the descent gradient in ``.grad``; weights end as they began.

        Args:
            forward_backward: ``fn(phase) -> loss`` runs forward and backward at the current weights: ``"first"``
                (ascent loss at :math:`w`; may add onto gradients already there, e.g. accumulated micro-batches),
                ``"ascent"`` (ascent loss, gradients zeroed before), ``"descent"`` (full loss, gradients zeroed
                before), ``"plain"`` (an unperturbed step: full loss, once). It returns the detached loss or None.
            named_params: the ``(name, parameter)`` pairs to perturb (see :meth:`select`).
            step / epoch: the optimizer step about to be taken and the epoch (schedules, ``every_n_steps``).
            zero_grad: clears every gradient the optimizer sees (default: ``p.grad = None`` on ``named_params``).
            no_sync: DDP's ``model.no_sync`` (used for the ascent passes unless ``sync_ascent``).
            grad_scale: the loss scale the gradients carry (GradScaler), divided out before the ascent.
            bn_modules: BatchNorm layers whose running statistics the perturbed passes must not change.
            skip_on_none: a first pass that returns ``None`` skips the step's perturbation (the caller will not take
                the optimizer step: a Lightning ``training_step`` that returned ``None`` under a GradScaler).
            optimizer: the optimizer about to step (``rule="bayes"``, the ``bsam`` preset: its
                :class:`~lightning_losses.perturbation.bsam.BSAM`; :mod:`~lightning_losses.perturbation.bayes_step`).

        A first pass that leaves no gradient on ``named_params`` (every ``training_step`` of the step returned
        ``None``: Lightning's skipped batch) has nothing to perturb: the step is left as it is, not counted in
        :attr:`perturbed_steps`, with no statistics.

        Returns:
            The loss of the first pass (at :math:`w`).
        """
        self.pending = None  # a term the optimizer did not apply (a skipped step) is dropped
        if not self.is_active(step, epoch):
            loss = forward_backward("plain")
            if self.reuse_alpha is not None and self.orthogonal is not None:
                looksam.extrapolate([p for _, p in named_params], self.orthogonal, self.reuse_alpha, self.eps)
            self.last_stats = {}
            return loss
        ascent_ctx = (no_sync or contextlib.nullcontext) if not self.sync_ascent else contextlib.nullcontext
        if self.rule == BAYES:
            return bayes_step(
                self,
                forward_backward,
                optimizer,
                step=step,
                zero_grad=zero_grad,
                ascent_ctx=ascent_ctx,
                grad_scale=grad_scale,
                bn_modules=bn_modules,
                skip_on_none=skip_on_none,
            )
        with ascent_ctx():
            loss0 = forward_backward("first")
        run = StepState.after_first_pass(named_params, forward_backward, zero_grad, ascent_ctx)
        if run.shard_sum is not None and not self.sync_ascent:  # same decision on every rank: all hold shards
            raise ConfigurationError(
                "sharded parameters (FSDP2 DTensors) need `sync_ascent=True`, got sync_ascent=False: their gradients "
                "are reduced over the data-parallel group in `backward`, so a per-replica ascent cannot be formed"
            )
        if not run.params or (skip_on_none and loss0 is None):  # a skipped batch: nothing to perturb
            self.last_stats = {}
            return loss0
        run.radius, run.step = float(self.radius(step)), step
        run.inv_scale = None if grad_scale is None else 1.0 / torch.as_tensor(grad_scale, dtype=torch.float32)
        run.frozen = bn_modules if self.freeze_bn else ()
        self._active_params = run.params
        with torch.no_grad():
            self._saved = self._buffers = saved_copy(run.shards, self._buffers)
        try:
            perturbed = self._ascend(run)
            loss1 = self._descend(run, perturbed)
        finally:
            self._restore(run.shards)
        self.perturbed_steps += perturbed
        run.perturbed = perturbed
        self._finish(run, loss0, loss1)
        return loss0

    def __repr__(self) -> str:
        keys = ["rule", "radius_mode", "radius", "scaling", "inner_steps", "sync_ascent", "every_n_steps"]
        keys += [k for k, v in (("direction", "gradient"), ("descent", "perturbed")) if getattr(self, k) != v]
        return f"Perturbation({', '.join(f'{k}={getattr(self, k)!r}' for k in keys)})"
