"""Registered TRL ``DPOTrainer`` loss types beyond DPO / IPO / robust (thin modules over
:mod:`lightning_losses.functional.preference`).

Inputs, as every paired loss: ``chosen_logps``, ``rejected_logps``, ``ref_chosen_logps``, ``ref_rejected_logps``
(``[N]``, summed token log-probs under the policy and the frozen reference). TRL's ``loss_type`` names are the
registry names; the README maps every TRL option to this library.

Example:
    >>> import torch
    >>> import lightning_losses as ll
    >>> x = torch.tensor([-3.0, -5.0])
    >>> ll.build_loss("apo_zero")(chosen_logps=x, rejected_logps=x, ref_chosen_logps=x, ref_rejected_logps=x)
    tensor([1., 1.])
"""

from __future__ import annotations

from torch import Tensor as T

from lightning_losses._validation import check_number
from lightning_losses.functional import preference as P
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.preference import PairedLoss

__all__ = ["AOT", "APODown", "APOZero", "AOTUnpaired", "BCOPair", "DiscoPOP", "ExoPair", "Hinge", "NCAPair", "SPPOHard"]


class _Paired(PairedLoss):
    """A paired loss whose only hyper-parameter is ``beta > 0`` (default 0.1)."""

    def __init__(self, beta: float = 0.1, validate_args: bool = True) -> None:
        super().__init__(beta, validate_args)


@LOSSES.register("hinge", aliases=("slic",))
class Hinge(PairedLoss):
    r"""SLiC-HF hinge :math:`\max(0, 1 - \beta\Delta)` (TRL ``"hinge"``; see :func:`~lightning_losses.functional.
    preference.hinge`).

    Args:
        beta: ``β > 0`` (the margin is ``1/β``). Default 0.1.
        divergence, f_alpha: f-DPO's divergence, as in :class:`~lightning_losses.losses.preference.DPO`.
    """

    def __init__(
        self, beta: float = 0.1, divergence: str = "reverse_kl", f_alpha: float = 0.5, validate_args: bool = True
    ) -> None:
        super().__init__(beta, validate_args)
        self._set_divergence(divergence, f_alpha)

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        kw = self._divergence_options()
        return P.hinge(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=self.beta, **kw)


@LOSSES.register("exo_pair", aliases=("exo",))
class ExoPair(PairedLoss):
    r"""EXO-pref (Ji et al., ICML 2024): :math:`\mathrm{KL}(\sigma(\beta\Delta)\,\|\,1-\varepsilon)` (TRL
    ``"exo_pair"``).

    Args:
        beta: ``β > 0``. Default 0.1.
        label_smoothing: ``ε`` in ``(0, 1)``, the target's smoothing. Default 1e-3 (paper).
        divergence, f_alpha: f-DPO's divergence, as in :class:`~lightning_losses.losses.preference.DPO`.
    """

    def __init__(
        self,
        beta: float = 0.1,
        label_smoothing: float = 1e-3,
        divergence: str = "reverse_kl",
        f_alpha: float = 0.5,
        validate_args: bool = True,
    ) -> None:
        super().__init__(beta, validate_args)
        self.label_smoothing = check_number(
            "label_smoothing", label_smoothing, low=0.0, high=1.0, low_open=True, high_open=True
        )
        self._set_divergence(divergence, f_alpha)

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        kw = {"label_smoothing": self.label_smoothing, **self._divergence_options()}
        return P.exo_pair(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=self.beta, **kw)


@LOSSES.register("discopop", aliases=("lrml",))
class DiscoPOP(PairedLoss):
    r"""DiscoPOP / LRML (Lu et al., NeurIPS 2024): a log-ratio modulated blend of the logistic and exponential losses
    (TRL ``"discopop"``).

    Args:
        beta: ``β > 0``. Default 0.1.
        tau: modulation temperature ``τ`` in ``(0, 1)``. Default 0.05 (paper, TRL's ``discopop_tau``).
        divergence, f_alpha: f-DPO's divergence, as in :class:`~lightning_losses.losses.preference.DPO`.
    """

    def __init__(
        self,
        beta: float = 0.1,
        tau: float = 0.05,
        divergence: str = "reverse_kl",
        f_alpha: float = 0.5,
        validate_args: bool = True,
    ) -> None:
        super().__init__(beta, validate_args)
        self.tau = check_number("tau", tau, low=0.0, high=1.0, low_open=True, high_open=True)
        self._set_divergence(divergence, f_alpha)

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        kw = {"tau": self.tau, **self._divergence_options()}
        return P.discopop(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=self.beta, **kw)


@LOSSES.register("nca_pair", aliases=("nca",))
class NCAPair(_Paired):
    """NCA, paired (Chen et al., NeurIPS 2024; TRL ``"nca_pair"``). Default ``β = 0.1``."""

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        return P.nca_pair(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=self.beta)


@LOSSES.register("bco_pair")
class BCOPair(_Paired):
    """BCO, paired and stateless as TRL ≥ 0.29 ``"bco_pair"`` (Jung et al., 2024). Default ``β = 0.1``."""

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        return P.bco_pair(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=self.beta)


@LOSSES.register("sppo_hard")
class SPPOHard(_Paired):
    """SPPO with hard win probabilities (Wu et al., 2024; TRL ``"sppo_hard"``). Default ``β = 0.1``."""

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        return P.sppo_hard(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=self.beta)


@LOSSES.register("apo_zero")
class APOZero(_Paired):
    """APO-zero (D'Oosterlinck et al., 2024; TRL ``"apo_zero"``): chosen up, rejected down. Default ``β = 0.1``."""

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        return P.apo_zero(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=self.beta)


@LOSSES.register("apo_down")
class APODown(_Paired):
    """APO-down (D'Oosterlinck et al., 2024; TRL ``"apo_down"``): both down, rejected more. Default ``β = 0.1``."""

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        return P.apo_down(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=self.beta)


class _Sorted(PairedLoss):
    """AOT's options: ``beta > 0`` (default 0.1) and ``label_smoothing`` in ``[0, 0.5]`` (default 0)."""

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, validate_args: bool = True) -> None:
        super().__init__(beta, validate_args)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=0.5)


@LOSSES.register("aot")
class AOT(_Sorted):
    """Paired AOT (Melnyk et al., NeurIPS 2024; TRL ``"aot"``): quantile rows over the **global** batch, not pairs;
    see :mod:`lightning_losses.functional.preference_sorted`."""

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        kw = {"beta": self.beta, "label_smoothing": self.label_smoothing}
        return P.aot(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **kw)


@LOSSES.register("aot_unpaired", aliases=("aot_pair",))
class AOTUnpaired(_Sorted):
    """Unpaired AOT (TRL ``"aot_unpaired"``, formerly ``"aot_pair"``): quantile rows over the global batch."""

    def forward(self, chosen_logps: T, rejected_logps: T, ref_chosen_logps: T, ref_rejected_logps: T) -> T:
        kw = {"beta": self.beta, "label_smoothing": self.label_smoothing}
        return P.aot_unpaired(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, **kw)
