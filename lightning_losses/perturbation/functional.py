r"""Pure functions for weight perturbation: every transform the engine composes, on lists of tensors.

One generic step, :func:`ascent_step`, covers every preset; the named functions are that step with fixed knobs (so the
presets compose one implementation) and are what the parity tests check against the papers' formulas.

With the gradient :math:`g`, an optional element-wise scaling :math:`T` and a running perturbation :math:`\delta`:

* rule ``"normalise"`` (SAM, ASAM, AWP): :math:`\delta \leftarrow \delta + s\,R\,T^2 g / \|T g\|`;
* rule ``"clip"`` (Adversarial Model Perturbation): :math:`\delta \leftarrow \delta + s\,\zeta\,T^2 g`;

then :math:`\delta` is projected back onto the ball :math:`\|T^{-1}\delta\| \le R`. The norm and the radius are
``"global"`` (one L2 norm over all tensors, radius ``R``), ``"per_tensor"`` (each tensor on its own, radius ``R``) or
``"layer_relative"`` (each tensor on its own, radius :math:`R\,\|w_l\|`). :math:`T = |w| + \eta` on the tensors
``scale_mask`` selects and 1 elsewhere (``scaling="adaptive"``, Kwon et al. 2021), :math:`T = |w|` everywhere
(``"adaptive_p2"``, the davda54/sam ``adaptive=True`` variant) or :math:`T = 1` (``None``).

All functions are pure (inputs are not modified; :func:`ascent_step` can be asked to work in place) and use
``torch._foreach_*`` kernels; none synchronises with the host. On sharded tensors (FSDP2) they take the local shards
and a ``shard_sum`` (:class:`~lightning_losses.perturbation.sharding.ShardSum`) that sums each tensor's local sums of
squares / inner products over its shard group, so every norm is that of the full tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_losses.perturbation.norms import (
    RADIUS_MODES,
    SCALINGS,
    ShardSumFn,
    ball_radii,
    delta_grad_cosine,
    delta_grad_statistics,
    foreach_mul,
    global_norm,
    mode_norms,
    project_to_ball,
    scale_by,
    scaling_factors,
    tensor_norms,
)

__all__ = [
    "ASCENT_RULES",
    "RADIUS_MODES",
    "AscentRule",
    "RULES",
    "SCALINGS",
    "adversarial_model_perturbation_delta",
    "asam_epsilon",
    "asam_p2_epsilon",
    "ascent_step",
    "awp_perturbation",
    "delta_grad_cosine",
    "delta_grad_statistics",
    "global_norm",
    "looksam_extrapolate",
    "looksam_orthogonal",
    "sam_epsilon",
    "scaling_factors",
    "tensor_norms",
]


def _normalise_rule(
    direction: list[Tensor],
    scale: list[Tensor] | None,
    radii: Tensor,
    step_size: float,
    mode: str,
    eps: float,
    inplace: bool,
    known: Tensor | None,
    shard_sum: ShardSumFn | None = None,
) -> tuple[list[Tensor], Tensor | None]:
    r"""Step :math:`s R T^2 g / \|T g\|` (``direction`` is :math:`T g`, ``known`` its norms when the caller has
    them). A first step already lies on the sphere of radius :math:`R`: no norms to return, no projection."""
    factors = radii * step_size / ((known if known is not None else mode_norms(direction, mode, shard_sum)) + eps)
    scaled = direction if scale is None else foreach_mul(direction, scale, inplace)
    return scale_by(scaled, factors, mode, inplace), None


def _clip_rule(
    direction: list[Tensor],
    scale: list[Tensor] | None,
    radii: Tensor,
    step_size: float,
    mode: str,
    eps: float,
    inplace: bool,
    known: Tensor | None,
    shard_sum: ShardSumFn | None = None,
) -> tuple[list[Tensor], Tensor | None]:
    r"""Step :math:`s\,\zeta\,T^2 g` (unnormalised); returns the step's norms when they follow from ``known`` (a
    first clipped step is :math:`\zeta g`), so its projection needs no pass over it."""
    step = foreach_mul(direction if scale is None else foreach_mul(direction, scale, inplace), step_size, inplace)
    return step, (step_size * known if known is not None else None)


@dataclass(frozen=True)
class AscentRule:
    """An ascent rule: how one step is formed from :math:`T g`, and what its step size is.

    Attributes:
        step: ``fn(direction, scale, radii, step_size, radius_mode, eps, inplace, known_norms) -> (step, norms)``;
            ``norms`` are the first step's projection norms when known, ``None`` otherwise. On sharded parameters it
            is also given ``shard_sum=`` (a keyword: norms of local shards are summed with it).
        on_sphere: a first step lies on the ball's sphere already (no projection).
        step_size: ``fn(inner_lr, inner_steps)``, the ``step_size`` the engine passes.
    """

    step: Callable[..., tuple[list[Tensor], Tensor | None]]
    on_sphere: bool
    step_size: Callable[[float, int], float]


#: the ascent rules by name: adding a rule is one entry here.
ASCENT_RULES: dict[str, AscentRule] = {
    "normalise": AscentRule(_normalise_rule, on_sphere=True, step_size=lambda inner_lr, steps: 1.0 / steps),
    "clip": AscentRule(_clip_rule, on_sphere=False, step_size=lambda inner_lr, steps: inner_lr),
}
RULES = tuple(ASCENT_RULES)  #: the built-in rule names


def ascent_step(
    delta: Sequence[Tensor] | None,
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    *,
    rule: str = "normalise",
    radius_mode: str = "global",
    radius: float | Tensor = 0.05,
    scaling: str | None = None,
    eta: float = 0.0,
    scale_mask: Sequence[bool] | None = None,
    step_size: float = 1.0,
    eps: float = 1e-12,
    grad_norms: Tensor | None = None,
    inplace: bool = False,
    shard_sum: ShardSumFn | None = None,
) -> list[Tensor]:
    r"""One ascent step on the perturbation, then projection onto its ball (see the module docstring).

    Args:
        delta: current perturbation (``None``: zeros).
        grads: gradient of the ascent loss at :math:`w + \delta`.
        params: the unperturbed weights :math:`w` (for the scaling and the layer-relative radius).
        rule: ``"normalise"`` (step :math:`s R T^2 g/\|Tg\|`) or ``"clip"`` (step :math:`s\,\zeta\,T^2 g`).
        radius_mode: ``"global"``, ``"per_tensor"`` or ``"layer_relative"``.
        radius: :math:`R` (rho / epsilon / gamma).
        scaling / eta / scale_mask: the element-wise :math:`T` (:func:`scaling_factors`).
        step_size: :math:`s` for ``"normalise"`` (``1 / inner_steps`` in the engine), :math:`\zeta` for ``"clip"``.
        eps: added to every norm in a denominator.
        grad_norms: the L2 norm of each tensor of ``grads`` (:func:`tensor_norms`) when the caller already has them;
            without a scaling the step's norms follow from them, and are not computed again.
        inplace: compute in the storage of ``grads`` (overwritten, and returned as the step) and of ``delta``
            (updated) instead of allocating: for callers that discard the gradients afterwards, as the engine does.
        shard_sum: ``grads``, ``params`` and ``delta`` are local shards; this sums per-tensor local sums of squares
            over each tensor's shards (:class:`~lightning_losses.perturbation.sharding.ShardSum`). Default: whole
            tensors.

    Example:
        >>> g = [torch.tensor([3.0, 4.0])]
        >>> ascent_step(None, g, [torch.zeros(2)], radius=1.0)
        [tensor([0.6000, 0.8000])]
    """
    grads = list(grads)
    if not grads:
        return []
    if rule not in ASCENT_RULES:
        raise ValueError(f"`rule` must be one of {tuple(ASCENT_RULES)}, got {rule!r}")
    scale = scaling_factors(params, scaling, eta, scale_mask)
    radii = ball_radii(radius, radius_mode, params, shard_sum)
    direction = grads if scale is None else foreach_mul(grads, scale, inplace)  # T g
    known = None  # the norms of `direction` (= g without a scaling), as `mode_norms` would compute them
    if grad_norms is not None and scale is None:
        known = torch.linalg.vector_norm(grad_norms) if radius_mode == "global" else grad_norms
    ascent = ASCENT_RULES[rule]
    sharded = {} if shard_sum is None else {"shard_sum": shard_sum}  # a rule need not know shards until it meets one
    step, step_norms = ascent.step(direction, scale, radii, step_size, radius_mode, eps, inplace, known, **sharded)
    if delta is None:
        new = step
    elif inplace:
        new = list(delta)
        torch._foreach_add_(new, step)
    else:
        new = list(torch._foreach_add(list(delta), step))
    if delta is None and ascent.on_sphere:
        return new  # a single normalised step already lies on the sphere of radius R
    known_norms = step_norms if delta is None else None
    return project_to_ball(new, radii, radius_mode, scale, eps, inplace, known_norms, shard_sum)


def sam_epsilon(grads: Sequence[Tensor], rho: float, eps: float = 1e-12) -> list[Tensor]:
    r"""SAM (Foret et al., ICLR 2021): :math:`\hat\epsilon = \rho\,g/(\|g\|_2 + 10^{-12})`, one global norm."""
    return ascent_step(None, grads, grads, radius=rho, eps=eps)


def asam_epsilon(
    grads: Sequence[Tensor],
    params: Sequence[Tensor],
    rho: float,
    eta: float = 0.01,
    scale_mask: Sequence[bool] | None = None,
    eps: float = 1e-12,
) -> list[Tensor]:
    r"""ASAM as the authors wrote it (Kwon et al., ICML 2021; SamsungLabs/ASAM): with :math:`T = |w| + \eta` on the
    ``scale_mask`` tensors (names containing ``weight``) and 1 elsewhere,
    :math:`\hat\epsilon = \rho T^2 g / \|T g\|`."""
    return ascent_step(None, grads, params, radius=rho, scaling="adaptive", eta=eta, scale_mask=scale_mask, eps=eps)


def asam_p2_epsilon(grads: Sequence[Tensor], params: Sequence[Tensor], rho: float, eps: float = 1e-12) -> list[Tensor]:
    r"""The other "adaptive SAM" (davda54/sam ``adaptive=True``): :math:`\hat\epsilon = \rho\,w^2 g / \||w| g\|`, no
    :math:`\eta`, every tensor scaled (zero weights are never perturbed). Not the same method as
    :func:`asam_epsilon`."""
    return ascent_step(None, grads, params, radius=rho, scaling="adaptive_p2", eps=eps)


def adversarial_model_perturbation_delta(
    delta: Sequence[Tensor] | None, grads: Sequence[Tensor], epsilon: float, inner_lr: float = 1.0, eps: float = 1e-12
) -> list[Tensor]:
    r"""One inner step of Adversarial Model Perturbation (Zheng et al., CVPR 2021; hiyouga/AMP-Regularizer):
    :math:`\Delta \leftarrow \Delta + \zeta g`, then per tensor :math:`\Delta \leftarrow \Delta
    \min(1, \epsilon/(\|\Delta\| + 10^{-12}))`. Unnormalised: ``grads`` must be unscaled (no loss scale)."""
    return ascent_step(
        delta, grads, grads, rule="clip", radius_mode="per_tensor", radius=epsilon, step_size=inner_lr, eps=eps
    )


def awp_perturbation(
    direction: Sequence[Tensor], params: Sequence[Tensor], gamma: float, eps: float = 1e-20
) -> list[Tensor]:
    r"""AWP (Wu et al., NeurIPS 2020): :math:`v_l = \gamma\,\|w_l\|\,d_l/(\|d_l\| + 10^{-20})` per weight tensor,
    where :math:`d` is the ascent direction (one plain SGD step on :math:`-\ell`, i.e. the gradient; its LR cancels)."""
    return ascent_step(None, direction, params, radius_mode="layer_relative", radius=gamma, eps=eps)


def looksam_orthogonal(
    grads: Sequence[Tensor], perturbed_grads: Sequence[Tensor], eps: float = 1e-12, shard_sum: ShardSumFn | None = None
) -> list[Tensor]:
    r"""LookSAM (Liu et al., CVPR 2022): the part of the SAM gradient :math:`g_s` orthogonal to :math:`g`,
    :math:`g_v = g_s - \frac{\langle g_s, g\rangle}{\|g\|^2} g` (global inner products; ``shard_sum``: of
    local shards)."""
    g, gs = list(grads), list(perturbed_grads)
    dots = torch.stack([(a.double() * b.double()).sum() for a, b in zip(g, gs)])
    dot = (dots if shard_sum is None else shard_sum(dots)).sum()
    coef = dot / (global_norm(g, shard_sum).double() ** 2 + eps)
    return [b - coef.to(b.dtype) * a for a, b in zip(g, gs)]


def looksam_extrapolate(
    grads: Sequence[Tensor],
    orthogonal: Sequence[Tensor],
    alpha: float,
    eps: float = 1e-12,
    shard_sum: ShardSumFn | None = None,
) -> list[Tensor]:
    r"""LookSAM's cheap step: :math:`g + \alpha\,\frac{\|g\|}{\|g_v\|} g_v` with the stored :math:`g_v`."""
    g, gv = list(grads), list(orthogonal)
    factor = alpha * global_norm(g, shard_sum) / (global_norm(gv, shard_sum) + eps)
    return list(torch._foreach_add(g, torch._foreach_mul(gv, factor.to(g[0].dtype))))
