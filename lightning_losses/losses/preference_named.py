r"""TRL's DPO variants under their own registered names: f-divergence DPO and LD-DPO.

TRL selects these with options of ``DPOTrainer`` (``f_divergence_type``, ``ld_alpha``) rather than a ``loss_type``;
here they are also registered losses, so ``lightning-losses list`` finds them:

* ``dpo_reverse_kl`` (``dpo`` itself), ``dpo_forward_kl``, ``dpo_js_divergence``, ``dpo_alpha_divergence``:
  f-DPO (Wang et al., ICLR 2024), :class:`~lightning_losses.losses.preference.DPO` with its ``divergence`` fixed;
* ``ld_dpo``: LD-DPO (Liu et al., 2024), DPO on length-desensitised sequence log-probs
  (:func:`~lightning_losses.functional.preference.ld_sequence_logps`) computed from the token log-probs.

Example:
    >>> import lightning_losses as ll
    >>> x = torch.tensor([-3.0, -5.0])
    >>> ll.build_loss("dpo_forward_kl")(chosen_logps=x, rejected_logps=x, ref_chosen_logps=x, ref_rejected_logps=x)
    tensor([0.6931, 0.6931])
"""

from __future__ import annotations

import torch

from lightning_losses._validation import check_number
from lightning_losses.functional import preference as P
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.preference import DPO

__all__ = ["LDDPO", "DPOAlphaDivergence", "DPOForwardKL", "DPOJSDivergence", "DPOReverseKL"]


@LOSSES.register("dpo_reverse_kl")
class DPOReverseKL(DPO):
    r"""f-DPO with the reverse KL (TRL ``f_divergence_type="reverse_kl"``, its default): DPO itself, the score of each
    log-ratio :math:`r` is :math:`r`. Registered so that each TRL divergence name is listed.

    Args:
        beta: ``β > 0``. Default 0.1.
        label_smoothing: cDPO ``ε`` in ``[0, 0.5]``. Default 0.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, validate_args: bool = True) -> None:
        super().__init__(beta, label_smoothing, divergence="reverse_kl", validate_args=validate_args)


@LOSSES.register("dpo_forward_kl")
class DPOForwardKL(DPO):
    r"""f-DPO with the forward KL (TRL ``f_divergence_type="forward_kl"``): the score of each log-ratio
    :math:`r = \log\pi/\pi_{ref}` is :math:`1 - e^{-r}`, the loss :math:`-\log\sigma(\beta(e^{-r_l} - e^{-r_w}))`.

    Args:
        beta: ``β > 0``. Default 0.1.
        label_smoothing: cDPO ``ε`` in ``[0, 0.5]``. Default 0.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, validate_args: bool = True) -> None:
        super().__init__(beta, label_smoothing, divergence="forward_kl", validate_args=validate_args)


@LOSSES.register("dpo_js_divergence")
class DPOJSDivergence(DPO):
    r"""f-DPO with the Jensen-Shannon divergence (TRL ``f_divergence_type="js_divergence"``): the score of each
    log-ratio :math:`r` is :math:`\log 2 + \log\sigma(r)`.

    Args:
        beta: ``β > 0``. Default 0.1.
        label_smoothing: cDPO ``ε`` in ``[0, 0.5]``. Default 0.
    """

    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0, validate_args: bool = True) -> None:
        super().__init__(beta, label_smoothing, divergence="js_divergence", validate_args=validate_args)


@LOSSES.register("dpo_alpha_divergence")
class DPOAlphaDivergence(DPO):
    r"""f-DPO with the α-divergence (TRL ``f_divergence_type="alpha_divergence"``, ``f_alpha_divergence_coef``): the
    score of each log-ratio :math:`r` is :math:`(e^{(\alpha - 1) r} - 1)/(\alpha - 1)` (TRL ≥ 0.29's parametrisation;
    ``α → 1`` is DPO).

    Args:
        beta: ``β > 0``. Default 0.1.
        label_smoothing: cDPO ``ε`` in ``[0, 0.5]``. Default 0.
        f_alpha: ``α > 0``. Default 0.5 (TRL's).
    """

    def __init__(
        self, beta: float = 0.1, label_smoothing: float = 0.0, f_alpha: float = 0.5, validate_args: bool = True
    ) -> None:
        divergence = "alpha_divergence"
        super().__init__(beta, label_smoothing, divergence=divergence, f_alpha=f_alpha, validate_args=validate_args)


@LOSSES.register("ld_dpo")
class LDDPO(DPO):
    r"""LD-DPO (Liu et al., *LD-DPO: Length Desensitization in Direct Preference Optimization*, 2024; TRL
    ``ld_alpha``): DPO on sequence log-probs in which the tokens beyond a pair's shared length
    :math:`\ell_p = \min(|y_w|, |y_l|)` count with weight :math:`\alpha`:
    :math:`\log\pi(y) = \sum_{t \le \ell_p}\log\pi(y_t) + \alpha\sum_{t > \ell_p}\log\pi(y_t)`, for the policy and the
    reference alike. ``ld_alpha = 1`` is DPO on summed log-probs.

    Inputs: ``chosen_token_logps`` / ``rejected_token_logps`` (``[N, T]`` / ``[N, T']``, the policy's token log-probs
    of each answer), ``ref_chosen_token_logps`` / ``ref_rejected_token_logps`` (the reference's, same shapes) and
    ``chosen_mask`` / ``rejected_mask`` (1 on the answer's tokens). Returns ``[N]``.

    Args:
        beta: ``β > 0``. Default 0.1.
        ld_alpha: :math:`\alpha` in ``[0, 1]``. Default 0.5 (the paper's range is 0.1-0.9 by model; TRL has no
            default, ``None`` turns it off there).
        label_smoothing: cDPO ``ε`` in ``[0, 0.5]``. Default 0.
        divergence, f_alpha: as in :class:`~lightning_losses.losses.preference.DPO`.

    Example:
        >>> import lightning_losses as ll
        >>> lp, mask = torch.tensor([[-1.0, -1.0, -1.0]]), torch.tensor([[1, 1, 1]])
        >>> ll.build_loss("ld_dpo")(lp, lp, lp, lp, mask, mask)
        tensor([0.6931])
    """

    def __init__(
        self,
        beta: float = 0.1,
        ld_alpha: float = 0.5,
        label_smoothing: float = 0.0,
        divergence: str = "reverse_kl",
        f_alpha: float = 0.5,
        validate_args: bool = True,
    ) -> None:
        super().__init__(beta, label_smoothing, divergence=divergence, f_alpha=f_alpha, validate_args=validate_args)
        self.ld_alpha = check_number("ld_alpha", ld_alpha, low=0.0, high=1.0)

    def forward(  # type: ignore[override]
        self,
        chosen_token_logps: torch.Tensor,
        rejected_token_logps: torch.Tensor,
        ref_chosen_token_logps: torch.Tensor,
        ref_rejected_token_logps: torch.Tensor,
        chosen_mask: torch.Tensor,
        rejected_mask: torch.Tensor,
    ) -> torch.Tensor:
        masks = (chosen_mask, rejected_mask)
        chosen, rejected = P.ld_sequence_logps(chosen_token_logps, rejected_token_logps, *masks, ld_alpha=self.ld_alpha)
        ref_chosen, ref_rejected = P.ld_sequence_logps(
            ref_chosen_token_logps, ref_rejected_token_logps, *masks, ld_alpha=self.ld_alpha
        )
        return super().forward(chosen, rejected, ref_chosen, ref_rejected)
