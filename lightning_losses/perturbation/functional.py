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
from typing import Any

import torch
from torch import Tensor

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
    "global_norm",
    "looksam_extrapolate",
    "looksam_orthogonal",
    "sam_epsilon",
    "scaling_factors",
    "tensor_norms",
]

RADIUS_MODES = ("global", "per_tensor", "layer_relative")
SCALINGS = (None, "adaptive", "adaptive_p2")


ShardSumFn = Callable[[Tensor], Tensor]  #: per-tensor local sums -> per-tensor totals over the shard groups


def tensor_norms(tensors: Sequence[Tensor], shard_sum: ShardSumFn | None = None) -> Tensor:
    """L2 norm of each tensor, stacked into a 1-D float32 (or float64) tensor; with ``shard_sum`` the tensors are
    local shards and each norm is that of the full tensor (local sums of squares summed over its shards)."""
    if not tensors:
        return torch.zeros(0)
    norms = torch._foreach_norm(list(tensors))
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    stacked = torch.stack([n.to(dtype) for n in norms])
    return stacked if shard_sum is None else shard_sum(stacked.square()).sqrt()


def global_norm(tensors: Sequence[Tensor], shard_sum: ShardSumFn | None = None) -> Tensor:
    r"""One L2 norm over all tensors, :math:`\sqrt{\sum_l \|t_l\|^2}` (0-d tensor; ``shard_sum``: of local shards).

    Example:
        >>> float(global_norm([torch.tensor([3.0]), torch.tensor([4.0])]))
        5.0
    """
    return torch.linalg.vector_norm(tensor_norms(tensors, shard_sum))


def delta_grad_cosine(
    shards: Sequence[Tensor],
    saved: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    shard_sum: ShardSumFn | None = None,
) -> Tensor:
    r"""Cosine between the perturbation :math:`\delta` = ``shards - saved`` and ``grads`` (the gradient at
    :math:`w + \delta`), float32 0-d. For SAM, whose :math:`\delta` lies along the gradient at :math:`w`, this is the
    cosine between the gradients at :math:`w` and :math:`w + \delta`. Reuses the step's tensors: one tensor-sized
    temporary at a time, no parameter-sized copy; invariant to a gradient scale. Sharded tensors (FSDP2): ``shards``,
    ``saved`` and ``grads`` are the local pieces and ``shard_sum`` sums the per-tensor dot products and squared norms
    over the groups that shard each tensor. A tensor without gradient is left out.

    Example:
        >>> delta_grad_cosine([torch.tensor([1.0, 1.0])], [torch.tensor([0.0, 0.0])], [torch.tensor([0.0, 2.0])])
        tensor(0.7071)
    """
    rows = []  # per tensor: <d, g>, |d|^2, |g|^2 of the local piece (zeros without gradient: one row per tensor)
    for x, s, g in zip(shards, saved, grads):
        if g is None:
            rows.append(torch.zeros(3, device=x.device))
            continue
        d, g = x.detach().float() - s.float(), g.detach().float()
        rows.append(torch.stack(((d * g).sum(), d.square().sum(), g.square().sum())))
    if all(g is None for g in grads):
        return torch.tensor(float("nan"))
    terms = torch.stack(rows)  # [tensors, 3]
    if shard_sum is not None:
        terms = torch.stack([shard_sum(terms[:, j].contiguous()) for j in range(3)], dim=1)
    dot, dd, gg = terms.sum(0)
    return dot / (dd.sqrt() * gg.sqrt()).clamp_min(torch.finfo(torch.float32).tiny)


def scaling_factors(
    params: Sequence[Tensor], scaling: str | None, eta: float = 0.0, scale_mask: Sequence[bool] | None = None
) -> list[Tensor] | None:
    r"""The element-wise scaling :math:`T` (``None`` for plain SAM).

    ``"adaptive"``: :math:`T = |w| + \eta` where ``scale_mask`` is True (the ASAM authors apply it to parameters whose
    name contains ``weight``), :math:`T = 1` elsewhere. ``"adaptive_p2"``: :math:`T = |w|` on every tensor.
    """
    if scaling is None:
        return None
    absolute = list(torch._foreach_abs(list(params)))
    if scaling == "adaptive_p2":
        return absolute
    if scaling != "adaptive":
        raise ValueError(f"`scaling` must be one of {SCALINGS}, got {scaling!r}")
    torch._foreach_add_(absolute, eta)
    if scale_mask is not None:
        absolute = [a if m else torch.ones_like(a) for a, m in zip(absolute, scale_mask)]
    return absolute


def _radii(radius: float | Tensor, mode: str, params: Sequence[Tensor], shard_sum: ShardSumFn | None) -> Tensor:
    if mode == "layer_relative":
        return tensor_norms(params, shard_sum) * radius
    return torch.as_tensor(radius, dtype=torch.float64 if params and params[0].dtype == torch.float64 else None)


def _mul(tensors: list[Tensor], other: Any, inplace: bool) -> list[Tensor]:
    """``tensors * other`` (a list of tensors or a scalar), written into ``tensors`` when ``inplace``."""
    if inplace:
        torch._foreach_mul_(tensors, other)
        return tensors
    return list(torch._foreach_mul(tensors, other))


def _scale_by(tensors: list[Tensor], factors: Tensor, mode: str, inplace: bool = False) -> list[Tensor]:
    """Multiply by a scalar (``global``) or one factor per tensor (into ``tensors`` themselves if ``inplace``)."""
    if mode == "global":
        return _mul(tensors, factors.to(tensors[0].dtype), inplace)
    return _mul(tensors, [f.to(t.dtype) for f, t in zip(factors.unbind(0), tensors)], inplace)


def _norms(tensors: list[Tensor], mode: str, shard_sum: ShardSumFn | None = None) -> Tensor:
    return global_norm(tensors, shard_sum) if mode == "global" else tensor_norms(tensors, shard_sum)


def _project(
    delta: list[Tensor],
    radii: Tensor,
    mode: str,
    scale: list[Tensor] | None,
    eps: float,
    inplace: bool = False,
    norms: Tensor | None = None,
    shard_sum: ShardSumFn | None = None,
) -> list[Tensor]:
    r"""Scale ``delta`` by :math:`\min(1, R / (\|T^{-1}\delta\| + \epsilon))` (globally or per tensor); ``norms``
    are those of :math:`T^{-1}\delta` when the caller knows them."""
    if norms is None:
        measured = delta
        if scale is not None:
            measured = [torch.nan_to_num(d / t, nan=0.0, posinf=0.0, neginf=0.0) for d, t in zip(delta, scale)]
        norms = _norms(measured, mode, shard_sum)
    factors = torch.clamp(radii / (norms + eps), max=1.0)
    return _scale_by(delta, factors, mode, inplace)


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
    factors = radii * step_size / ((known if known is not None else _norms(direction, mode, shard_sum)) + eps)
    return _scale_by(direction if scale is None else _mul(direction, scale, inplace), factors, mode, inplace), None


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
    step = _mul(direction if scale is None else _mul(direction, scale, inplace), step_size, inplace)
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
    radii = _radii(radius, radius_mode, params, shard_sum)
    direction = grads if scale is None else _mul(grads, scale, inplace)  # T g
    known = None  # the norms of `direction` (= g without a scaling), as `_norms` would compute them
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
    return _project(new, radii, radius_mode, scale, eps, inplace, step_norms if delta is None else None, shard_sum)


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
