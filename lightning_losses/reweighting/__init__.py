"""Dynamic sample reweighting, correct under DDP, with per-sample state.

A reweighter maps detached per-sample losses (plus ``target``, ``group``, ``index``, ``logits`` when passed to
``compute_loss``) to ``[N]`` weights, advancing its state by one step; the objective multiplies them into the
per-sample losses and normalises with the global weight sum. Use it through the callback::

    trainer = L.Trainer(callbacks=[ll.SampleReweighting("group_dro", step_size=0.01)])

or in a recipe: ``callbacks: {sample_reweighting: {strategy: group_dro, step_size: 0.01}}``.

Example:
    >>> import lightning_losses as ll
    >>> r = ll.build_reweighter("cvar", alpha=0.5)
    >>> r(losses=torch.tensor([0.1, 0.4, 0.3, 0.2]))
    tensor([0., 2., 2., 0.])
"""

import torch  # noqa: F401  (doctest namespace)

from lightning_losses.reweighting.base import REWEIGHTERS, Reweighter, build_reweighter, list_reweighters
from lightning_losses.reweighting.callback import SampleReweighting
from lightning_losses.reweighting.groups import ClassBalanced, EMAClassLoss, GroupDRO
from lightning_losses.reweighting.loss_based import (
    CVaR,
    Extremes,
    GlobalLossReweighter,
    LinUpper,
    LossSoftmax,
    LossTruncation,
    Quadratic,
    SpectralRisk,
    TopK,
)
from lightning_losses.reweighting.metrics import GroupAccuracy, global_weight_stats
from lightning_losses.reweighting.per_sample import JTT, PerSampleEMA
from lightning_losses.reweighting.sampler import BalancedSampler
from lightning_losses.reweighting.store import PerSampleStore
from lightning_losses.sync import sync_statistics

__all__ = [
    "BalancedSampler",
    "GroupAccuracy",
    "SampleReweighting",
    "global_weight_stats",
    "CVaR",
    "ClassBalanced",
    "EMAClassLoss",
    "Extremes",
    "GlobalLossReweighter",
    "GroupDRO",
    "JTT",
    "LinUpper",
    "LossSoftmax",
    "LossTruncation",
    "PerSampleEMA",
    "PerSampleStore",
    "Quadratic",
    "REWEIGHTERS",
    "Reweighter",
    "SpectralRisk",
    "TopK",
    "build_reweighter",
    "list_reweighters",
    "sync_statistics",
]

# preference-pair weights (issue 4)
from lightning_losses.reweighting.preference import WPO  # noqa: E402

__all__ += ["WPO"]

# per-class normalised gradients (issue 20)
from lightning_losses.reweighting.class_gradients import PerClassNormalized  # noqa: E402

__all__ += ["PerClassNormalized"]

# USEFUL: upsample the slow-learnable clusters (issue 20)
from lightning_losses.reweighting.upsample import UpsampleSampler  # noqa: E402
from lightning_losses.reweighting.useful import USEFUL  # noqa: E402

__all__ += ["USEFUL", "UpsampleSampler"]

# STORM: self-taught meta loss rescaling (issue 20)
from lightning_losses.reweighting.meta import STORM  # noqa: E402

__all__ += ["STORM"]
