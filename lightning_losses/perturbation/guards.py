"""The old home of the pass and checkpoint guards; they now live in :mod:`lightning_losses.perturbation.passes`
and :mod:`lightning_losses.perturbation.checkpoints`. This module keeps the old import path working."""

from lightning_losses.perturbation.checkpoints import guarded_checkpoints, unperturbed_checkpoint
from lightning_losses.perturbation.passes import (
    _restored_buffers,  # noqa: F401  (private, imported from here before)
    ascent_terms_only,
    batchnorm_modules,
    frozen_batchnorm,
    frozen_metrics,
    metric_modules,
    suppressed_logging,
)

__all__ = [
    "ascent_terms_only",
    "batchnorm_modules",
    "frozen_batchnorm",
    "frozen_metrics",
    "guarded_checkpoints",
    "metric_modules",
    "suppressed_logging",
    "unperturbed_checkpoint",
]
