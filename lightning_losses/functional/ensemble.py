r"""EnsLoss: a stochastic ensemble of calibrated convex losses, one random loss derivative per step (pure function)."""

from __future__ import annotations

import torch

from lightning_losses._validation.tensors import check_binary
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.distributed import all_gather_rows

__all__ = ["ens_loss"]


def _box_cox_inverse(z: torch.Tensor, lam: float) -> torch.Tensor:
    if lam == 0.0:
        return torch.exp(z)
    return torch.clamp_min(1.0 + lam * z, 0.0) ** (1.0 / lam)


def ens_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    lam: float = 0.0,
    generator: torch.Generator | None = None,
    gather: bool = True,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""EnsLoss (Dai, *EnsLoss: Stochastic Calibrated Loss Ensembles for Preventing Overfitting in Classification*,
    2024) for binary labels: the gradient of a random convex, classification-calibrated loss, drawn per call.

    With margins :math:`s_i = (2y_i - 1) z_i`: draw :math:`g_j = -\mathrm{BoxCox}^{-1}_\lambda(\epsilon_j)`,
    :math:`\epsilon_j \sim N(0, 1)` (``λ = 0``: :math:`-e^{\epsilon}`), sort them and give the k-th smallest to the
    sample with the k-th smallest margin (a non-decreasing derivative: convex), clip at :math:`-1`, divide by
    :math:`s_i` where :math:`s_i > 1` (a super-linear tail), subtract :math:`10^{-6}` (negative at 0: calibrated), and
    return :math:`\ell_i = \mathrm{sg}(g_i)\,s_i`. The values only carry the gradient (they are negative); the
    objective's mean gives the authors' ``mean(g · s)``.

    Under DDP with ``gather`` (default) the margins of every rank are sorted together and every rank draws the same
    :math:`g` (pass one ``generator`` seeded alike on every rank), so k ranks equal one process; otherwise the sort
    is per rank. As in the authors' code, which is for binary classification only.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> ens_loss(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 1.0, 0.0]), generator=g).shape
        torch.Size([3])
    """
    check_binary(logits, target, validate_args=validate_args)
    if logits.ndim != 1:
        raise ValueError(f"`ens_loss` takes binary `logits [N]`, got shape {list(logits.shape)}")
    s = (2.0 * target.to(_upcast(logits).dtype) - 1.0) * _upcast(logits)
    margins, mine = s.detach(), None
    if gather:
        gathered, mine = all_gather_rows(margins.unsqueeze(1))
        margins = gathered[:, 0]
    draws = torch.randn(margins.shape[0], generator=generator, dtype=torch.float64).to(margins)
    ordered = torch.sort(-_box_cox_inverse(draws, lam)).values.clamp_min(-1.0)
    g = torch.empty_like(margins)
    g[torch.argsort(margins, stable=True)] = ordered
    g = torch.where(margins > 1.0, g / margins.clamp_min(1.0), g) - 1e-6
    if mine is not None:
        g = g[mine]
    return g * s
