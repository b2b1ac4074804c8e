r"""Named presets of the perturbation engine and the ``PERTURBATIONS`` registry.

Each preset is declared once, as a :class:`Preset` record in :data:`PRESETS`: its ascent rule, radius mode and
scaling (fixed), the name of its radius argument (``rho`` / ``epsilon`` / ``gamma``), its defaults and the facts of its
docstring. The factory functions (:func:`sam`, ...) registered in :data:`PERTURBATIONS` and the callback classes
(:class:`~lightning_losses.SAM`, ...) are both made from that record. A preset passes every other engine option
(``params``, ``ascent_terms``, ``sync_ascent``, ``every_n_steps``, ``reuse_alpha``, ...) through. A radius may be a
number or a schedule mapping (``{name: cosine, start: 0.05, end: 0.0, steps: 1000}``).

Weight decay placement: the presets put nothing in the ascent loss; weight decay stays in the base optimizer (descent
only), as davda54/sam and the Adversarial Model Perturbation reference do (the JAX SAM reference puts L2 in the loss).

Example:
    >>> import lightning_losses as ll
    >>> ll.list_perturbations()
    ['adversarial_model_perturbation', 'asam', 'asam_p2', 'awp', 'bsam', 'esam', 'fad', 'friendly_sam', 'gam', 'gsam', 'sam', 'wsam']
    >>> ll.build_perturbation("sam", rho=0.1, every_n_steps=2)
    Perturbation(rule='normalise', radius_mode='global', radius=Constant(value=0.1), scaling=None, inner_steps=1, sync_ascent=False, every_n_steps=2)
"""  # noqa: E501

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lightning_losses._validation import suggest
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation.engine import Perturbation
from lightning_losses.registry import Registry, check_kwargs

__all__ = [
    "PERTURBATIONS",
    "PRESETS",
    "Preset",
    "adversarial_model_perturbation",
    "asam",
    "asam_p2",
    "awp",
    "build_perturbation",
    "list_perturbations",
    "register_preset",
    "sam",
]

PERTURBATIONS: Registry[Any] = Registry("perturbation")

_FIXED = ("rule", "radius_mode", "radius", "scaling", "direction", "descent")
_ENGINE = inspect.signature(Perturbation.__init__).parameters


@dataclass(frozen=True)
class Preset:
    """One perturbation preset: the engine settings it fixes and the defaults of its arguments.

    Args:
        name: registry name (``"sam"``).
        radius: the user-facing name of the engine's ``radius`` (``"rho"``, ``"epsilon"``, ``"gamma"``).
        defaults: the preset's own arguments in signature order, the radius first, then engine options the preset
            gives another default (``{"rho": 0.5, "eta": 0.01}``).
        rule / radius_mode / scaling: the fixed ascent rule (:data:`~lightning_losses.perturbation.functional.RULES`).
        direction / descent: the fixed direction and descent rules
            (:mod:`~lightning_losses.perturbation.gradient_rules`).
        renames: the preset's names of engine options (``{"alpha": "descent_weight"}``), as ``radius`` is for the
            radius.
        implied: engine options the preset sets but a user may override (AWP's ``params`` / ``min_ndim``).
        doc: the facts of the method (paper, formula, defaults' source): the factory's docstring.
        aliases: other registry names.
        engine: the engine class (default :class:`~lightning_losses.perturbation.Perturbation`; a subclass adds its own
            arguments, e.g. ``gam``'s :class:`~lightning_losses.perturbation.first_order.GAMPerturbation`).
    """

    name: str
    radius: str
    defaults: Mapping[str, Any]
    rule: str = "normalise"
    radius_mode: str = "global"
    scaling: str | None = None
    direction: str = "gradient"
    descent: str = "perturbed"
    renames: Mapping[str, str] = field(default_factory=dict)
    implied: Mapping[str, Any] = field(default_factory=dict)
    doc: str = ""
    aliases: tuple[str, ...] = ()
    engine: type[Perturbation] | None = None

    @property
    def engine_parameters(self) -> Mapping[str, inspect.Parameter]:
        """The arguments of the engine class this preset builds."""
        return _ENGINE if self.engine is None else inspect.signature(self.engine.__init__).parameters

    @property
    def parameters(self) -> list[inspect.Parameter]:
        """The preset's own arguments (with their defaults), as signature parameters."""
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        return [
            inspect.Parameter(
                k,
                kind,
                default=v,
                annotation="Any" if k == self.radius else self.engine_parameters[self.renames.get(k, k)].annotation,
            )
            for k, v in self.defaults.items()
        ]

    @property
    def signature(self) -> inspect.Signature:
        """``(radius=..., own arguments..., **options) -> Perturbation``."""
        options = inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD, annotation="Any")
        return inspect.Signature([*self.parameters, options], return_annotation="Perturbation")

    def build(self, *args: Any, **kwargs: Any) -> Perturbation:
        """The engine with this preset's settings (arguments as :attr:`signature`)."""
        bound = self.signature.bind(*args, **kwargs)
        for key in bound.arguments.get("options", {}):
            if key in self.renames.values():  # the engine's name of an option this preset names otherwise
                name = next(k for k, v in self.renames.items() if v == key)
                raise ConfigurationError(f"perturbation `{self.name}` calls `{key}` `{name}`: pass `{name}=`")
        own = {**self.defaults, **{k: v for k, v in bound.arguments.items() if k != "options"}}
        radius = own.pop(self.radius)
        own = {self.renames.get(k, k): v for k, v in own.items()}
        options = {**own, **self.implied, **bound.arguments.get("options", {})}
        fixed = {"rule": self.rule, "radius_mode": self.radius_mode, "radius": radius, "scaling": self.scaling}
        fixed |= {"direction": self.direction, "descent": self.descent}
        return _engine(fixed, options, self)

    def factory(self) -> Callable[..., Perturbation]:
        """A function ``name(radius=..., **options)`` with this preset's signature and docstring."""

        def factory(*args: Any, **kwargs: Any) -> Perturbation:
            return self.build(*args, **kwargs)

        factory.__name__ = factory.__qualname__ = self.name
        factory.__doc__ = self.doc
        factory.__signature__ = self.signature  # type: ignore[attr-defined]
        return factory


def _engine(fixed: dict[str, Any], options: dict[str, Any], preset: Preset) -> Perturbation:
    what = preset.name
    for key in options:
        if key in fixed or key in _FIXED:
            raise ConfigurationError(f"perturbation `{what}` fixes `{key}`; use the generic engine to change it")
    renamed = {v: k for k, v in preset.renames.items()}
    own = [n for n in preset.defaults if n not in options]
    signature = preset.engine_parameters
    engine = [n for n in signature if n not in ("self", *_FIXED, *renamed)]
    for key in options:
        if key not in engine and key not in renamed:
            valid = ", ".join(f"`{n}`" for n in own + [e for e in engine if e not in own])
            raise ConfigurationError(
                f"perturbation `{what}` got an unexpected argument `{key}`{suggest(key, own + engine)} "
                f"Valid arguments: {valid}"
            )
    cls = preset.engine or Perturbation
    check_kwargs(cls.__init__, options, what=f"perturbation `{what}`", skip=_FIXED)
    try:
        return cls(**fixed, **options)
    except ConfigurationError as err:  # the engine's `radius` is the preset's `rho`, `epsilon`, ...
        message = str(err)
        for engine_name, name in {"radius": preset.radius, **{v: k for k, v in preset.renames.items()}}.items():
            if message.startswith(f"`{engine_name}`"):
                raise ConfigurationError(f"`{name}`{message[len(engine_name) + 2 :]}") from None
        raise


#: every preset, by name (filled by :func:`register_preset`).
PRESETS: dict[str, Preset] = {}


def register_preset(preset: Preset) -> Preset:
    """Add ``preset`` to :data:`PRESETS` and its factory to :data:`PERTURBATIONS` (a callback class then takes one
    line: ``class Name(PresetCallback, preset="name")``)."""
    PERTURBATIONS.register(preset.name, aliases=preset.aliases)(preset.factory())
    PRESETS[preset.name] = preset
    return preset


# the built-in presets: each declared here once
for _preset in (
    Preset(
        "sam",
        radius="rho",
        defaults={"rho": 0.05},
        doc=r"""SAM (Foret et al., ICLR 2021): :math:`\epsilon = \rho\,g/\|g\|_2`, one global norm over the
    perturbed parameters. Default :math:`\rho = 0.05`.""",
    ),
    Preset(
        "asam",
        radius="rho",
        defaults={"rho": 0.5, "eta": 0.01},
        scaling="adaptive",
        doc=r"""ASAM as its authors implement it (Kwon et al., ICML 2021; SamsungLabs/ASAM):
    :math:`\epsilon = \rho\,T^2 g/\|T g\|` with :math:`T = |w| + \eta` on parameters whose name contains ``weight``
    (``scale_params``) and 1 elsewhere. Defaults :math:`\rho = 0.5, \eta = 0.01` (the authors' class defaults;
    their example script uses :math:`\eta = 0`). For the davda54/sam ``adaptive=True`` variant use ``asam_p2``.""",
    ),
    Preset(
        "asam_p2",
        radius="rho",
        defaults={"rho": 2.0},
        scaling="adaptive_p2",
        aliases=("adaptive_sam",),
        doc=r"""The other "adaptive SAM" (davda54/sam ``adaptive=True``, also GSAM and pytorch_optimizer):
    :math:`\epsilon = \rho\,w^2 g/\||w| g\|` on every parameter, no :math:`\eta` (zero weights never move). A
    different method from ``asam``; default :math:`\rho = 2.0` as davda54's README suggests.""",
    ),
    Preset(
        "adversarial_model_perturbation",
        radius="epsilon",
        defaults={"epsilon": 0.5, "inner_lr": 1.0, "inner_steps": 1},
        rule="clip",
        radius_mode="per_tensor",
        doc=r"""Adversarial Model Perturbation (Zheng, Zhang, Mao, CVPR 2021; hiyouga/AMP-Regularizer):
    ``inner_steps`` unnormalised ascent steps :math:`\Delta \leftarrow \Delta + \zeta g`, each clipped to
    :math:`\|\Delta_l\| \le \epsilon` per parameter tensor. Defaults :math:`\epsilon = 0.5, \zeta = 1, N = 1` (the
    reference's). The reference clips gradients at norm 50 inside its closure (every pass); here
    ``gradient_clip_val`` acts once on the descent gradient. Costs 1 + ``inner_steps`` forward-backward passes.""",
    ),
    Preset(
        "awp",
        radius="gamma",
        defaults={"gamma": 5e-3, "warmup_epochs": 0},
        radius_mode="layer_relative",
        implied={"params": ["*weight"], "min_ndim": 2},
        doc=r"""AWP (Wu, Xia, Wang, NeurIPS 2020): :math:`v_l = \gamma\,\|w_l\|\,g_l/\|g_l\|` on weight tensors
    with at least 2 dimensions (names ending in ``weight``; biases and norm layers are not perturbed). The reference's
    proxy SGD step cancels in this normalisation. Defaults :math:`\gamma = 5\cdot10^{-3}`, no warm-up (the
    reference's TRADES-AWP script warms up for 10 epochs). The adversarial inputs (PGD) are the user's
    ``training_step``'s job.""",
    ),
):
    register_preset(_preset)

sam = PERTURBATIONS.get("sam")
asam = PERTURBATIONS.get("asam")
asam_p2 = PERTURBATIONS.get("asam_p2")
adversarial_model_perturbation = PERTURBATIONS.get("adversarial_model_perturbation")
awp = PERTURBATIONS.get("awp")


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
