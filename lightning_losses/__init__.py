"""lightning_losses: configurable losses, sample reweighting, weight perturbation and entropy controls for
PyTorch Lightning, correct under DDP.

Importing the package registers every built-in component.

Example:
    >>> import lightning_losses as ll
    >>> loss = ll.build_loss("focal", gamma=2.0)
    >>> "cross_entropy" in ll.list_losses()
    True
"""

# ruff: noqa: E402 (the console script's `--help` is answered before the heavy imports below)
from collections.abc import Callable

__version__ = "0.1.0.dev0"

# the console script asked only for `--help` / `--version`: answer before importing torch and Lightning (seconds)
from lightning_losses._cli_parser import answer_help_or_version

answer_help_or_version(__version__)

from lightning_losses import functional
from lightning_losses.callbacks import CALLBACKS, MixinCallback, build_callbacks, list_callbacks
from lightning_losses.config import build_run, load_recipe
from lightning_losses.curvature import CurvatureMonitor
from lightning_losses.entropy import (
    CalibrationMonitor,
    EntropyControl,
    EntropyController,
    TemperatureScaling,
    Tent,
)
from lightning_losses.errors import ConfigurationError
from lightning_losses.losses import (
    LOSSES,
    REWARD_TRANSFORMS,
    Loss,
    RewardTransform,
    build_loss,
    build_reward_transform,
    list_losses,
    list_reward_transforms,
)
from lightning_losses.mixin import LossesMixin
from lightning_losses.objective import Objective, ObjectiveOutput, Term
from lightning_losses.perturbation import (
    ASAM,
    AWP,
    ESAM,
    GSAM,
    MESA,
    PERTURBATIONS,
    SAF,
    SAM,
    WSAM,
    AdversarialModelPerturbation,
    FriendlySAM,
    PerpGrad,
    Perturbation,
    Preset,
    PresetCallback,
    WeightPerturbation,
    build_perturbation,
    list_perturbations,
    perturbed_backward,
    register_preset,
)
from lightning_losses.perturbation.entropy_sgd import EntropySGD
from lightning_losses.perturbation.first_order_presets import FAD, GAM
from lightning_losses.perturbation.udim import UDIM
from lightning_losses.reduction import weighted_mean
from lightning_losses.registry import Registry
from lightning_losses.reweighting import (
    REWEIGHTERS,
    BalancedSampler,
    Reweighter,
    SampleReweighting,
    build_reweighter,
    list_reweighters,
)
from lightning_losses.schedules import SCHEDULES, Schedule, build_schedule

_EXTRA_LISTINGS: dict[str, Callable[[], list[str]]] = {}


def extra_listings() -> dict[str, Callable[[], list[str]]]:
    """Registries added by component families (reweighters, perturbations, ...) for ``lightning-losses list``."""
    return dict(_EXTRA_LISTINGS)


_EXTRA_LISTINGS["reweighters"] = list_reweighters
_EXTRA_LISTINGS["perturbations"] = list_perturbations
_EXTRA_LISTINGS["reward_transforms"] = list_reward_transforms


__all__ = [
    "CALLBACKS",
    "BalancedSampler",
    "LOSSES",
    "REWEIGHTERS",
    "SCHEDULES",
    "ConfigurationError",
    "Loss",
    "LossesMixin",
    "MixinCallback",
    "Objective",
    "ObjectiveOutput",
    "Registry",
    "Reweighter",
    "SampleReweighting",
    "Schedule",
    "Term",
    "build_callbacks",
    "build_loss",
    "build_reweighter",
    "build_run",
    "build_schedule",
    "extra_listings",
    "functional",
    "list_callbacks",
    "list_losses",
    "list_reweighters",
    "load_recipe",
    "weighted_mean",
    "__version__",
    "ASAM",
    "AWP",
    "ESAM",
    "FriendlySAM",
    "GSAM",
    "MESA",
    "PERTURBATIONS",
    "SAF",
    "SAM",
    "WSAM",
    "AdversarialModelPerturbation",
    "Perturbation",
    "Preset",
    "PresetCallback",
    "WeightPerturbation",
    "build_perturbation",
    "list_perturbations",
    "perturbed_backward",
    "register_preset",
    "FAD",
    "GAM",
]
__all__ += [
    "CalibrationMonitor",
    "CurvatureMonitor",
    "EntropyControl",
    "EntropyController",
    "TemperatureScaling",
    "Tent",
    "EntropySGD",
    "UDIM",
]
__all__ += [
    "REWARD_TRANSFORMS",
    "RewardTransform",
    "build_reward_transform",
    "list_reward_transforms",
]
__all__ += ["PerpGrad"]


# USEFUL (issue 20)
from lightning_losses.reweighting import USEFUL, UpsampleSampler  # noqa: E402

__all__ += ["USEFUL", "UpsampleSampler"]
