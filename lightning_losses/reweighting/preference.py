r"""Preference-pair weights: WPO (Zhou et al., *WPO: Enhancing RLHF with Weighted Preference Optimization*, EMNLP
2024).

WPO simulates on-policy learning with off-policy pairs by weighting each pair with its probability under the current
policy, :math:`w = w(x, y_w)\,w(x, y_l)`, :math:`\log w(x, y)` the per-token-averaged, alignment-normalised log-prob of
:func:`lightning_losses.functional.preference.wpo_log_weights` (detached). Pass the two per-sequence log-weights to
``compute_loss(..., chosen_logw=..., rejected_logw=...)``; it applies to any paired loss (DPO, IPO, SimPO, ...).

Example:
    >>> from lightning_losses.reweighting import build_reweighter
    >>> r = build_reweighter("wpo")
    >>> r(losses=torch.ones(2), chosen_logw=torch.tensor([0.0, -1.0]), rejected_logw=torch.tensor([0.0, 0.0]))
    tensor([1.4621, 0.5379])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from lightning_losses._validation import check_number
from lightning_losses.reweighting.base import REWEIGHTERS, Reweighter

__all__ = ["WPO"]


@REWEIGHTERS.register("wpo", aliases=("weighted_preference",))
class WPO(Reweighter):
    r"""WPO pair weights, normalised to mean 1 over the global batch.

    :math:`\tilde w_i = \min(\exp(\log w(x_i, y_{w,i}) + \log w(x_i, y_{l,i})),\ w_{max})` (TRL's ``use_weighting``
    clamps at 1), then :math:`w_i = N\,\tilde w_i / \sum_j \tilde w_j` over the all-gathered batch (computed as
    ``N · softmax(log w̃)``: no underflow when every pair is improbable). The objective divides by the weight sum, so
    the step equals TRL's ``mean(w̃ · ℓ)`` up to the per-batch factor ``mean(w̃)``, which TRL folds into the
    learning rate; :meth:`log_values` reports that mean.

    Args:
        max_weight: clamp of the unnormalised pair weight (``> 0``), or ``None`` for none. Default 1.0 (TRL).

    Inputs:
        chosen_logw, rejected_logw: ``[N]`` per-sequence log-weights (``wpo_log_weights`` of the chosen and rejected
            answers; ``alignment="none"`` gives the plain length-normalised probability variant).
    """

    requires = ("chosen_logw", "rejected_logw")
    finite_inputs = ("chosen_logw", "rejected_logw")  # a NaN / inf log-weight leaves the pair out, as a NaN loss

    def __init__(self, max_weight: float | None = 1.0) -> None:
        super().__init__()
        self.max_weight = None if max_weight is None else check_number("max_weight", max_weight, low=0.0, low_open=True)
        self.hparams = self.capture_hparams(locals())
        self.statistics["logw"] = "cat"
        self.mean_weight = torch.zeros((), dtype=torch.float64)

    def local_statistics(self, losses: torch.Tensor, inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
        parts = []
        for key in self.requires:
            value = inputs[key]
            if not isinstance(value, torch.Tensor) or value.shape != losses.shape or not value.is_floating_point():
                got = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(
                    f"reweighter `wpo`: `{key}` must be a floating tensor of shape {list(losses.shape)}, got {got}"
                )
            parts.append(value.detach().to(torch.float64))
        logw = parts[0] + parts[1]
        if self.max_weight is not None:
            logw = logw.clamp(max=math.log(self.max_weight))
        return {"logw": logw}

    def compute(self, losses, synced, inputs):
        logw, valid = synced["logw"], synced.get("sample_mask")
        if valid is None:
            valid = torch.ones_like(logw, dtype=torch.bool)
        logw = logw.masked_fill(~valid, float("-inf"))  # masked / non-finite pairs take no part
        n = valid.sum().to(logw.dtype)
        self.mean_weight = logw.exp().sum() / n.clamp_min(1.0)
        weights = torch.where(valid, torch.softmax(logw, dim=0) * n, 0.0)  # all masked: softmax is NaN, kept out
        return weights[self.local_slice].to(losses.dtype)

    def log_values(self) -> dict[str, torch.Tensor]:
        return {"wpo_mean_weight": self.mean_weight}
