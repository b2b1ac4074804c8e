r"""First-order flatness on the engine: the presets ``gam`` and ``fad`` (four forward-backward passes a perturbed step).

First-order flatness (Zhang et al., CVPR 2023) is :math:`R^{(1)}_\rho(w) = \rho \max_{\|\epsilon\| \le \rho}
\|\nabla L(w + \epsilon)\|`. Its gradient needs Hessian-vector products; both presets approximate them by finite
differences of gradients, :math:`\nabla \|\nabla L(w)\| \approx (\nabla L(w + \rho' \hat g) - \nabla L(w))/\rho'`
(:math:`\hat g = g/\|g\|`). A perturbed step evaluates four gradients of the same batch:

* :math:`g_0 = \nabla L(w)` (the engine's first pass, the *ascent* loss);
* :math:`g_1 = \nabla L(w_1)`, :math:`w_1 = w + \rho'\,g_0/\|g_0\|` (SAM's point: the engine's ascent and descent);
* :math:`g_2 = \nabla L(w_2)`, :math:`w_2 = w + \rho\,d/\|d\|` with :math:`d = g_1 - g_0` (the direction in which
  the gradient norm grows: :math:`d \approx \rho' H \hat g_0 = \rho' \nabla\|\nabla L(w)\|`);
* :math:`g_3 = \nabla L(w_3)`, :math:`w_3 = w_2 + \rho'\,g_2/\|g_2\|` (so :math:`g_3 - g_2 \approx \rho'
  \nabla\|\nabla L(w_2)\|`, the gradient of :math:`R^{(1)}` up to :math:`\rho/\rho'`);

then each preset's rule (:class:`GAMPerturbation`, :class:`FADPerturbation`) forms the descent gradient. The last
three passes are the engine's ``"descent"`` passes (full loss, synchronised under DDP, BatchNorm statistics frozen);
:math:`w` is restored exactly afterwards.

DDP: norms and inner products are global. With ``sync_ascent=False`` only the first ascent (from :math:`g_0`) is per
replica; :math:`g_0` is then averaged over ranks (one all-reduce) before it enters :math:`d` and the descent rule, so
:math:`w_2`, :math:`w_3` and the descent gradient are the same on every rank. With ``sync_ascent=True`` two processes
equal one on the global batch. A non-finite :math:`g_0` (the engine's skipped perturbation) still runs every pass (the
same collectives on every rank) at :math:`w` and leaves :math:`g_1` as the descent gradient.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor

from lightning_losses._validation import check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import looksam
from lightning_losses.perturbation.engine import Perturbation
from lightning_losses.perturbation.gradient_rules import inner_product
from lightning_losses.perturbation.norms import global_norm
from lightning_losses.perturbation.sharding import grad_shard
from lightning_losses.perturbation.step_state import StepState

__all__ = ["FADPerturbation", "FirstOrderPerturbation", "GAMPerturbation"]


class FirstOrderPerturbation(Perturbation):
    r"""The four-pass step shared by ``gam`` and ``fad`` (the engine's options, one ascent step, no data
    selection); a subclass gives :meth:`fd_radius` (:math:`\rho'`), :meth:`norm_radius` (:math:`\rho`) and
    :meth:`descent_rule`."""

    own: tuple[str, ...] = ()  #: the subclass's own arguments (shown in ``repr``)

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        if self.inner_steps != 1:
            raise ConfigurationError(
                f"`inner_steps` must be 1 for the first-order presets (their ascents are fixed), got {self.inner_steps}"
            )
        if self.select_fraction != 1.0:
            raise ConfigurationError(
                f"`select_fraction` (ESAM's data selection) does not apply to the first-order presets, got "
                f"select_fraction={self.select_fraction!r}"
            )
        if self.ascent_terms is not None:
            raise ConfigurationError(
                f"`ascent_terms` does not apply to the first-order presets (their finite differences take every "
                f"gradient of one loss), got ascent_terms={self.ascent_terms!r}"
            )
        self._grads: tuple[list[Tensor], list[Tensor], list[Tensor]] | None = None  # g0, g1, g2 within a step

    def fd_radius(self, radius: float) -> float:
        r""":math:`\rho'`, the radius of the SAM ascents and the finite differences (``radius``: the engine's)."""
        return radius

    def norm_radius(self, radius: float) -> float:
        r""":math:`\rho`, the radius of the ascent of the gradient norm."""
        return radius

    def descent_rule(self, g0: list[Tensor], g1: list[Tensor], g2: list[Tensor], g3: list[Tensor], run: StepState):
        """The descent gradient from the four gradients (all at the loss scale ``.grad`` carries)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ the engine's phases, extended
    def _ascend(self, run: StepState) -> bool:
        if self.reuse_alpha is None:  # the engine keeps g (unscaled) itself only for LookSAM or a descent rule
            grads = [(p.grad if run.shard_sum is None else grad_shard(p)).detach().clone() for p in run.params]
            if run.inv_scale is not None:
                torch._foreach_mul_(grads, run.inv_scale.to(grads[0].device))
            run.first_grads = grads
        return super()._ascend(run)

    def _descend(self, run: StepState, perturbed: bool) -> Tensor | None:
        loss = super()._descend(run, perturbed)  # g1 at w + rho' g0/|g0| in .grad
        g0 = run.first_grads or []
        if run.shard_sum is None and not self.sync_ascent:
            g0 = looksam.mean_over_ranks(g0)  # every rank, also after a skipped ascent: the same collectives
        if run.inv_scale is not None and g0:  # to the loss scale .grad carries
            g0 = torch._foreach_div(g0, run.inv_scale.to(g0[0].device))
        g1 = self._grads_now(run)
        move = perturbed and g1 is not None
        if move:  # w2 = w + rho d/|d|, d = g1 - g0
            self._move(run, torch._foreach_sub(g1, g0), self.norm_radius(run.radius), start=self._saved)
        g2 = self._pass(run)
        if move and g2 is not None:  # w3 = w2 + rho' g2/|g2|
            self._move(run, g2, self.fd_radius(run.radius))
        g3 = self._pass(run, keep=False)
        if g1 is None or g2 is None or g3 is None:  # a pass's `training_step` returned None: no descent gradient
            run.zero_grad()
            return loss
        self._grads = (g0, g1, g2)
        return loss

    def _pass(self, run: StepState, keep: bool = True) -> list[Tensor] | None:
        run.zero_grad()
        with self._frozen_bn(run.frozen):
            run.forward_backward("descent")
        return self._grads_now(run, keep)

    @staticmethod
    def _grads_now(run: StepState, keep: bool = True) -> list[Tensor] | None:
        """Copies of the gradients in ``.grad`` (``keep=False``: the gradients themselves); ``None`` if a parameter
        has none."""
        grads = [grad_shard(p) for p in run.params]
        if any(g is None for g in grads):
            return None
        return [g.detach().clone() for g in grads] if keep else [g.detach() for g in grads]

    def _move(self, run: StepState, direction: list[Tensor], radius: float, start: list[Tensor] | None = None):
        r"""Weights to ``start`` (default: where they are) :math:`+\ radius \cdot direction/(\|direction\| + eps)`."""
        scale = radius / (global_norm(direction, run.shard_sum).double() + self.eps)
        with torch.no_grad():
            step = torch._foreach_mul(direction, scale.to(direction[0].dtype))
            if any(s.dtype != p.dtype for s, p in zip(step, run.shards)):
                step = [s.to(p.dtype) for s, p in zip(step, run.shards)]
            if start is not None:
                torch._foreach_copy_(run.shards, start)
            torch._foreach_add_(run.shards, step)

    def _combine(self, run: StepState) -> None:
        grads, self._grads = self._grads, None
        if grads is None or not run.params or any(p.grad is None for p in run.params):
            return
        final = [grad_shard(p) for p in run.params]
        g0, g1, g2 = grads
        with torch.no_grad():
            new = self.descent_rule(g0, g1, g2, [f.detach() for f in final], run) if run.perturbed else g1
            torch._foreach_copy_(final, new)

    def __repr__(self) -> str:
        base = super().__repr__()[len("Perturbation(") : -1]
        own = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.own)
        return f"{type(self).__name__}({base}, {own})"


def _with_engine_signature(cls: type[FirstOrderPerturbation]) -> type[FirstOrderPerturbation]:
    """Give ``cls.__init__`` the engine's arguments followed by its own (what the presets validate against)."""
    engine = list(inspect.signature(Perturbation.__init__).parameters.values())
    own = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name in cls.own]
    cls.__init__.__signature__ = inspect.Signature([*engine, *own])  # type: ignore[attr-defined]
    return cls


@_with_engine_signature
class GAMPerturbation(FirstOrderPerturbation):
    r"""GAM's descent rule, as the authors' released (first-order, "accelerated") form computes it:
    :math:`h = \alpha g_1 + (1-\alpha) g_3`, :math:`p = g_0 + (1-\beta) g_2`, descent gradient
    :math:`h - \gamma\,(p - \frac{\langle p, h\rangle}{\|h\|^2 + \varepsilon} h)` (the part of :math:`p` orthogonal
    to :math:`h` removed, as GSAM does). The engine's radius is :math:`\rho'` (``rho``); ``norm_rho`` is :math:`\rho`.
    """

    own = ("norm_rho", "alpha", "beta", "gamma")

    def __init__(
        self, norm_rho: float = 0.2, alpha: float = 0.6, beta: float = 0.5, gamma: float = 0.03, **options: Any
    ) -> None:
        super().__init__(**options)
        self.norm_rho = check_number("norm_rho", norm_rho, low=0.0)
        self.alpha = check_number("alpha", alpha, low=0.0, high=1.0)
        self.beta = check_number("beta", beta, low=0.0, high=1.0)
        self.gamma = check_number("gamma", gamma, low=0.0)

    def norm_radius(self, radius: float) -> float:
        return self.norm_rho

    def descent_rule(self, g0, g1, g2, g3, run):
        h = torch._foreach_add(torch._foreach_mul(g1, self.alpha), g3, alpha=1.0 - self.alpha)
        p = torch._foreach_add(g0, g2, alpha=1.0 - self.beta)
        coef = inner_product(p, h, run.shard_sum) / (global_norm(h, run.shard_sum).double() ** 2 + self.eps)
        orthogonal = torch._foreach_add(p, torch._foreach_mul(h, coef.to(h[0].dtype)), alpha=-1.0)
        return list(torch._foreach_add(h, orthogonal, alpha=-self.gamma))


@_with_engine_signature
class FADPerturbation(FirstOrderPerturbation):
    r"""FAD's descent gradient, the gradient of :math:`L + \alpha R^{(0)}_\rho + \beta R^{(1)}_\rho` with one radius
    :math:`\rho = \rho'` for the balls and the finite differences: :math:`g_0 + \alpha (g_1 - g_0) + \beta (g_3 - g_2)`
    (:math:`\nabla R^{(0)} \approx g_1 - g_0`, SAM's; :math:`\nabla R^{(1)} = \rho \nabla\|\nabla L(w_2)\| \approx
    g_3 - g_2`)."""

    own = ("alpha", "beta")

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, **options: Any) -> None:
        super().__init__(**options)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.beta = check_number("beta", beta, low=0.0)

    def descent_rule(self, g0, g1, g2, g3, run):
        zeroth = torch._foreach_add(g0, torch._foreach_sub(g1, g0), alpha=self.alpha)
        return list(torch._foreach_add(zeroth, torch._foreach_sub(g3, g2), alpha=self.beta))
