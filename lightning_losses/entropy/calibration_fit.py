r"""Calibration functions: expected calibration error (torchmetrics), the temperature fit of temperature scaling,
and the collection of held-out logits that :class:`~lightning_losses.entropy.TemperatureScaling` fits on (see
:mod:`~lightning_losses.entropy.calibration` for the method and the callbacks)."""

from __future__ import annotations

from typing import Any

import torch
from torchmetrics.functional.classification import multiclass_calibration_error

from lightning_losses.distributed import all_gather_with_grad
from lightning_losses.entropy._batch import ForwardFn, batch_logits, batch_target

__all__ = ["collect_logits", "expected_calibration_error", "fit_temperature", "to_device"]


def expected_calibration_error(logits: torch.Tensor, target: torch.Tensor, n_bins: int = 15) -> torch.Tensor:
    """ECE (l1, equal-width bins) of ``softmax(logits [N, C])`` against integer ``target [N]`` (torchmetrics).

    Example:
        >>> float(expected_calibration_error(torch.tensor([[9.0, 0.0], [0.0, 9.0]]), torch.tensor([0, 1]))) < 1e-3
        True
    """
    probs = torch.softmax(logits.detach().float(), dim=-1)
    return multiclass_calibration_error(probs, target, num_classes=logits.shape[-1], n_bins=n_bins, norm="l1")


def fit_temperature(
    logits: torch.Tensor, target: torch.Tensor, max_iter: int = 100, bounds: tuple[float, float] = (0.05, 20.0)
) -> float:
    r"""The temperature :math:`T^* = \arg\min_T \frac1N\sum_i -\log\mathrm{softmax}(z_i/T)_{y_i}`.

    Optimised over :math:`\log T` (so :math:`T > 0`) with L-BFGS in float64, starting from ``T = 1``, then clipped to
    ``bounds``: on a perfectly classified set the NLL keeps falling as :math:`T \to 0`, so the fit is degenerate
    (use more or harder held-out data).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = torch.randn(4000, 3, generator=g) * 2.0  # calibrated logits: labels drawn from softmax(z)
        >>> y = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)
        >>> t = fit_temperature(z * 4.0, y)  # logits 4x too large: T recovers about 4
        >>> 3.5 < t < 4.5
        True
    """
    z = logits.detach().double()
    y = target.detach()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return min(max(float(log_t.detach().exp()), bounds[0]), bounds[1])


def collect_logits(pl_module: Any, loader: Any, input_key: str, target_key: str, forward_fn: ForwardFn | None):
    """``(logits, target)`` of every batch of ``loader`` (``pl_module`` in eval mode, no grad), gathered over ranks."""
    logits, targets = [], []
    was_training = pl_module.training
    pl_module.eval()
    with torch.no_grad():
        for batch in loader:
            batch = to_device(batch, pl_module.device)
            logits.append(batch_logits(pl_module, batch, input_key, forward_fn).float())
            targets.append(batch_target(batch, target_key))
    pl_module.train(was_training)
    return all_gather_with_grad(torch.cat(logits)), all_gather_with_grad(torch.cat(targets))


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with its tensors (also inside dicts, lists and tuples) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch
