"""The options of the perturbation engine: :class:`PerturbationOptions`, the validated arguments of
:class:`~lightning_losses.perturbation.Perturbation` (its constructor, with the counters and buffers a fresh engine
starts from), which parameters a rule perturbs and on which steps.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from lightning_losses._validation import check_choice, check_int, check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import functional as F
from lightning_losses.perturbation.bayes_step import BAYES, check_bayes
from lightning_losses.perturbation.gradient_rules import DESCENT_RULES, DIRECTION_RULES, check_used
from lightning_losses.perturbation.selection import check_patterns, matches, select_parameters
from lightning_losses.schedules import Schedule, build_schedule

__all__ = ["PerturbationOptions"]


class PerturbationOptions:
    r"""The options of :class:`~lightning_losses.perturbation.Perturbation`, its base: the constructor (the arguments
    are documented on :class:`~lightning_losses.perturbation.Perturbation`), the parameters a rule perturbs and the
    steps it perturbs."""

    def __init__(
        self,
        rule: str = "normalise",
        radius_mode: str = "global",
        radius: Any = 0.05,
        scaling: str | None = None,
        eta: float = 0.01,
        scale_params: Sequence[str] | str | None = ("*weight*",),
        inner_lr: float = 1.0,
        inner_steps: int = 1,
        params: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        min_ndim: int = 0,
        ascent_terms: Sequence[str] | str | None = None,
        sync_ascent: bool = False,
        freeze_bn: bool = True,
        every_n_steps: int = 1,
        probability: float = 1.0,
        reuse_alpha: float | None = None,
        warmup_epochs: int = 0,
        direction: str = "gradient",
        sigma: float = 1.0,
        lmbda: float = 0.9,
        keep_probability: float = 1.0,
        descent: str = "perturbed",
        descent_weight: float = 0.0,
        decouple: bool = False,
        select_fraction: float = 1.0,
        seed: int = 0,
        eps: float = 1e-12,
    ) -> None:
        self.rule = check_choice("rule", rule, (*F.ASCENT_RULES, BAYES))
        self.radius_mode = check_choice("radius_mode", radius_mode, F.RADIUS_MODES)
        self.radius: Schedule = build_schedule(radius, "radius")
        check_number("radius", self.radius(0), low=0.0)
        if scaling is not None:
            check_choice("scaling", scaling, [s for s in F.SCALINGS if s])
        self.scaling = scaling
        self.eta = check_number("eta", eta, low=0.0)
        self.scale_params = check_patterns("scale_params", scale_params)
        self.inner_lr = check_number("inner_lr", inner_lr, low=0.0, low_open=True)
        self.inner_steps = check_int("inner_steps", inner_steps, low=1)
        self.params = check_patterns("params", params)
        self.exclude = check_patterns("exclude", exclude)
        self.min_ndim = check_int("min_ndim", min_ndim, low=0)
        self.ascent_terms = check_patterns("ascent_terms", ascent_terms)
        for name, flag in (("sync_ascent", sync_ascent), ("freeze_bn", freeze_bn), ("decouple", decouple)):
            if not isinstance(flag, bool):
                raise ConfigurationError(f"`{name}` must be true or false, got {flag!r}")
        self.sync_ascent = sync_ascent
        self.decouple = decouple
        #: WSAM decoupled: ``(params, terms)`` to apply after the optimizer step (:mod:`.decoupled`)
        self.pending: tuple[list[Tensor], list[Tensor]] | None = None
        self.freeze_bn = freeze_bn
        self.every_n_steps = check_int("every_n_steps", every_n_steps, low=1)
        self.probability = check_number("probability", probability, low=0.0, high=1.0, low_open=True)
        self.reuse_alpha = None if reuse_alpha is None else check_number("reuse_alpha", reuse_alpha, low=0.0)
        if self.reuse_alpha is not None and self.every_n_steps == 1:
            raise ConfigurationError("`reuse_alpha` (LookSAM) needs `every_n_steps` > 1, got every_n_steps=1")
        self.warmup_epochs = check_int("warmup_epochs", warmup_epochs, low=0)
        self.direction = check_choice("direction", direction, tuple(DIRECTION_RULES))
        self.sigma = check_number("sigma", sigma, low=0.0)
        self.lmbda = check_number("lmbda", lmbda, low=0.0, high=1.0)
        self.keep_probability = check_number("keep_probability", keep_probability, low=0.0, high=1.0, low_open=True)
        self.descent = check_choice("descent", descent, tuple(DESCENT_RULES))
        self.descent_weight = check_number("descent_weight", descent_weight, low=0.0)
        DESCENT_RULES[self.descent].check(self.descent_weight)
        self.select_fraction = check_number("select_fraction", select_fraction, low=0.0, high=1.0, low_open=True)
        check_used(self)
        check_bayes(self)
        self.seed = check_int("seed", seed)
        self.eps = check_number("eps", eps, low=0.0)
        self.calls = 0  #: calls of the manual helper (its default step counter)
        self.skipped = 0  #: perturbations skipped because the ascent gradient was not finite
        self.perturbed_steps = 0  #: perturbed steps taken
        self.orthogonal: list[Tensor] | None = None  #: LookSAM's stored g_v
        #: the direction rule's state (FriendlySAM's ``momentum``: this rank's local tensors)
        self.direction_state: dict[str, list[Tensor]] = {}
        self.last_stats: dict[str, Tensor] = {}
        #: compute the diagnostic statistics (``norm``, ``grad_norm_perturbed``, ...) of a step; callbacks turn it off
        #: on steps whose logs no logger receives. ``grad_norm`` (needed for the step itself) is always there.
        self.collect_stats = True
        self._saved: list[Tensor] | None = None
        self._active_params: list[Tensor] = []
        self._buffers: list[Tensor] | None = None  # saved weights, reused between steps
        self._frozen_buffers: dict[int, Tensor] = {}  # BatchNorm buffers' snapshots while a perturbed pass runs

    # ------------------------------------------------------------------ selection / schedule
    def select(self, named: Iterable[tuple[str, Tensor]]) -> list[tuple[str, Tensor]]:
        """The ``(name, parameter)`` pairs this rule perturbs."""
        return select_parameters(named, self.params, self.exclude, self.min_ndim)

    def scale_mask(self, names: Sequence[str]) -> list[bool] | None:
        """Which of ``names`` the ``"adaptive"`` scaling applies to."""
        if self.scaling != "adaptive" or self.scale_params is None:
            return None
        return matches(names, self.scale_params)

    def is_active(self, step: int, epoch: int = 0) -> bool:
        """Whether optimizer step ``step`` (0-based) of epoch ``epoch`` is a perturbed step."""
        if epoch < self.warmup_epochs or step % self.every_n_steps != 0:
            return False
        if self.probability < 1.0:
            return random.Random(self.seed * 1_000_003 + step).random() < self.probability
        return True
