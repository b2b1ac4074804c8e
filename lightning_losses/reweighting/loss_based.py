r"""Strategies whose weights depend only on the losses of the global batch.

Each all-gathers the detached losses at the sync point (``"cat"``), computes the weights of the whole global batch
with a pure function of :mod:`lightning_losses.functional.reweighting` (identical on every rank) and keeps its own
slice: DDP on k ranks gives exactly the weights of one process on the concatenated batch. Masked samples
(``sample_mask``, gathered with the losses) are left out of the normalisation: min / max, softmax, ranks and ``N``.

Example:
    >>> import torch
    >>> from lightning_losses.reweighting import build_reweighter
    >>> build_reweighter("top_k", k=1)(losses=torch.tensor([0.2, 0.9, 0.4]))
    tensor([0., 3., 0.])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from lightning_losses._validation import check_int, check_number, check_probability_vector
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional import reweighting as F
from lightning_losses.reweighting.base import REWEIGHTERS, Reweighter

__all__ = [
    "CVaR",
    "Extremes",
    "GlobalLossReweighter",
    "LinUpper",
    "LossSoftmax",
    "LossTruncation",
    "Quadratic",
    "SpectralRisk",
    "TopK",
]


class GlobalLossReweighter(Reweighter):
    """Base of the loss-only strategies: gather the losses, weight the global batch, return this rank's slice."""

    def __init__(self) -> None:
        super().__init__()
        self.statistics["losses"] = "cat"

    def local_statistics(self, losses: torch.Tensor, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        return {"losses": losses}

    def global_weights(self, losses: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``[N_global]`` weights of the gathered losses; ``mask`` (``[N_global]`` bool or ``None``) marks the
        counted samples (the others must take no part and get 0)."""
        raise NotImplementedError

    def compute(self, losses, synced, inputs):
        return self.global_weights(synced["losses"], synced.get("sample_mask"))[self.local_slice]


@REWEIGHTERS.register("loss_softmax", aliases=("kl_dro",))
class LossSoftmax(GlobalLossReweighter):
    r"""KL-regularised DRO instance weights :math:`w_i = N\,\mathrm{softmax}(\ell / r)_i` over the global batch.

    Sow et al., "Doubly Robust Instance-Reweighted Adversarial Training", ICLR 2024 (closed form of the KL-penalised
    inner maximisation). Emphasises hard samples; small ``r`` can chase label noise.

    Args:
        temperature: :math:`r > 0`. Default 1.0.

    Example:
        >>> LossSoftmax(temperature=1.0)(losses=torch.tensor([0.0, 0.0]))
        tensor([1., 1.])
    """

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        self.hparams = self.capture_hparams(locals())

    def global_weights(self, losses, mask=None):
        return F.loss_softmax_weights(losses, self.temperature, mask)


class _MinMaxSoftmax(GlobalLossReweighter):
    _fn: Callable[..., torch.Tensor]

    def __init__(self, delta: float = 1.0, temperature: float = 1.0, warmup_steps: int = 0) -> None:
        super().__init__()
        self.delta = check_number("delta", delta, low=0.0, low_open=True)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, low=0)
        self.hparams = self.capture_hparams(locals())

    def global_weights(self, losses, mask=None):
        weights = type(self)._fn(losses, self.delta, self.temperature, mask)
        if self.warmup_steps:  # uniform during warm-up, decided on device (no host sync)
            uniform = torch.ones_like(weights) if mask is None else mask.to(weights.dtype)
            weights = torch.where(self.step < self.warmup_steps, uniform, weights)
        return weights


_LOSS_BASED_DOC = r"""{title} loss-based reweighting of Sow et al., "Dynamic Loss-Based Sample Reweighting for Improved
    Large Language Model Pretraining", ICLR 2025.

    Global min-max normalisation :math:`\tilde\ell \in [-\delta, \delta]`, then :math:`g = {formula}` and
    :math:`w = N\,\mathrm{{softmax}}(g / r)` over the all-gathered batch (the reference's ``trainer.py`` pattern).

    Args:
        delta: :math:`\delta > 0`. Default 1.0.
        temperature: :math:`r > 0` (the reference's ``kl_reg``). Default 1.0.
        warmup_steps: steps with uniform weights first (the reference's ``burnout_steps``, default there 1000).
            Default 0.

    Example:
        >>> from lightning_losses.reweighting import build_reweighter
        >>> r = build_reweighter("{name}", delta=1.0, temperature=1.0)
        >>> r(losses=torch.tensor([0.0, 1.0, 2.0])).round(decimals=4)
        {example}
"""


@REWEIGHTERS.register("lin_upper", aliases=("linupper",))
class LinUpper(_MinMaxSoftmax):
    __doc__ = _LOSS_BASED_DOC.format(
        title="LinUpper",
        formula=r"\min(\tilde\ell + \delta, \delta)",
        name="lin_upper",
        example="tensor([0.4661, 1.2670, 1.2670])",
    )
    _fn = staticmethod(F.lin_upper_weights)


@REWEIGHTERS.register("quadratic")
class Quadratic(_MinMaxSoftmax):
    __doc__ = _LOSS_BASED_DOC.format(
        title="Quadratic",
        formula=r"1 - \tilde\ell^2 / \delta^2",
        name="quadratic",
        example="tensor([0.6358, 1.7284, 0.6358])",
    )
    _fn = staticmethod(F.quadratic_weights)


@REWEIGHTERS.register("extremes")
class Extremes(_MinMaxSoftmax):
    __doc__ = _LOSS_BASED_DOC.format(
        title="Extremes", formula=r"|\tilde\ell|", name="extremes", example="tensor([1.2670, 0.4661, 1.2670])"
    )
    _fn = staticmethod(F.extremes_weights)


@REWEIGHTERS.register("cvar", aliases=("superquantile",))
class CVaR(GlobalLossReweighter):
    r"""CVaR at level :math:`\alpha`: uniform weight on the top :math:`\alpha`-fraction of the global batch.

    Mini-batch CVaR as in Prospect (Mehta et al., ICLR 2024); a biased estimate of the population CVaR.

    Args:
        alpha: tail fraction in :math:`(0, 1]` (1 = plain mean).

    Example:
        >>> CVaR(alpha=0.5)(losses=torch.tensor([0.1, 0.4, 0.3, 0.2]))
        tensor([0., 2., 2., 0.])
    """

    def __init__(self, alpha: float) -> None:
        super().__init__()
        self.alpha = check_number("alpha", alpha, low=0.0, high=1.0, low_open=True)
        self.hparams = self.capture_hparams(locals())

    def global_weights(self, losses, mask=None):
        return F.cvar_weights(losses, self.alpha, mask)


@REWEIGHTERS.register("top_k", aliases=("topk",))
class TopK(GlobalLossReweighter):
    r"""Average top-k loss: weight :math:`N/k` on the ``k`` largest losses of the global batch.

    Args:
        k: number of samples kept (>= 1; all samples when larger than the global batch).

    Example:
        >>> TopK(k=2)(losses=torch.tensor([0.1, 0.4, 0.3, 0.2]))
        tensor([0., 2., 2., 0.])
    """

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = check_int("k", k, low=1)
        self.hparams = self.capture_hparams(locals())

    def global_weights(self, losses, mask=None):
        return F.top_k_weights(losses, self.k, mask)


@REWEIGHTERS.register("spectral_risk")
class SpectralRisk(GlobalLossReweighter):
    r"""A general spectral risk measure: sorted-loss weights from a spectrum on quantile levels.

    Args:
        spectrum: non-negative density over quantile levels in ``m`` equal bins, lowest losses first (e.g.
            ``[0, 0, 0, 1]`` = CVaR at 0.25; an increasing ramp = an extremile-like spectrum). Rescaled to mean 1.

    Example:
        >>> SpectralRisk(spectrum=[0.0, 1.0, 2.0])(losses=torch.tensor([3.0, 1.0, 2.0]))
        tensor([2., 0., 1.])
    """

    def __init__(self, spectrum: Sequence[float]) -> None:
        super().__init__()
        tensor = check_probability_vector("spectrum", spectrum, allow_none=False)
        if float(tensor.sum()) <= 0:
            raise ConfigurationError(f"`spectrum` must have a positive sum, got {list(spectrum)!r}")
        self.spectrum = tensor.to(torch.float64)
        self.hparams = self.capture_hparams(locals())

    def global_weights(self, losses, mask=None):
        return F.spectral_risk_weights(losses, self.spectrum, mask)


@REWEIGHTERS.register("loss_truncation", aliases=("truncation",))
class LossTruncation(GlobalLossReweighter):
    r"""Drop the :math:`\lfloor fN \rfloor` highest losses of the global batch (weight 0), keep the rest (weight 1).

    A robust-to-noisy-labels heuristic (high-loss samples are likely mislabelled); weights are not mean 1.

    Args:
        drop_fraction: :math:`f \in [0, 1)`.

    Example:
        >>> LossTruncation(drop_fraction=0.25)(losses=torch.tensor([0.1, 0.9, 0.5, 0.2]))
        tensor([1., 0., 1., 1.])
    """

    def __init__(self, drop_fraction: float) -> None:
        super().__init__()
        self.drop_fraction = check_number("drop_fraction", drop_fraction, low=0.0, high=1.0, high_open=True)
        self.hparams = self.capture_hparams(locals())

    def global_weights(self, losses, mask=None):
        return F.truncation_weights(losses, self.drop_fraction, mask)
