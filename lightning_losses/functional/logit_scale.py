r"""Logit-scale controls (pure functions): the PaLM z-loss, spectral decoupling and LogitClip's norm clipping.

``z_loss`` and ``spectral_decoupling`` are per-sample penalties on ``logits [N, C]`` meant to be added beside any
classification loss (as extra objective terms); ``clip_logits`` transforms logits before any loss (the ``logit_clip``
wrapper loss uses it).
"""

from __future__ import annotations

import math

import torch

from lightning_losses._validation import check_number
from lightning_losses._validation.tensors import require_tensor, shape_str
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.errors import ConfigurationError

__all__ = ["check_norm_order", "clip_logits", "spectral_decoupling", "z_loss"]


def _check_logits(logits: torch.Tensor, *, allow_1d: bool = False) -> torch.Tensor:
    require_tensor("logits", logits)
    ndims = (1, 2) if allow_1d else (2,)
    if logits.ndim not in ndims or not logits.is_floating_point():
        shape = "[N] or [N, C]" if allow_1d else "[N, C]"
        raise ValueError(f"`logits` must be a floating tensor of shape {shape}, got {logits.dtype} {shape_str(logits)}")
    return _upcast(logits)


def check_norm_order(p: float | str) -> float:
    """Validate a vector-norm order: a number ``>= 1`` or ``inf`` (also ``"inf"``)."""
    if isinstance(p, str) and p.strip().lower() in ("inf", "infinity"):
        return math.inf
    if isinstance(p, (int, float)) and not isinstance(p, bool) and p == math.inf:
        return math.inf
    try:
        return check_number("p", p, low=1.0)
    except ConfigurationError:
        raise ConfigurationError(f"`p` must be a norm order >= 1 or 'inf', got {p!r}") from None


def z_loss(logits: torch.Tensor, *, coef: float = 1e-4) -> torch.Tensor:
    r"""PaLM-style z-loss (Chowdhery et al., 2022; Wortsman et al., *Small-scale proxies for large-scale Transformer
    training instabilities*, ICLR 2024): :math:`\ell_i = \alpha_z\,(\log Z_i)^2`, :math:`\log Z_i =
    \mathrm{logsumexp}_c\, z_{ic}`.

    Pushes the log-normaliser toward 0 (keeps logits from drifting). ``coef = 1e-4`` is PaLM's value (t5x's default is
    0). Its logit gradient is :math:`2\alpha_z \log Z \cdot \mathrm{softmax}(z)`, as in t5x's fused cross entropy.
    Not the spherical Z-loss (:func:`~lightning_losses.functional.spherical_z_loss`).

    Example:
        >>> z_loss(torch.tensor([[0.0, 0.0]]), coef=1.0).round(decimals=4)
        tensor([0.4805])
    """
    coef = check_number("coef", coef, low=0.0)
    return coef * torch.logsumexp(_check_logits(logits), dim=-1).square()


def spectral_decoupling(logits: torch.Tensor, *, lam: float, gamma: float = 0.0) -> torch.Tensor:
    r"""Spectral decoupling (Pezeshki et al., *Gradient Starvation: A Learning Proclivity in Neural Networks*,
    NeurIPS 2021): :math:`\ell_i = \frac{\lambda}{2}\,\lVert z_i - \gamma\rVert_2^2` on the logits.

    This is the paper's per-sample form (sum over classes). DomainBed's ``SD`` uses ``sd_reg * mean(z^2)`` over all
    ``N*C`` entries (default ``sd_reg = 0.1``): the same penalty with ``lam = 2 * sd_reg / C``. ``gamma`` is the
    paper's per-target shift (0 by default).

    Example:
        >>> spectral_decoupling(torch.tensor([[1.0, 2.0]]), lam=0.5)
        tensor([1.2500])
    """
    lam = check_number("lam", lam, low=0.0)
    gamma = check_number("gamma", gamma)
    return 0.5 * lam * (_check_logits(logits) - gamma).square().sum(dim=-1)


def clip_logits(logits: torch.Tensor, *, tau: float = 1.0, p: float | str = 2.0) -> torch.Tensor:
    r"""LogitClip's norm clipping (Wei et al., *Mitigating Memorization of Noisy Labels by Clipping the Model
    Prediction*, ICML 2023): rescale each logit vector so that :math:`\lVert z_i\rVert_p \le 1/\tau`,

    .. math:: \operatorname{clip}(z_i) = z_i \cdot \min\big(1,\ \tfrac{1/\tau}{\lVert z_i\rVert_p}\big).

    The paper bounds the norm by ``1/tau``. The authors' code (*hongxin001/LogitClip*) rescales to norm ``1/tau``
    only when the norm exceeds ``tau``, which is the same map for ``tau = 1`` (its default) but discontinuous
    otherwise; we use the continuous clip above, so for ``tau != 1`` results differ from that code where
    ``min(tau, 1/tau) < ||z|| < max(tau, 1/tau)``. ``[N]`` logits (binary) are clipped elementwise.

    Example:
        >>> clip_logits(torch.tensor([[3.0, 4.0], [0.3, 0.4]]), tau=1.0)
        tensor([[0.6000, 0.8000],
                [0.3000, 0.4000]])
    """
    tau = check_number("tau", tau, low=0.0, low_open=True)
    p = check_norm_order(p)
    z = _check_logits(logits, allow_1d=True)
    bound = 1.0 / tau
    norm = z.abs() if z.ndim == 1 else torch.linalg.vector_norm(z, ord=p, dim=-1, keepdim=True)
    scale = bound / norm.clamp_min(bound)
    return z * scale
