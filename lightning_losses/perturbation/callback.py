"""The named preset callbacks ``SAM``, ``ASAM``, ``AdversarialModelPerturbation``, ``AWP``, ``GSAM``, ``WSAM``,
``FriendlySAM`` and ``ESAM``: each a
:class:`~lightning_losses.perturbation.weight_perturbation.WeightPerturbation` bound to a preset of
:data:`~lightning_losses.perturbation.presets.PRESETS` (the callback and how it runs a step are described in
:mod:`~lightning_losses.perturbation.weight_perturbation`, re-exported here with its guard helpers).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, ClassVar

from lightning_losses.callbacks import CALLBACKS
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation.checkpoints import guarded_checkpoints, unperturbed_checkpoint
from lightning_losses.perturbation.passes import ascent_terms_only, frozen_metrics, metric_modules, suppressed_logging
from lightning_losses.perturbation.presets import PRESETS, Preset
from lightning_losses.perturbation.sam_variants import esam as _registers_the_variants  # noqa: F401
from lightning_losses.perturbation.weight_perturbation import WeightPerturbation

__all__ = [
    "ASAM",
    "AWP",
    "ESAM",
    "GSAM",
    "SAM",
    "WSAM",
    "AdversarialModelPerturbation",
    "FriendlySAM",
    "PresetCallback",
    "WeightPerturbation",
    "ascent_terms_only",
    "frozen_metrics",
    "guarded_checkpoints",
    "metric_modules",
    "suppressed_logging",
    "unperturbed_checkpoint",
]


class PresetCallback(WeightPerturbation):
    """A :class:`WeightPerturbation` bound to a preset of :data:`~lightning_losses.perturbation.presets.PRESETS`.

    A subclass names its preset (``class SAM(PresetCallback, preset="sam")``) and gets that preset's signature,
    defaults and docstring facts: nothing is declared twice. ``variants`` (``{"authors": "asam", "p2": "asam_p2"}``)
    adds a ``variant`` argument choosing among presets; the class's arguments that the chosen preset does not take
    are dropped.
    """

    preset: ClassVar[Preset]
    variants: ClassVar[Mapping[str, str]] = {}

    def __init_subclass__(cls, preset: str | None = None, variants: Mapping[str, str] | None = None, **kw: Any):
        super().__init_subclass__(**kw)
        if preset is None:  # a user's subclass of a preset class keeps what it inherits
            return
        cls.preset, cls.variants = PRESETS[preset], dict(variants or {})
        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *cls.preset.parameters]
        if cls.variants:
            first = next(iter(cls.variants))
            params.append(inspect.Parameter("variant", params[-1].kind, default=first, annotation="str"))
        every = inspect.Parameter("log_every_n_steps", params[-1].kind, default=None, annotation="int | None")
        params.append(every)
        params.append(inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD, annotation="Any"))
        signature = inspect.Signature(params, return_annotation="None")

        def __init__(self: PresetCallback, *args: Any, **kwargs: Any) -> None:
            arguments = signature.bind(self, *args, **kwargs)
            arguments.apply_defaults()
            named = {k: v for k, v in arguments.arguments.items() if k not in ("self", "options")}
            options = arguments.arguments["options"]
            variant = named.pop("variant", None)
            every = named.pop("log_every_n_steps")
            name = cls.preset.name
            if cls.variants:
                if variant not in cls.variants:
                    valid = ", ".join(f"`{v}`" for v in cls.variants)
                    raise ConfigurationError(f"`variant` must be one of {valid}, got {variant!r}")
                name = cls.variants[variant]
            taken = PRESETS[name].defaults
            kept = {k: v for k, v in named.items() if k in taken}
            super(cls, self).__init__(name, log_every_n_steps=every, **kept, **options)
            if cls.variants:
                self.options["variant"] = variant

        __init__.__signature__ = signature  # type: ignore[attr-defined]
        __init__.__qualname__ = f"{cls.__qualname__}.__init__"
        cls.__init__ = __init__  # type: ignore[method-assign]
        call = ", ".join([*(f"{p.name}={p.default!r}" for p in params[1:-1]), "**options"])
        facts = inspect.cleandoc(cls.preset.doc)
        cls.__doc__ = f"{inspect.cleandoc(cls.__doc__ or '')}\n\n``{cls.__name__}({call})``. {facts}"


class SAM(PresetCallback, preset="sam"):
    """SAM as a callback; ``options`` are the engine's (see :class:`WeightPerturbation`)."""


class ASAM(PresetCallback, preset="asam", variants={"authors": "asam", "p2": "asam_p2"}):
    """ASAM as a callback: ``variant="authors"`` is the authors' form (T = |w| + eta on weights, preset ``asam``);
    ``variant="p2"`` the davda54/sam ``adaptive=True`` form (preset ``asam_p2``: no ``eta``, and this class's
    ``rho`` default applies: pass the ``rho`` that form needs)."""


class AdversarialModelPerturbation(PresetCallback, preset="adversarial_model_perturbation"):
    """Adversarial Model Perturbation (never abbreviated) as a callback: clipped per-tensor ascent."""


class AWP(PresetCallback, preset="awp"):
    """AWP as a callback: layer-relative radius on weight matrices."""


class GSAM(PresetCallback, preset="gsam"):
    r"""GSAM as a callback: SAM's ascent, the surrogate-gap descent :math:`g_p - \alpha g_\perp`."""


class WSAM(PresetCallback, preset="wsam"):
    r"""WSAM as a callback: SAM's ascent, the weighted descent :math:`g + \frac{\gamma}{1-\gamma}(g_p - g)`."""


class FriendlySAM(PresetCallback, preset="friendly_sam"):
    r"""FriendlySAM as a callback: the ascent along :math:`g - \sigma m` (its EMA :math:`m` is checkpointed)."""


class ESAM(PresetCallback, preset="esam"):
    r"""ESAM's stochastic weight perturbation as a callback: each tensor perturbed with probability :math:`\beta`."""


for _cls in (SAM, ASAM, AdversarialModelPerturbation, AWP, GSAM, WSAM, FriendlySAM, ESAM):
    CALLBACKS.register(_cls.preset.name)(_cls)
