"""Registered preference and unlearning losses (thin modules over :mod:`lightning_losses.functional.preference`).

Inputs (``[N]`` each, one value per pair or sequence; names shared by the whole family):

* paired losses (``dpo``, ``ipo``, ``rdpo``, ``rpo``, ``hdpo``): ``chosen_logps``, ``rejected_logps`` (summed token
  log-probs under the policy) and ``ref_chosen_logps``, ``ref_rejected_logps`` (under the frozen reference model);
  ``rpo`` also takes ``chosen_lengths`` (valid token counts) for its length-averaged SFT term;
* ``simpo`` (reference-free): ``chosen_logps``, ``rejected_logps``, ``chosen_lengths``, ``rejected_lengths``;
* unpaired: ``kto`` takes ``logps``, ``ref_logps``, ``target`` (1 = desirable) and either ``kl_logps`` /
  ``ref_kl_logps`` (mismatched completions, for the global reference point) or ``z_ref``; ``npo`` takes ``logps`` and
  ``ref_logps`` of forget-set sequences.

Example:
    >>> import lightning_losses as ll
    >>> x = torch.tensor([-3.0, -5.0])
    >>> ll.build_loss("dpo", beta=0.1)(chosen_logps=x, rejected_logps=x, ref_chosen_logps=x, ref_rejected_logps=x)
    tensor([0.6931, 0.6931])
"""

from __future__ import annotations

import torch
from torch import Tensor as T

from lightning_losses._validation import check_choice, check_number
from lightning_losses.functional import preference as P
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import PreferenceLoss
from lightning_losses.losses.preference_unpaired import KTO, NPO

__all__ = ["DPO", "HDPO", "IPO", "KTO", "NPO", "PairedLoss", "RDPO", "RPO", "SimPO"]


_PreferenceLoss = PreferenceLoss  # the former private name, kept importable


class PairedLoss(PreferenceLoss):
    """Paired preference loss on ``chosen_logps``, ``rejected_logps``, ``ref_chosen_logps``, ``ref_rejected_logps``.

    The built-in members write their own ``forward``. For subclasses written against the former private base
    (``_PairedLoss``), ``forward`` still calls ``type(self)._fn(<the four inputs>, **self._kwargs())``.
    """

    _fn = staticmethod(P.dpo)

    def _set_divergence(self, divergence: str, f_alpha: float) -> None:
        """Validate and keep f-DPO's ``divergence`` and ``f_alpha`` (see :func:`~lightning_losses.functional.preference
        .divergence_score`)."""
        self.divergence = check_choice("divergence", divergence, P.DIVERGENCES)
        self.f_alpha = check_number("f_alpha", f_alpha, low=0.0, low_open=True)

    def _divergence_options(self) -> dict:
        """``divergence`` and ``f_alpha`` as keyword arguments of the functional forms."""
        return {"divergence": self.divergence, "f_alpha": self.f_alpha}

    def _kwargs(self) -> dict:
        return {"beta": self.beta}

    def forward(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
    ) -> torch.Tensor:
        return type(self)._fn(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **self._kwargs())


_PairedLoss = PairedLoss  # the former private name, kept importable


@LOSSES.register("dpo")
class DPO(PairedLoss):
    r"""DPO :math:`-\log\sigma(\beta\Delta)`; conservative DPO with ``label_smoothing > 0`` (see
    :func:`lightning_losses.functional.preference.dpo`).

    Args:
        beta: ``β > 0``. Default 0.1 (paper).
        label_smoothing: cDPO ``ε`` in ``[0, 0.5]``. Default 0.
        divergence: f-DPO's f-divergence, one of ``reverse_kl`` (DPO), ``forward_kl``, ``js_divergence``,
            ``alpha_divergence`` (TRL's ``f_divergence_type``). Default ``"reverse_kl"``.
        f_alpha: ``α > 0`` of ``alpha_divergence`` (TRL's ``f_alpha_divergence_coef``). Default 0.5.

    Example:
        >>> import lightning_losses as ll
        >>> x = torch.tensor([-1.0])
        >>> ll.build_loss("dpo", label_smoothing=0.1)(
        ...     chosen_logps=x, rejected_logps=x, ref_chosen_logps=x, ref_rejected_logps=x
        ... ).round(decimals=4)
        tensor([0.6931])
    """

    def __init__(
        self,
        beta: float = 0.1,
        label_smoothing: float = 0.0,
        divergence: str = "reverse_kl",
        f_alpha: float = 0.5,
        validate_args: bool = True,
    ) -> None:
        super().__init__(beta, validate_args)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=0.5)
        self._set_divergence(divergence, f_alpha)

    def forward(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
    ) -> torch.Tensor:
        return P.dpo(
            chosen_logps,
            rejected_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            **self._divergence_options(),
        )


@LOSSES.register("ipo")
class IPO(PairedLoss):
    r"""IPO :math:`(\Delta - 1/(2\beta))^2` (Azar et al., 2024). Default ``β = 0.1``; ``divergence`` / ``f_alpha`` as
    in :class:`DPO`.

    Example:
        >>> import lightning_losses as ll
        >>> x = torch.tensor([-1.0])
        >>> ll.build_loss("ipo", beta=0.5)(chosen_logps=x, rejected_logps=x, ref_chosen_logps=x, ref_rejected_logps=x)
        tensor([1.])
    """

    def __init__(
        self, beta: float = 0.1, divergence: str = "reverse_kl", f_alpha: float = 0.5, validate_args: bool = True
    ) -> None:
        super().__init__(beta, validate_args)
        self._set_divergence(divergence, f_alpha)

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        kw = self._divergence_options()
        return P.ipo(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=self.beta, **kw)


@LOSSES.register("rdpo", aliases=("robust_dpo",))
class RDPO(PairedLoss):
    r"""Robust DPO (Chowdhury et al., ICML 2024) for preference labels flipped at rate ``eps``.

    Args:
        beta: ``β > 0``. Default 0.1.
        eps: flip rate in ``[0, 0.5)``. Default 0.1.
        divergence, f_alpha: f-DPO's divergence, as in :class:`DPO`.

    Example:
        >>> import lightning_losses as ll
        >>> x = torch.tensor([-1.0])
        >>> ll.build_loss("rdpo", eps=0.2)(
        ...     chosen_logps=x, rejected_logps=x, ref_chosen_logps=x, ref_rejected_logps=x
        ... ).round(decimals=4)
        tensor([0.6931])
    """

    def __init__(
        self,
        beta: float = 0.1,
        eps: float = 0.1,
        divergence: str = "reverse_kl",
        f_alpha: float = 0.5,
        validate_args: bool = True,
    ) -> None:
        super().__init__(beta, validate_args)
        self.eps = check_number("eps", eps, low=0.0, high=0.5, high_open=True)
        self._set_divergence(divergence, f_alpha)

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        kw = {"eps": self.eps, **self._divergence_options()}
        return P.rdpo(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=self.beta, **kw)


@LOSSES.register("hdpo", aliases=("h_dpo",))
class HDPO(PairedLoss):
    r"""H-DPO, entropy-controllable DPO (Omura et al., 2024): ``α < 1`` sharpens the policy, ``α = 1`` is DPO.

    Args:
        beta: ``β > 0``. Default 0.1.
        alpha: entropy weight ``α > 0``. Default 0.95.

    Example:
        >>> import lightning_losses as ll
        >>> x = torch.tensor([-1.0])
        >>> ll.build_loss("hdpo", alpha=1.0)(
        ...     chosen_logps=x, rejected_logps=x, ref_chosen_logps=x, ref_rejected_logps=x
        ... ).round(decimals=4)
        tensor([0.6931])
    """

    def __init__(self, beta: float = 0.1, alpha: float = 0.95, validate_args: bool = True) -> None:
        super().__init__(beta, validate_args)
        self.alpha = check_number("alpha", alpha, low=0.0, low_open=True)

    def forward(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
    ) -> torch.Tensor:
        return P.hdpo(
            chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=self.beta, alpha=self.alpha
        )


@LOSSES.register("rpo")
class RPO(PreferenceLoss):
    r"""RPO = DPO + ``alpha`` · NLL of the chosen answer (Liu et al., NeurIPS 2024; TRL's ``rpo_alpha``).

    Args:
        beta: ``β > 0``. Default 0.1.
        alpha: weight ``≥ 0`` of the SFT term. Default 1.0.
        sft_reduction: ``"mean"`` (NLL per token: needs ``chosen_lengths``) or ``"sum"`` (sequence NLL). Default
            ``"mean"``.

    Example:
        >>> import lightning_losses as ll
        >>> x = torch.tensor([-4.0])
        >>> n = torch.tensor([2])
        >>> ll.build_loss("rpo")(
        ...     chosen_logps=x, rejected_logps=x, ref_chosen_logps=x, ref_rejected_logps=x, chosen_lengths=n
        ... ).round(decimals=4)
        tensor([2.6931])
    """

    def __init__(
        self, beta: float = 0.1, alpha: float = 1.0, sft_reduction: str = "mean", validate_args: bool = True
    ) -> None:
        super().__init__(beta, validate_args)
        self.alpha = check_number("alpha", alpha, low=0.0)
        self.sft_reduction = check_choice("sft_reduction", sft_reduction, ("mean", "sum"))

    def forward(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor,
        ref_rejected_logps: torch.Tensor,
        chosen_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return P.rpo(
            chosen_logps,
            rejected_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            chosen_lengths,
            beta=self.beta,
            alpha=self.alpha,
            sft_reduction=self.sft_reduction,
        )


@LOSSES.register("simpo")
class SimPO(PreferenceLoss):
    r"""SimPO (Meng et al., NeurIPS 2024): reference-free, length-normalised margin minus ``gamma``.

    Args:
        beta: ``β > 0``. Default 2.0.
        gamma: target reward margin ``γ ≥ 0``. Default 1.0.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("simpo", beta=1.0, gamma=1.0)(
        ...     chosen_logps=torch.tensor([-2.0]), rejected_logps=torch.tensor([-6.0]),
        ...     chosen_lengths=torch.tensor([2]), rejected_lengths=torch.tensor([3]),
        ... )
        tensor([0.6931])
    """

    def __init__(self, beta: float = 2.0, gamma: float = 1.0, validate_args: bool = True) -> None:
        super().__init__(beta, validate_args)
        self.gamma = check_number("gamma", gamma, low=0.0)

    def forward(
        self,
        chosen_logps: torch.Tensor,
        rejected_logps: torch.Tensor,
        chosen_lengths: torch.Tensor,
        rejected_lengths: torch.Tensor,
    ) -> torch.Tensor:
        return P.simpo(chosen_logps, rejected_logps, chosen_lengths, rejected_lengths, beta=self.beta, gamma=self.gamma)
