"""Weight perturbation: one engine (:class:`Perturbation`), presets by name, pure functions, Lightning callbacks,
and :class:`SAF` / :class:`MESA` (sharpness-aware trajectory losses at the cost of a plain step), :class:`EntropySGD`
(Langevin inner loop on the local entropy) and :class:`UDIM` (SAM plus worst-case input perturbation).

Example:
    >>> import lightning_losses as ll
    >>> ll.build_perturbation("adversarial_model_perturbation", epsilon=0.5).rule
    'clip'
"""

from lightning_losses.perturbation import functional
from lightning_losses.perturbation.bsam import BSAM
from lightning_losses.perturbation.callback import (
    ASAM,
    AWP,
    ESAM,
    GSAM,
    SAM,
    WSAM,
    AdversarialModelPerturbation,
    FriendlySAM,
    PresetCallback,
    WeightPerturbation,
    suppressed_logging,
)
from lightning_losses.perturbation.engine import Perturbation, batchnorm_modules, frozen_batchnorm, select_parameters
from lightning_losses.perturbation.entropy_sgd import EntropySGD
from lightning_losses.perturbation.first_order_presets import FAD, GAM, fad, gam
from lightning_losses.perturbation.manual import perturbed_backward
from lightning_losses.perturbation.mesa import MESA
from lightning_losses.perturbation.perp_grad import PerpGrad, orthogonalize_gradients_
from lightning_losses.perturbation.presets import (
    PERTURBATIONS,
    PRESETS,
    Preset,
    adversarial_model_perturbation,
    asam,
    asam_p2,
    awp,
    build_perturbation,
    list_perturbations,
    register_preset,
    sam,
)
from lightning_losses.perturbation.sam_variants import bsam, esam, friendly_sam, gsam, wsam
from lightning_losses.perturbation.trajectory import SAF
from lightning_losses.perturbation.udim import UDIM

__all__ = [
    "ASAM",
    "AWP",
    "BSAM",
    "ESAM",
    "FriendlySAM",
    "GSAM",
    "MESA",
    "WSAM",
    "PERTURBATIONS",
    "PRESETS",
    "SAF",
    "SAM",
    "AdversarialModelPerturbation",
    "Perturbation",
    "Preset",
    "register_preset",
    "PresetCallback",
    "WeightPerturbation",
    "adversarial_model_perturbation",
    "asam",
    "asam_p2",
    "awp",
    "batchnorm_modules",
    "bsam",
    "esam",
    "friendly_sam",
    "gsam",
    "wsam",
    "build_perturbation",
    "frozen_batchnorm",
    "functional",
    "list_perturbations",
    "perturbed_backward",
    "sam",
    "select_parameters",
    "suppressed_logging",
    "PerpGrad",
    "orthogonalize_gradients_",
    "FAD",
    "GAM",
    "fad",
    "gam",
    "EntropySGD",
    "UDIM",
]
