"""The old home of the pass and checkpoint guards; they now live in :mod:`lightning_losses.perturbation.passes`
and :mod:`lightning_losses.perturbation.checkpoints`. This module keeps the old import path working."""

from lightning_losses.perturbation.checkpoints import guarded_checkpoints, unperturbed_checkpoint
from lightning_losses.perturbation.passes import (
    ascent_terms_only,
    batchnorm_modules,
    frozen_batchnorm,
    frozen_metrics,
    metric_modules,
    restored_buffers,
    suppressed_logging,
)

_restored_buffers = restored_buffers  # its old private name, imported from here before

__all__ = [
    "ascent_terms_only",
    "batchnorm_modules",
    "frozen_batchnorm",
    "frozen_metrics",
    "guarded_checkpoints",
    "metric_modules",
    "restored_buffers",
    "suppressed_logging",
    "unperturbed_checkpoint",
]
