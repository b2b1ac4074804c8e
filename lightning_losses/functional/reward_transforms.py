r"""Reward transforms for RL fine-tuning: what turns raw rewards into the per-response signal a policy loss uses.

Every function here takes per-response rewards (``[N]``, or ``[N, K]`` for a K-member reward-model ensemble) and
returns one value per response, ``[N]``, detached (rewards are data, not a path for gradients):

* ensemble-conservative rewards (Coste et al., *Reward Model Ensembles Help Mitigate Overoptimization*, ICLR 2024):
  :func:`wco` (worst case, the ensemble's minimum) and :func:`uwo` (mean minus ``λ`` times the intra-ensemble variance);
* noisy-verifier corrections for binary rewards (Cai et al., *Reinforcement Learning with Verifiable yet Noisy Rewards
  under Imperfect Verifiers*, 2025): :func:`noisy_reward_backward` (the unbiased surrogate reward) and
  :func:`noisy_reward_forward` (the score-function weights that need only the false-negative rate);
* policy filtration (Zhang, Shen et al., *Policy Filtration for RLHF to Mitigate Noise in Reward Models*, ICML 2025;
  PF-PPO): :func:`pf_ppo_weights`, per-response weights from the rank of each reward within its prompt's group.

Groups (``group``: the prompt id of each response) follow :func:`~lightning_losses.functional.policy.group_advantages`:
all responses of a prompt sit on one rank. :func:`normalize_weights` is the one global step: it scales weights to
mean 1 over the counted responses of the **global** batch (one all-reduce of two sums), so k ranks weight exactly as
one process on the concatenated batch.
"""

from __future__ import annotations

import torch

from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.distributed import global_sum

__all__ = [
    "NOISY_REWARD_MODES",
    "PF_PPO_STRATEGIES",
    "group_ranks",
    "noisy_reward_backward",
    "noisy_reward_forward",
    "normalize_weights",
    "per_response_rewards",
    "pf_ppo_weights",
    "uwo",
    "wco",
]

NOISY_REWARD_MODES = ("backward", "forward")
PF_PPO_STRATEGIES = ("best_random", "best_worst", "best_of_n", "pow")


def _shape(t: object) -> object:
    return list(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


def _ensemble(rewards: torch.Tensor, what: str) -> torch.Tensor:
    if not isinstance(rewards, torch.Tensor) or rewards.ndim != 2 or not rewards.is_floating_point():
        raise ValueError(
            f"`rewards` must be a floating tensor [N, K] (one column per reward model of the ensemble) for `{what}`, "
            f"got {_shape(rewards)}"
        )
    if rewards.shape[1] < 1:
        raise ValueError(f"`rewards` needs at least one ensemble member (K >= 1) for `{what}`, got {_shape(rewards)}")
    return _upcast(rewards.detach())


def per_response_rewards(rewards: torch.Tensor, what: str = "rewards") -> torch.Tensor:
    """``rewards [N]`` detached, as a floating tensor (half precision upcast); ``what`` names the caller in errors."""
    if not isinstance(rewards, torch.Tensor) or rewards.ndim != 1:
        raise ValueError(
            f"`rewards` must be a tensor [N] (one reward per response) for `{what}`, got {_shape(rewards)}"
        )
    r = rewards.detach()
    return _upcast(r) if r.is_floating_point() else r.to(torch.get_default_dtype())


def _rate(name: str, value: float) -> float:
    if not 0.0 <= value < 0.5:
        raise ValueError(f"`{name}` must be in [0, 0.5) (a verifier error rate), got {value!r}")
    return value


def wco(rewards: torch.Tensor) -> torch.Tensor:
    r"""Worst-case optimisation: :math:`R_{WCO}(x, y) = \min_{k} R_k(x, y)` over the ``K`` reward models (Coste et al.
    2024). No hyperparameter.

    Args:
        rewards: ``[N, K]``, reward model ``k``'s score of response ``i`` in column ``k`` (members on one scale).

    Example:
        >>> wco(torch.tensor([[1.0, 0.2, 0.5], [0.0, -1.0, 2.0]]))
        tensor([ 0.2000, -1.0000])
    """
    return _ensemble(rewards, "wco").amin(dim=-1)


def uwo(rewards: torch.Tensor, coef: float = 0.5) -> torch.Tensor:
    r"""Uncertainty-weighted optimisation: :math:`R_{UWO} = \bar R - \lambda\,\frac{1}{K}\sum_k (R_k - \bar R)^2`,
    the ensemble mean penalised by the intra-ensemble variance (the population variance, divisor ``K``; Coste et al.
    2024).

    Args:
        rewards: ``[N, K]``, one column per reward model.
        coef: ``λ ≥ 0``, the variance penalty. Default 0.5 (this project's default: the paper tunes ``λ`` per setup).

    Example:
        >>> uwo(torch.tensor([[1.0, 3.0], [2.0, 2.0]]), coef=0.5)  # means 2 and 2, variances 1 and 0
        tensor([1.5000, 2.0000])
    """
    if not coef >= 0.0:
        raise ValueError(f"`coef` must be >= 0, got {coef!r}")
    r = _ensemble(rewards, "uwo")
    return r.mean(dim=-1) - coef * r.var(dim=-1, unbiased=False)


def noisy_reward_backward(rewards: torch.Tensor, fp_rate: float = 0.0, fn_rate: float = 0.0) -> torch.Tensor:
    r"""Backward correction of a noisy binary verifier (Cai et al. 2025): the unbiased surrogate reward
    :math:`\hat R = (\tilde R - \rho_0) / (1 - \rho_0 - \rho_1)`, with :math:`\rho_0 = P(\tilde R = 1 \mid R^* = 0)`
    (false-positive rate) and :math:`\rho_1 = P(\tilde R = 0 \mid R^* = 1)` (false-negative rate), both in
    ``[0, 0.5)``; :math:`E[\hat R \mid R^*] = R^*`.

    Note: the surrogate is affine in :math:`\tilde R` with a positive slope, so GRPO's group standardisation
    (mean-centring and division by the group's standard deviation) undoes it up to the ``ε`` of the division; it
    changes the advantages only without the standard deviation (Dr. GRPO, ``normalize_std=False``: a ``1/(1-ρ0-ρ1)``
    scale) or where rewards are used raw.

    Example:
        >>> noisy_reward_backward(torch.tensor([1.0, 0.0]), fp_rate=0.1, fn_rate=0.2)  # (1 - .1)/.7, -.1/.7
        tensor([ 1.2857, -0.1429])
    """
    r = per_response_rewards(rewards, "noisy_reward")
    fp, fn = _rate("fp_rate", fp_rate), _rate("fn_rate", fn_rate)
    return (r - fp) / (1.0 - fp - fn)


def noisy_reward_forward(rewards: torch.Tensor, fn_rate: float = 0.0) -> torch.Tensor:
    r"""Forward correction of a noisy binary verifier (Cai et al. 2025): the weight of each response's
    score-function term, :math:`w_1 = \rho_1` for an observed pass and :math:`w_0 = \rho_1 - 1` for an observed fail,
    i.e. :math:`w = \tilde R - (1 - \rho_1)`. It needs only the false-negative rate :math:`\rho_1`: in expectation over
    the channel a truly correct response gets weight 0 and a truly wrong one :math:`-(1 - \rho_0 - \rho_1)`, a
    positive multiple of the clean reward shifted by a constant, so the expected update points along the clean
    gradient.

    The weights are the per-response coefficients themselves (used as advantages, not group-standardised: a group
    standardisation would cancel them, as they are :math:`\tilde R` shifted by a constant).

    Example:
        >>> noisy_reward_forward(torch.tensor([1.0, 0.0]), fn_rate=0.2)
        tensor([ 0.2000, -0.8000])
    """
    r = per_response_rewards(rewards, "noisy_reward")
    return r - (1.0 - _rate("fn_rate", fn_rate))


def group_ranks(rewards: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank of each response within its group by decreasing reward (0 = best) and its group's size, both ``[N]``.

    Ties keep input order (a stable sort): among equal rewards the earlier response ranks higher.

    Example:
        >>> group_ranks(torch.tensor([0.1, 0.9, 0.5, 0.3]), torch.tensor([0, 0, 1, 1]))
        (tensor([1, 0, 0, 1]), tensor([2, 2, 2, 2]))
    """
    if not isinstance(group, torch.Tensor) or group.shape != rewards.shape or group.is_floating_point():
        raise ValueError(
            f"`group` must be an integer tensor [N] (the prompt id of each response) with the shape of `rewards` "
            f"{list(rewards.shape)}, got {_shape(group)}"
        )
    _, inverse = torch.unique(group, return_inverse=True)
    order = torch.sort(-rewards, stable=True).indices  # by decreasing reward, ties in input order
    order = order[torch.sort(inverse[order], stable=True).indices]  # then grouped, keeping that order inside groups
    count = torch.bincount(inverse)
    start = torch.cumsum(count, 0) - count
    rank = torch.empty_like(inverse)
    rank[order] = torch.arange(rewards.numel(), device=rewards.device) - start[inverse[order]]
    return rank, count[inverse]


def pf_ppo_weights(
    rewards: torch.Tensor, group: torch.Tensor | None = None, *, strategy: str = "best_random", power: float = 1.0
) -> torch.Tensor:
    r"""PF-PPO's per-response weights (Zhang, Shen et al., ICML 2025): which sampled responses the policy learns from.

    The paper's filtered policy ranks a prompt's ``N`` responses by reward and draws one with probabilities ``w``
    over the ranks. This returns ``w`` at each response's rank: the draw integrated out (the same expected update
    with no sampling noise and no generator state); per prompt the weights sum to 1.

    * ``"best_of_n"``: the best response only, ``w = (1, 0, …, 0)``.
    * ``"best_random"`` (BR): the best with probability 1/2, else a uniformly chosen other one:
      ``w = (1/2, 1/(2(N-1)), …, 1/(2(N-1)))``.
    * ``"best_worst"`` (BW): the best or the worst, 1/2 each: ``w = (1/2, 0, …, 0, 1/2)``.
    * ``"pow"``: the paper's soft variant PPO-pow-k, weight :math:`|r|^k` (``power = k``; rewards in ``[-1, 1]``, so
      confident rewards near ±1 count most); no groups needed.

    A group of one response gets weight 1. The paper found BR and BW best and BoN worst (its Tables 2-3). Pass the
    result through :func:`normalize_weights` before weighting a loss.

    Example:
        >>> r, g = torch.tensor([0.1, 0.9, 0.5, 0.3]), torch.tensor([0, 0, 0, 1])
        >>> pf_ppo_weights(r, g, strategy="best_worst")  # group 0: best 0.9, worst 0.1; group 1: alone
        tensor([0.5000, 0.5000, 0.0000, 1.0000])
    """
    if strategy not in PF_PPO_STRATEGIES:
        raise ValueError(f"`strategy` must be one of {PF_PPO_STRATEGIES}, got {strategy!r}")
    r = per_response_rewards(rewards, "pf_ppo")
    if strategy == "pow":
        if not power > 0.0:
            raise ValueError(f"`power` must be > 0, got {power!r}")
        return r.abs() ** power
    if group is None:
        raise ValueError(f"`group` [N] (the prompt id of each response) is required for PF-PPO's `{strategy}`")
    rank, size = group_ranks(r, group)
    best = (rank == 0).to(r.dtype)
    if strategy == "best_of_n":
        return best
    if strategy == "best_worst":
        return 0.5 * best + 0.5 * (rank == size - 1).to(r.dtype)  # a group of one: 1/2 + 1/2
    others = 0.5 / (size - 1).clamp_min(1).to(r.dtype)
    return torch.where(size < 2, torch.ones_like(r), torch.where(rank == 0, torch.full_like(r, 0.5), others))


def normalize_weights(weights: torch.Tensor, counted: torch.Tensor | None = None) -> torch.Tensor:
    r"""Scale per-response weights to mean 1 over the counted responses of the **global** batch:
    :math:`w_i \cdot M / \sum_j w_j` with :math:`M` the number of counted responses (one all-reduce of the two sums).
    Uncounted responses get 0; all-zero weights stay 0.

    A per-sample loss multiplied by these and averaged over the counted responses (as the objective does) is the
    weighted mean :math:`\sum_i w_i \ell_i / \sum_i w_i`, on one process or many.

    Example:
        >>> normalize_weights(torch.tensor([0.5, 0.0, 0.5, 1.0]))
        tensor([1., 0., 1., 2.])
    """
    w = weights.detach()
    c = torch.ones_like(w) if counted is None else counted.detach().to(w.dtype)
    sums = global_sum(torch.stack([(w * c).sum(), c.sum()]))
    scale = torch.where(sums[0] > 0, sums[1] / sums[0].clamp_min(torch.finfo(w.dtype).tiny), torch.zeros_like(sums[0]))
    return w * c * scale
