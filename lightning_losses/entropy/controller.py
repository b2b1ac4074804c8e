r"""A target-entropy controller: dual ascent on the coefficient of an entropy bonus.

The regulariser added to the loss is :math:`-\beta H` with a **signed** ``beta`` (``beta > 0`` raises entropy,
``beta < 0`` lowers it). After every optimizer step the controller moves ``beta`` toward the value that holds the
global mean entropy :math:`\bar H` at the target :math:`H^*` (Elenter, Chamon, Ribeiro, ICLR 2024; the entropy
instantiation of ``methods/entropy.md`` §3):

.. math:: \beta \leftarrow \mathrm{clip}\big(\beta + \eta\,(H^* - \bar H),\ \beta_{\min},\ \beta_{\max}\big)

``beta_min = 0`` is the one-sided floor constraint :math:`H \ge H^*` (projected dual ascent); ``beta_max = 0`` the
ceiling :math:`H \le H^*`. A **band** ``[low, high]`` (as in AEnt) only moves ``beta`` while :math:`\bar H` is outside
it: the error is :math:`\mathrm{low} - \bar H` below the band, :math:`\mathrm{high} - \bar H` above it, 0 inside.

:math:`\bar H` is the mean over the **global** batch of the step: every rank and every micro-batch of an accumulated
step (:meth:`EntropyController.observe` accumulates locally, :meth:`EntropyController.update` performs one
``all_reduce`` of ``[sum, count]``), so ``beta`` is identical on every rank without any host sync. A NaN / inf
entropy is left out of the mean (as a masked entry), so it never reaches ``beta`` or the dual variable; a step in
which no finite entropy was observed on any rank leaves them unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_losses._validation import check_int, check_number, check_state_keys
from lightning_losses.distributed import global_sum
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.dual_ascent import dual_ascent_step, entropy_error  # moved; re-exported here
from lightning_losses.schedules import Schedule, build_schedule

__all__ = ["EntropyController", "check_band", "dual_ascent_step", "entropy_error"]


def check_band(band: Any) -> tuple[float, float] | None:
    """Validate an optional entropy band ``[low, high]`` (nats, ``0 <= low <= high``)."""
    if band is None:
        return None
    if isinstance(band, (str, bytes)) or not isinstance(band, Sequence) or len(band) != 2:
        raise ConfigurationError(f"`band` must be a pair [low, high] of entropies in nats, got {band!r}")
    low = check_number("band[0]", band[0], low=0.0)
    high = check_number("band[1]", band[1], low=0.0)
    if low > high:
        raise ConfigurationError(f"`band` must satisfy low <= high, got {list(band)!r}")
    return low, high


class EntropyController:
    r"""Stateful dual-ascent controller of a signed entropy-bonus coefficient (see the module docstring).

    Args:
        target: target entropy :math:`H^*` in nats: a number or a schedule mapping (annealed target). Exclusive with
            ``band``.
        band: ``[low, high]``: hold the entropy inside this band (AEnt-style dead zone). Exclusive with ``target``.
        lr: dual step size :math:`\eta > 0`. Default 0.02. Plain dual ascent (``kp=0``) lags and oscillates on
            the digits demo (300 steps: mean entropy 0.55 for a 0.5 target with ``warmup_steps=40``); the
            setting that holds it within 1% of 0.5 and 1.0 nats is ``lr=0.03, kp=1.0, warmup_steps=40``
            (``configs/entropy_target.yaml``, tested).
        beta: initial coefficient. Default 0.
        beta_min / beta_max: clip range of ``beta``. Defaults -1 / 1 (two-sided); ``beta_min=0`` keeps only the
            bonus (entropy floor), ``beta_max=0`` only the penalty (ceiling).
        kp: optional proportional gain (PI control, as in the PID Lagrangian of Stooke, Achiam, Abbeel, ICML 2020):
            the coefficient in force is :math:`\mathrm{clip}(\lambda + k_p e)` where :math:`\lambda` follows the
            dual-ascent rule. Default 0 (plain dual ascent: ``beta`` is :math:`\lambda`).
        warmup_steps: optimizer steps before the first update (``beta`` stays at its initial value), so the
            high entropy of a fresh model does not wind the coefficient up. Default 0.

    Example:
        >>> ctl = EntropyController(target=1.0, lr=0.5)  # one step of 0.5 * (1.0 - 0.3)
        >>> ctl.observe(torch.tensor([0.2, 0.4]))
        >>> beta, h = ctl.update(step=0)
        >>> round(float(h), 4), round(float(beta), 4)
        (0.3, 0.35)
    """

    def __init__(
        self,
        target: float | Any = None,
        band: Sequence[float] | None = None,
        lr: float = 0.02,
        beta: float = 0.0,
        beta_min: float = -1.0,
        beta_max: float = 1.0,
        kp: float = 0.0,
        warmup_steps: int = 0,
    ) -> None:
        if (target is None) == (band is None):
            raise ConfigurationError(f"give exactly one of `target` and `band`, got target={target!r}, band={band!r}")
        self.band = check_band(band)
        self.target: Schedule | None = None if target is None else build_schedule(target, "target")
        if self.target is not None:
            check_number("target", self.target(0), low=0.0)
        self.lr = check_number("lr", lr, low=0.0, low_open=True)
        self.beta_min = check_number("beta_min", beta_min)
        self.beta_max = check_number("beta_max", beta_max)
        if self.beta_min > self.beta_max:
            raise ConfigurationError(f"`beta_min` must be <= `beta_max`, got {self.beta_min} > {self.beta_max}")
        self.kp = check_number("kp", kp, low=0.0)
        self.warmup_steps = check_int("warmup_steps", warmup_steps, low=0)
        beta = check_number("beta", beta, low=self.beta_min, high=self.beta_max)
        self.beta = torch.tensor(beta, dtype=torch.float32)  # the coefficient in force
        self.dual = self.beta.clone()  # the dual variable lambda (equal to beta when kp = 0)
        self._sum = torch.zeros((), dtype=torch.float32)
        self._count = torch.zeros((), dtype=torch.float32)

    def target_at(self, step: int) -> float:
        """The target entropy at ``step`` (the band's midpoint for a band)."""
        if self.target is None:
            assert self.band is not None
            return 0.5 * (self.band[0] + self.band[1])
        return float(self.target(step))

    def to(self, device: torch.device) -> EntropyController:
        """Move the state to `device` (called automatically by :meth:`observe`)."""
        if self.beta.device != device:
            moved = (t.to(device) for t in (self.beta, self.dual, self._sum, self._count))
            self.beta, self.dual, self._sum, self._count = moved
        return self

    def observe(self, entropy: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        """Accumulate (detached) entropies of one micro-batch on this rank; ``mask`` selects the entries that count
        (non-finite entries never count)."""
        h = entropy.detach().float()
        self.to(h.device)
        finite = torch.isfinite(h)
        m = (finite if mask is None else mask & finite).to(h.dtype)
        self._sum = self._sum + torch.where(finite, h, 0.0).mul(m).sum()
        self._count = self._count + m.sum()

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The accumulators of the current step (tensors are replaced, never written into: references suffice)."""
        return self._sum, self._count

    def restore(self, snapshot: tuple[torch.Tensor, torch.Tensor]) -> None:
        """Forget the observations since :meth:`snapshot` (a skipped micro-batch)."""
        self._sum, self._count = snapshot

    def update(self, step: int = 0, extra: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Reduce the accumulated entropies over all ranks, take one dual step, reset the accumulators.

        Args:
            step: optimizer step (for a scheduled target).
            extra: optional 1-D local sums reduced in the same ``all_reduce`` (logging statistics).

        Returns:
            ``(beta, mean_entropy)`` (0-d tensors, identical on every rank), plus the reduced ``extra`` if given.
            Without any observation on any rank, or before ``warmup_steps``, ``beta`` is unchanged.
        """
        parts = [self._sum.reshape(1), self._count.reshape(1)]
        if extra is not None:
            parts.append(extra.detach().float().to(self._sum.device).reshape(-1))
        reduced = global_sum(torch.cat(parts))
        total, count = reduced[0], reduced[1]
        mean = torch.where(count > 0, total / count.clamp_min(1.0), torch.zeros_like(total))
        target = None if self.target is None else self.target_at(step)
        error = entropy_error(mean, target=target, band=self.band)
        dual = dual_ascent_step(self.dual, error, lr=self.lr, beta_min=self.beta_min, beta_max=self.beta_max)
        beta = (dual + self.kp * error).clamp(self.beta_min, self.beta_max) if self.kp else dual
        observed = (count > 0) & (step >= self.warmup_steps)
        self.dual = torch.where(observed, dual, self.dual)
        self.beta = torch.where(observed, beta, self.beta)
        self._sum = torch.zeros_like(self._sum)
        self._count = torch.zeros_like(self._count)
        if extra is not None:
            return self.beta, mean, reduced[2:]
        return self.beta, mean

    def state_dict(self) -> dict[str, Any]:
        """``beta``, the dual variable and the pending accumulators (CPU tensors)."""
        names = ("beta", "dual", "sum", "count")
        return {n: t.detach().cpu().clone() for n, t in zip(names, (self.beta, self.dual, self._sum, self._count))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (tensors move to the device of the next observation)."""
        check_state_keys("EntropyController", state, ("beta", "dual", "sum", "count"))
        self.beta = torch.as_tensor(state["beta"], dtype=torch.float32).clone()
        self.dual = torch.as_tensor(state["dual"], dtype=torch.float32).clone()
        self._sum = torch.as_tensor(state["sum"], dtype=torch.float32).clone()
        self._count = torch.as_tensor(state["count"], dtype=torch.float32).clone()

    def __repr__(self) -> str:
        goal = f"target={self.target!r}" if self.target is not None else f"band={self.band}"
        kp = f", kp={self.kp}" if self.kp else ""
        return f"EntropyController({goal}, lr={self.lr}{kp}, beta_range=({self.beta_min}, {self.beta_max}))"
