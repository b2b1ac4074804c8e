r"""Registered entropy-controlling policy losses: ``steer`` and ``ce_gppo`` (:class:`PolicyLoss` with a token-level
control; the formulas are in :mod:`lightning_losses.functional.policy_entropy`).

Both take the inputs of :class:`~lightning_losses.losses.policy.PolicyLoss` (``logps``, ``old_logps``,
``advantages``, ``mask`` ``[N, T]``; STEER also the per-token ``entropy`` of the current policy) and return one loss
per response ``[N]``, token-aggregated by ``normalization`` (default ``"token"``, the authors' ``token-mean``). Every
other control of :class:`PolicyLoss` (entropy bonus, AEnt band, KL to a reference, Clip-Cov) composes with them.

Defaults follow the authors' loss functions (verl ``clip_ratio_c = 3.0`` dual clip included); their training
scripts use ``clip_eps_high = 0.28`` (STEER) and ``dual_clip = 10.0`` (both).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lightning_losses._validation import check_choice, check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.policy_entropy import STEER_MAPPINGS, steer_weights
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.policy import PolicyLoss

__all__ = ["CEGPPO", "STEER"]


@LOSSES.register("steer", tags=("entropy",))
class STEER(PolicyLoss):
    r"""STEER (Hao et al., *Rethinking Entropy Interventions in RLVR: An Entropy Change Perspective*, 2025): PPO's
    clipped surrogate with each token's loss multiplied by a detached weight :math:`\lambda_t` that shrinks with the
    token's estimated entropy change :math:`|\Omega_t|`, so no token moves the entropy much in one step.

    .. math:: \ell_t = \lambda_t\,\ell^{PPO}_t,\qquad
        \Omega_t = \frac{A_t}{\pi_{old}(y_t)}\pi(y_t)(1-\pi(y_t))(\log\pi(y_t) + H_t),\qquad
        \lambda_t = \mathrm{clip}(e^{-k|\Omega_t|}, \lambda_{min}, 1),\ k = \frac{-\log\lambda_{min}}{\max(\max|\Omega|,
        0.02)}

    (:func:`~lightning_losses.functional.policy_entropy.steer_weights`; the max over the valid tokens of the global
    batch). Needs ``entropy [N, T]``: the current policy's entropy at each token (e.g.
    :func:`~lightning_losses.functional.policy.clamped_entropy` of the logits; only its value is read).

    Args (the others are :class:`~lightning_losses.losses.policy.PolicyLoss`'s):
        mapping: ``"exp"`` (the paper's :math:`e^{-k|\Omega|}`, authors' ``run_exp.sh``) or ``"linear"`` (``|Ω|``
            mapped linearly from ``weight_max`` at the smallest to ``weight_min`` at the largest, ``run_linear.sh``).
            Default ``"exp"``.
        weight_min: :math:`\lambda_{min}`, in ``(0, 1]``. Default 0.8 (authors' scripts).
        weight_max: the largest weight of ``"linear"`` (``"exp"`` caps at 1). Default 1.0 (``run_linear.sh`` uses
            1.2).
        dual_clip: dual-clip constant (authors' function default 3.0; scripts 10.0; ``None``: off).

    Example:
        >>> import lightning_losses as ll
        >>> lp = torch.log(torch.tensor([[0.5, 0.9]]))
        >>> ll.build_loss("steer", mapping="linear", weight_max=1.2)(
        ...     logps=lp, old_logps=lp, advantages=torch.ones(1), mask=torch.ones(1, 2), entropy=torch.ones(1, 2)
        ... )  # weights 0.8 and 1.2 on -A = -1, token mean
        tensor([-1.])
    """

    _default_normalization = "token"

    def __init__(
        self,
        mapping: str = "exp",
        weight_min: float = 0.8,
        weight_max: float = 1.0,
        clip_eps: float = 0.2,
        clip_eps_high: float | None = None,
        dual_clip: float | None = 3.0,
        normalization: str | None = None,
        entropy_coef: float = 0.0,
        entropy_band: Sequence[float] | None = None,
        entropy_coef_lr: float = 1e-3,
        entropy_coef_bounds: Sequence[float] = (1e-5, 3e-3),
        warmup_steps: int = 0,
        kl_coef: float = 0.0,
        cov_control: str = "none",
        cov_ratio: float = 2e-4,
        clip_cov_bounds: Sequence[float] = (1.0, 5.0),
        kl_cov_coef: float = 1.0,
        seed: int = 0,
        validate_args: bool = True,
    ) -> None:
        super().__init__(
            clip_eps, clip_eps_high, dual_clip, normalization, entropy_coef, entropy_band, entropy_coef_lr,
            entropy_coef_bounds, warmup_steps, kl_coef, cov_control, cov_ratio, clip_cov_bounds, kl_cov_coef, seed,
            validate_args=validate_args,
        )  # fmt: skip
        self.mapping = check_choice("mapping", mapping, STEER_MAPPINGS)
        self.weight_min = check_number("weight_min", weight_min, low=0.0, high=1.0, low_open=True)
        self.weight_max = check_number("weight_max", weight_max, low=self.weight_min)

    def forward(
        self,
        logps: torch.Tensor,
        old_logps: torch.Tensor,
        advantages: torch.Tensor,
        mask: torch.Tensor,
        entropy: torch.Tensor,
        ref_logps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return super().forward(logps, old_logps, advantages, mask, ref_logps=ref_logps, entropy=entropy)

    def _ppo_options(self, logps, old_logps, advantages, mask, entropy) -> dict:
        if not isinstance(entropy, torch.Tensor):
            raise ValueError("`entropy` [N, T] (the current policy's per-token entropy) is required by STEER")
        weights = steer_weights(
            logps, old_logps, advantages, entropy, mask,
            mapping=self.mapping, weight_min=self.weight_min, weight_max=self.weight_max,
        )  # fmt: skip
        return {"token_weights": weights}


@LOSSES.register("ce_gppo", aliases=("gppo",), tags=("entropy",))
class CEGPPO(PolicyLoss):
    r"""CE-GPPO (Su et al., *CE-GPPO: Coordinating Entropy via Gradient-Preserving Clipping Policy Optimization in
    Reinforcement Learning*, 2025): PPO's clipped surrogate where the tokens PPO clips keep a bounded gradient.

    .. math:: \ell_t = \begin{cases} -\beta_1(1-\epsilon)\frac{r_t}{\mathrm{sg}(r_t)}A_t & r_t<1-\epsilon,\ A_t<0
        \text{ (negative advantage, low probability: exploitation)}\\
        -\beta_2(1+\epsilon_{high})\frac{r_t}{\mathrm{sg}(r_t)}A_t & r_t>1+\epsilon_{high},\ A_t>0
        \text{ (positive advantage, low probability: exploration)}\\
        \ell^{PPO}_t & \text{otherwise}\end{cases}

    then the dual clip :math:`\min(\ell_t, -cA_t)` for :math:`A_t<0`
    (:func:`~lightning_losses.functional.policy_entropy.preserve_clipped_gradients`). ``β1 = β2 = 0`` is PPO's
    gradient; a larger ``β1`` lowers entropy (faster convergence), a larger ``β2`` raises it (more exploration).

    Args (the others are :class:`~lightning_losses.losses.policy.PolicyLoss`'s):
        beta1: coefficient of the low-ratio, negative-advantage clipped tokens ``>= 0``. Default 0.75 (authors'
            function default and 7B script; their 1.5B script uses 0.5).
        beta2: coefficient of the high-ratio, positive-advantage clipped tokens ``>= 0``. Default 1.0.
        dual_clip: dual-clip constant (authors' function default 3.0; scripts 10.0; ``None``: off).
        cov_control: ``"none"`` or ``"clip_cov"`` (``"kl_cov"`` removes the clipping CE-GPPO acts on).

    Example:
        >>> import lightning_losses as ll
        >>> lp = torch.tensor([[-1.0]], requires_grad=True)  # ratio e^-1 < 0.8 with A = -1: clipped by PPO
        >>> out = ll.build_loss("ce_gppo", beta1=0.5)(logps=lp, old_logps=torch.zeros(1, 1),
        ...                                          advantages=-torch.ones(1), mask=torch.ones(1, 1))
        >>> out.detach(), torch.autograd.grad(out.sum(), lp)[0]  # value 0.5 * 0.8; PPO's gradient would be 0
        (tensor([0.4000]), tensor([[0.4000]]))
    """

    _default_normalization = "token"

    def __init__(
        self,
        beta1: float = 0.75,
        beta2: float = 1.0,
        clip_eps: float = 0.2,
        clip_eps_high: float | None = None,
        dual_clip: float | None = 3.0,
        normalization: str | None = None,
        entropy_coef: float = 0.0,
        entropy_band: Sequence[float] | None = None,
        entropy_coef_lr: float = 1e-3,
        entropy_coef_bounds: Sequence[float] = (1e-5, 3e-3),
        warmup_steps: int = 0,
        kl_coef: float = 0.0,
        cov_control: str = "none",
        cov_ratio: float = 2e-4,
        clip_cov_bounds: Sequence[float] = (1.0, 5.0),
        kl_cov_coef: float = 1.0,
        seed: int = 0,
        validate_args: bool = True,
    ) -> None:
        super().__init__(
            clip_eps, clip_eps_high, dual_clip, normalization, entropy_coef, entropy_band, entropy_coef_lr,
            entropy_coef_bounds, warmup_steps, kl_coef, cov_control, cov_ratio, clip_cov_bounds, kl_cov_coef, seed,
            validate_args=validate_args,
        )  # fmt: skip
        if self.cov_control == "kl_cov":
            raise ConfigurationError(
                "`cov_control` must be `none` or `clip_cov` for ce_gppo, got 'kl_cov': KL-Cov drops the ratio "
                "clipping whose gradients CE-GPPO preserves"
            )
        self.beta1 = check_number("beta1", beta1, low=0.0)
        self.beta2 = check_number("beta2", beta2, low=0.0)

    def _ppo_options(self, logps, old_logps, advantages, mask, entropy) -> dict:
        return {"clip_grad_coefs": (self.beta1, self.beta2)}
