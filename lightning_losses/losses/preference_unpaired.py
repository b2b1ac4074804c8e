"""Registered unpaired preference and unlearning losses: ``kto``, ``apo_zero_unpaired`` and ``npo`` (inputs: see
:mod:`lightning_losses.losses.preference`)."""

from __future__ import annotations

import torch

from lightning_losses._validation import check_number
from lightning_losses.functional import preference as P
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import PreferenceLoss

__all__ = ["KTO", "NPO", "APOZeroUnpaired"]


@LOSSES.register("kto")
class KTO(PreferenceLoss):
    r"""KTO (Ethayarajh et al., ICML 2024) on unpaired desirable / undesirable completions.

    The reference point :math:`z_0` is, by priority: ``z_ref`` when passed (a number or 0-d tensor you estimate
    yourself, e.g. a running mean; detached), else :func:`~lightning_losses.functional.preference.kto_reference_kl`
    of ``kl_logps`` / ``ref_kl_logps`` (mismatched completions), averaged over the **global** batch under DDP (one
    all-reduce; every rank uses the same detached :math:`z_0`, as TRL's gathered estimate). Pass ``z_ref=0`` to skip
    the KL estimate. Without either, a ``ValueError`` says so.

    Args:
        beta: ``β > 0``. Default 0.1.
        desirable_weight: :math:`\lambda_D > 0`. Default 1.0.
        undesirable_weight: :math:`\lambda_U > 0`. Default 1.0. The paper advises
            :math:`\lambda_D n_D / (\lambda_U n_U) \in [1, 4/3]`.

    Example:
        >>> import lightning_losses as ll
        >>> x = torch.tensor([-1.0, -1.0])
        >>> ll.build_loss("kto")(logps=x, ref_logps=x, target=torch.tensor([1, 0]), kl_logps=x, ref_kl_logps=x)
        tensor([0.5000, 0.5000])
    """

    def __init__(
        self,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        validate_args: bool = True,
    ) -> None:
        super().__init__(beta, validate_args)
        self.desirable_weight = check_number("desirable_weight", desirable_weight, low=0.0, low_open=True)
        self.undesirable_weight = check_number("undesirable_weight", undesirable_weight, low=0.0, low_open=True)

    def forward(
        self,
        logps: torch.Tensor,
        ref_logps: torch.Tensor,
        target: torch.Tensor,
        kl_logps: torch.Tensor | None = None,
        ref_kl_logps: torch.Tensor | None = None,
        z_ref: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        if z_ref is None:
            if kl_logps is None or ref_kl_logps is None:
                raise ValueError(
                    "`kto` needs its reference point: pass `kl_logps` and `ref_kl_logps` (policy and reference "
                    "log-probs of mismatched completions) or `z_ref` (0 to disable) to compute_loss(...)"
                )
            z_ref = P.kto_reference_kl(kl_logps, ref_kl_logps)
        return P.kto(
            logps,
            ref_logps,
            target,
            z_ref,
            beta=self.beta,
            desirable_weight=self.desirable_weight,
            undesirable_weight=self.undesirable_weight,
        )


@LOSSES.register("npo")
class NPO(PreferenceLoss):
    r"""NPO for unlearning (Zhang et al., 2024) on forget-set sequences:
    :math:`\frac{2}{\beta}\mathrm{softplus}(\beta(\log\pi - \log\pi_{ref}))`. Default ``β = 0.1``.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("npo", beta=1.0)(logps=torch.tensor([-3.0]), ref_logps=torch.tensor([-3.0])).round(decimals=4)
        tensor([1.3863])
    """

    def __init__(self, beta: float = 0.1, validate_args: bool = True) -> None:
        super().__init__(beta, validate_args)

    def forward(self, logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
        return P.npo(logps, ref_logps, beta=self.beta)


@LOSSES.register("apo_zero_unpaired")
class APOZeroUnpaired(PreferenceLoss):
    r"""APO-zero on unpaired completions (TRL ``KTOTrainer`` ``loss_type="apo_zero_unpaired"``): KTO with its
    reference point at 0, so it needs no mismatched completions. Inputs ``logps``, ``ref_logps``, ``target``.

    Args:
        beta: ``β > 0``. Default 0.1.
        desirable_weight: :math:`\lambda_D > 0`. Default 1.0.
        undesirable_weight: :math:`\lambda_U > 0`. Default 1.0.

    Example:
        >>> import lightning_losses as ll
        >>> x = torch.tensor([-1.0, -1.0])
        >>> ll.build_loss("apo_zero_unpaired")(logps=x, ref_logps=x, target=torch.tensor([1, 0]))
        tensor([0.5000, 0.5000])
    """

    def __init__(
        self,
        beta: float = 0.1,
        desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0,
        validate_args: bool = True,
    ) -> None:
        super().__init__(beta, validate_args)
        self.desirable_weight = check_number("desirable_weight", desirable_weight, low=0.0, low_open=True)
        self.undesirable_weight = check_number("undesirable_weight", undesirable_weight, low=0.0, low_open=True)

    def forward(self, logps: torch.Tensor, ref_logps: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        kw = {"desirable_weight": self.desirable_weight, "undesirable_weight": self.undesirable_weight}
        return P.apo_zero_unpaired(logps, ref_logps, target, beta=self.beta, **kw)
