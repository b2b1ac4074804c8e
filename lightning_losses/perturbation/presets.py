r"""Named presets of the perturbation engine and the ``PERTURBATIONS`` registry.

Each preset is a function that fixes the engine's rule, radius and scaling and passes every other engine option
(``params``, ``ascent_terms``, ``sync_ascent``, ``every_n_steps``, ``reuse_alpha``, ...) through. A radius may be a
number or a schedule mapping (``{name: cosine, start: 0.05, end: 0.0, steps: 1000}``).

Weight decay placement: the presets put nothing in the ascent loss; weight decay stays in the base optimizer (descent
only), as davda54/sam and the Adversarial Model Perturbation reference do (the JAX SAM reference puts L2 in the loss).

Example:
    >>> import lightning_losses as ll
    >>> ll.list_perturbations()
    ['adversarial_model_perturbation', 'asam', 'asam_p2', 'awp', 'sam']
    >>> ll.build_perturbation("sam", rho=0.1, every_n_steps=2)
    Perturbation(rule='normalise', radius_mode='global', radius=Constant(value=0.1), scaling=None, inner_steps=1, sync_ascent=False, every_n_steps=2)
"""  # noqa: E501

from __future__ import annotations

import inspect
from typing import Any

from lightning_losses._validation import suggest
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation.engine import Perturbation
from lightning_losses.registry import Registry, check_kwargs

__all__ = [
    "PERTURBATIONS",
    "adversarial_model_perturbation",
    "asam",
    "asam_p2",
    "awp",
    "build_perturbation",
    "list_perturbations",
    "sam",
]

PERTURBATIONS: Registry[Any] = Registry("perturbation")

_FIXED = ("rule", "radius_mode", "radius", "scaling")


def _engine(fixed: dict[str, Any], options: dict[str, Any], what: str) -> Perturbation:
    for key in options:
        if key in fixed or key in _FIXED:
            raise ConfigurationError(f"perturbation `{what}` fixes `{key}`; use the generic engine to change it")
    own = [
        n
        for n, p in inspect.signature(PERTURBATIONS.get(what)).parameters.items()
        if p.kind is not inspect.Parameter.VAR_KEYWORD and n not in options
    ]
    engine = [n for n in inspect.signature(Perturbation.__init__).parameters if n not in ("self", *_FIXED)]
    for key in options:
        if key not in engine:
            valid = ", ".join(f"`{n}`" for n in own + [e for e in engine if e not in own])
            raise ConfigurationError(
                f"perturbation `{what}` got an unexpected argument `{key}`{suggest(key, own + engine)} "
                f"Valid arguments: {valid}"
            )
    check_kwargs(Perturbation.__init__, options, what=f"perturbation `{what}`", skip=_FIXED)
    try:
        return Perturbation(**fixed, **options)
    except ConfigurationError as err:  # the engine's `radius` is the preset's first argument (`rho`, `epsilon`, ...)
        message = str(err)
        if not message.startswith("`radius`"):
            raise
        radius = next(iter(inspect.signature(PERTURBATIONS.get(what)).parameters))
        raise ConfigurationError(f"`{radius}`{message[len('`radius`') :]}") from None


@PERTURBATIONS.register("sam")
def sam(rho: Any = 0.05, **options: Any) -> Perturbation:
    r"""SAM (Foret et al., ICLR 2021): :math:`\epsilon = \rho\,g/\|g\|_2`, one global norm over the perturbed
    parameters. Default :math:`\rho = 0.05`."""
    return _engine({"rule": "normalise", "radius_mode": "global", "radius": rho}, options, "sam")


@PERTURBATIONS.register("asam")
def asam(rho: Any = 0.5, eta: float = 0.01, **options: Any) -> Perturbation:
    r"""ASAM as its authors implement it (Kwon et al., ICML 2021; SamsungLabs/ASAM):
    :math:`\epsilon = \rho\,T^2 g/\|T g\|` with :math:`T = |w| + \eta` on parameters whose name contains ``weight``
    (``scale_params``) and 1 elsewhere. Defaults :math:`\rho = 0.5, \eta = 0.01` (the authors' class defaults;
    their example script uses :math:`\eta = 0`). For the davda54/sam ``adaptive=True`` variant use ``asam_p2``."""
    options = {"eta": eta, **options}
    return _engine(
        {"rule": "normalise", "radius_mode": "global", "radius": rho, "scaling": "adaptive"}, options, "asam"
    )


@PERTURBATIONS.register("asam_p2", aliases=("adaptive_sam",))
def asam_p2(rho: Any = 2.0, **options: Any) -> Perturbation:
    r"""The other "adaptive SAM" (davda54/sam ``adaptive=True``, also GSAM and pytorch_optimizer):
    :math:`\epsilon = \rho\,w^2 g/\||w| g\|` on every parameter, no :math:`\eta` (zero weights never move). A
    different method from ``asam``; default :math:`\rho = 2.0` as davda54's README suggests."""
    fixed = {"rule": "normalise", "radius_mode": "global", "radius": rho, "scaling": "adaptive_p2"}
    return _engine(fixed, options, "asam_p2")


@PERTURBATIONS.register("adversarial_model_perturbation")
def adversarial_model_perturbation(
    epsilon: Any = 0.5, inner_lr: float = 1.0, inner_steps: int = 1, **options: Any
) -> Perturbation:
    r"""Adversarial Model Perturbation (Zheng, Zhang, Mao, CVPR 2021; hiyouga/AMP-Regularizer): ``inner_steps``
    unnormalised ascent steps :math:`\Delta \leftarrow \Delta + \zeta g`, each clipped to :math:`\|\Delta_l\| \le
    \epsilon` per parameter tensor. Defaults :math:`\epsilon = 0.5, \zeta = 1, N = 1` (the reference's). The
    reference clips gradients at norm 50 inside its closure (every pass); here ``gradient_clip_val`` acts once on the
    descent gradient. Costs 1 + ``inner_steps`` forward-backward passes."""
    options = {"inner_lr": inner_lr, "inner_steps": inner_steps, **options}
    fixed = {"rule": "clip", "radius_mode": "per_tensor", "radius": epsilon}
    return _engine(fixed, options, "adversarial_model_perturbation")


@PERTURBATIONS.register("awp")
def awp(gamma: Any = 5e-3, warmup_epochs: int = 0, **options: Any) -> Perturbation:
    r"""AWP (Wu, Xia, Wang, NeurIPS 2020): :math:`v_l = \gamma\,\|w_l\|\,g_l/\|g_l\|` on weight tensors with at least
    2 dimensions (names ending in ``weight``; biases and norm layers are not perturbed). The reference's proxy SGD
    step cancels in this normalisation. Defaults :math:`\gamma = 5\cdot10^{-3}`, no warm-up (the reference's
    TRADES-AWP script warms up for 10 epochs). The adversarial inputs (PGD) are the user's ``training_step``'s job."""
    options = {"warmup_epochs": warmup_epochs, "params": ["*weight"], "min_ndim": 2, **options}
    fixed = {"rule": "normalise", "radius_mode": "layer_relative", "radius": gamma}
    return _engine(fixed, options, "awp")


def list_perturbations(filter: Any = None) -> list[str]:
    """Sorted names of the perturbation presets."""
    return PERTURBATIONS.list(filter)


def build_perturbation(spec: Any, /, **kwargs: Any) -> Perturbation:
    """Build a :class:`Perturbation` from a preset name (``"sam"``), a ``{"name": ..., **kwargs}`` mapping, or pass
    an instance through.

    Raises:
        ConfigurationError: unknown name (with the nearest valid one) or argument; ``"amp"`` is ambiguous and refused.
    """
    name = spec.get("name") if isinstance(spec, dict) else spec
    if isinstance(name, str) and name.strip().lower() == "amp":
        raise ConfigurationError(
            "perturbation `amp` is ambiguous: Adversarial Model Perturbation is `adversarial_model_perturbation`; "
            "mixed precision is the Trainer's `precision=` (e.g. `16-mixed`)"
        )
    return PERTURBATIONS.build(spec, **kwargs)
