r"""Entropy-SGD (Chaudhari, Choromanska, Soatto, LeCun, Baldassi, Borgs, Chayes, Sagun, Zecchina, *Entropy-SGD:
Biasing Gradient Descent Into Wide Valleys*, ICLR 2017) as a callback on the mixin's ``"step"`` slot.

The local entropy :math:`F(x; \gamma) = \log \int \exp(-f(x') - \frac{\gamma}{2}\|x - x'\|^2)\,dx'` has the gradient
:math:`-\nabla F = \gamma (x - \langle x' \rangle)`; the average is estimated by Langevin dynamics around :math:`x`:

.. math::
    x'_{k+1} = x'_k - \eta'\big(\nabla f_{B_k}(x'_k) - \gamma_t (x - x'_k)\big) - \varepsilon \sqrt{2\eta'}\,\xi_k,
    \qquad \mu_{k+1} = \beta_1 \mu_k + (1 - \beta_1) x'_{k+1},

from :math:`x'_0 = \mu_0 = x`, for :math:`k = 0 .. L-1`, each step on a **fresh mini-batch** :math:`B_k`
(:math:`\xi_k \sim N(0, I)`). The outer step restores :math:`x` and hands the user's optimizer the gradient
:math:`x - \mu_L` (the authors' code: no :math:`\gamma` factor, the learning rate absorbs it); scoping
:math:`\gamma_t = \gamma_0 (1 + \gamma_1)^t`, :math:`t` the optimizer steps taken (``trainer.global_step``).

Lightning integration: the :math:`L` inner steps are :math:`L` consecutive ``training_step`` calls, i.e. the
callback sets ``Trainer.accumulate_grad_batches = L`` (Lightning's own gradient accumulation, which calls
``optimizer_step`` once per :math:`L` batches): after each micro-batch's backward (``on_after_backward``) the callback
takes one Langevin step with that batch's gradient and clears it; the last micro-batch's closure runs inside the
wrapped closure, which then restores :math:`x` and puts :math:`x - \mu` in ``.grad``. So ``global_step``, LR
schedulers, ``gradient_clip_val`` (on :math:`x - \mu`) and checkpoint cadence count outer steps, and the user's
optimizer (momentum, Adam moments, weight decay) is only touched by the outer step. **Cost: one forward-backward per
batch, as plain training**, but :math:`L` batches per optimizer step (an epoch has :math:`L` times fewer optimizer
steps; the paper counts "effective epochs"). An epoch whose length is not a multiple of :math:`L` ends with a shorter
inner loop (Lightning steps on the last batch).

DDP: the inner loop is replica-local (every backward under ``no_sync``; each rank its own batches and noise), the
outer gradient is averaged over ranks (one all-reduce per optimizer step), so every rank takes the same optimizer step
from the same :math:`x` and the weights stay identical. The noise is a pure function of ``seed``, the step, the inner
index and the rank (a resumed run draws the same noise). A non-finite outer gradient on any rank skips the optimizer
step on every rank (``.grad`` left ``None``; counted in ``skipped``): one host sync per optimizer step. FSDP2 /
tensor parallelism (``ModelParallelStrategy``) is refused at ``setup`` (replica-local iterates need whole weights).

Differences from the authors' code (ucla-vision/entropy-sgd ``python/optim.py``): their inner step also applies the
outer optimizer's weight decay and Nesterov momentum (here plain SGLD: put an L2 term in the loss if wanted); their
first closure's gradient at :math:`x` is discarded (:math:`L+1` batches per step, here :math:`L`); their ``t`` is
never incremented (scoping inactive), here :math:`t` counts optimizer steps. :math:`\mu` restarts from :math:`x` at
every outer step in both, so it is only state inside an outer step.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from typing_extensions import override

from lightning_losses._validation import check_int, check_number, check_state_keys
from lightning_losses.callbacks import CALLBACKS, MixinCallback, step_logs_due
from lightning_losses.diagnostics import log_scalars
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import looksam
from lightning_losses.perturbation.sharding import is_sharded

__all__ = ["EntropySGD"]


class EntropySGD(MixinCallback):
    r"""Entropy-SGD: :math:`L` Langevin steps on fresh batches, then the user's optimizer steps on :math:`x - \mu`.

    Args:
        inner_steps: :math:`L`, Langevin steps (= batches) per optimizer step; the callback sets
            ``Trainer.accumulate_grad_batches`` to it (a Trainer set to another value than 1 or :math:`L` is refused).
            Default 20 (the authors' README: "usually set to 20").
        gamma: :math:`\gamma_0`, the scope. Default 0.01 (the authors' class default; their MNIST script 1e-4, CIFAR-10
            0.03).
        scoping: :math:`\gamma_1` of :math:`\gamma_t = \gamma_0(1+\gamma_1)^t`. Default 0 (class default; script 1e-3).
        inner_lr: :math:`\eta'`, the Langevin step size. Default 0.1 (hard-coded by the authors).
        beta1: :math:`\beta_1` of the running average :math:`\mu`. Default 0.75 (hard-coded by the authors; the weight
            of the old average).
        noise: :math:`\varepsilon`, the Langevin noise scale (each step adds :math:`\varepsilon\sqrt{2\eta'}\xi`).
            Default 1e-4 (the authors').
        seed: seed of the noise draws. Default 0.

    Logged (``entropy_sgd/...``, on the Trainer's logging steps): ``gamma`` (:math:`\gamma_t`), ``distance``
    (:math:`\|x - \mu\|`, averaged over ranks) and ``skipped``.

    Example:
        >>> import lightning as L
        >>> from lightning_losses.demo import DigitsClassifier, DigitsDataModule
        >>> trainer = L.Trainer(max_steps=2, callbacks=[EntropySGD(inner_steps=3)], logger=False,
        ...                     enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
        >>> trainer.fit(DigitsClassifier(), DigitsDataModule())
        >>> trainer.global_step, trainer.callbacks[0].outer_steps  # 6 batches: 2 optimizer steps of 3 inner steps
        (2, 2)
    """

    slot = "step"
    whole_parameters = (
        "its Langevin iterates are replica-local copies of the whole weights (the inner backward passes run "
        "without gradient synchronisation), which FSDP2 cannot form"
    )

    def __init__(
        self,
        inner_steps: int = 20,
        gamma: float = 1e-2,
        scoping: float = 0.0,
        inner_lr: float = 0.1,
        beta1: float = 0.75,
        noise: float = 1e-4,
        seed: int = 0,
    ) -> None:
        self.inner_steps = check_int("inner_steps", inner_steps, low=1)
        self.gamma = check_number("gamma", gamma, low=0.0)
        self.scoping = check_number("scoping", scoping, low=0.0)
        self.inner_lr = check_number("inner_lr", inner_lr, low=0.0, low_open=True)
        self.beta1 = check_number("beta1", beta1, low=0.0, high=1.0, high_open=True)
        self.noise = check_number("noise", noise, low=0.0)
        self.seed = check_int("seed", seed)
        self.skipped = 0  #: optimizer steps skipped because the outer gradient was not finite (on some rank)
        self.outer_steps = 0  #: outer steps taken
        self._params: list[torch.Tensor] = []
        self._origin: list[torch.Tensor] | None = None  # x, saved at the first inner step of an outer step
        self._mu: list[torch.Tensor] | None = None
        self._inner = 0  # inner steps taken in this outer step
        self._stash: list[torch.Tensor] | None = None  # x' while an evaluation runs at x
        self._accumulate_before: int | None = None
        self._stats: dict[str, Any] = {}

    @override
    def state_key_fields(self) -> dict[str, Any]:
        return {"inner_steps": self.inner_steps}

    # ------------------------------------------------------------------ lifecycle
    @override
    def check_module(self, pl_module: Any) -> None:
        if not pl_module.automatic_optimization:
            raise ConfigurationError("EntropySGD works with automatic optimization, got automatic_optimization=False")
        if any(is_sharded(p) for p in pl_module.parameters()):
            raise ConfigurationError("EntropySGD does not support sharded parameters (FSDP2); use DDP or one device")

    @override
    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer is None or stage != "fit":
            return
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            raise ConfigurationError(
                "EntropySGD does not support a GradScaler (`precision='16-mixed'`): its Langevin steps need unscaled "
                "gradients; use precision 32, 64 or 'bf16-mixed'"
            )
        current = trainer.accumulate_grad_batches
        if current not in (1, self.inner_steps):
            raise ConfigurationError(
                f"EntropySGD sets `accumulate_grad_batches` to `inner_steps`={self.inner_steps} (one Langevin step "
                f"per batch), got Trainer(accumulate_grad_batches={current}); leave it at 1"
            )
        self._accumulate_before = current
        trainer.accumulate_grad_batches = self.inner_steps

    @override
    def teardown(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().teardown(trainer, pl_module, stage)
        if trainer is not None and self._accumulate_before is not None:
            trainer.accumulate_grad_batches = self._accumulate_before
            self._accumulate_before = None
        self._reset()

    def _reset(self) -> None:
        self._origin = self._mu = None
        self._inner = 0

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "outer_steps": self.outer_steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_keys("EntropySGD", state_dict, ("skipped", "outer_steps"))
        self.skipped, self.outer_steps = int(state_dict["skipped"]), int(state_dict["outer_steps"])

    @override
    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written inside an outer step (a user's hook) holds :math:`x`, not the Langevin iterate."""
        state = checkpoint.get("state_dict")
        if self._origin is None or state is None:
            return
        originals = {id(p): x for p, x in zip(self._params, self._origin)}
        for key, tensor in pl_module.named_parameters(remove_duplicate=False):
            if key in state and id(tensor) in originals:
                state[key] = originals[id(tensor)].detach().clone().to(state[key].device)

    def _swap(self, to_origin: bool) -> None:
        if to_origin and self._origin is not None and self._stash is None:
            with torch.no_grad():
                self._stash = [p.detach().clone() for p in self._params]
                torch._foreach_copy_(self._params, self._origin)
        elif not to_origin and self._stash is not None:
            with torch.no_grad():
                torch._foreach_copy_(self._params, self._stash)
            self._stash = None

    @override
    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._swap(True)  # a validation in the middle of an outer step evaluates x, not x'

    @override
    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self._swap(False)

    # ------------------------------------------------------------------ the inner loop
    def gamma_at(self, step: int) -> float:
        r""":math:`\gamma_t = \gamma_0 (1 + \gamma_1)^t`."""
        return self.gamma * (1.0 + self.scoping) ** step

    def _noise(self, trainer: Any, like: list[torch.Tensor]) -> list[torch.Tensor]:
        rank = int(getattr(trainer, "global_rank", 0))
        key = ((self.seed * 1_000_003 + trainer.global_step) * 1_009 + self._inner) * 131 + rank
        out = []
        for i, p in enumerate(like):
            gen = torch.Generator(device=p.device).manual_seed(key * 7_919 + i)
            out.append(torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype))
        return out

    @override
    def on_after_backward(self, trainer: Any, pl_module: Any) -> None:
        """One Langevin step with this micro-batch's gradient (Lightning divided it by ``accumulate_grad_batches``)."""
        if not trainer.training or not trainer.optimizers:
            return
        if self._origin is None:
            optimizer = trainer.optimizers[0]
            self._params = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
            with torch.no_grad():
                self._origin = [p.detach().clone() for p in self._params]
                self._mu = [p.detach().clone() for p in self._params]
        params, origin, mu = self._params, self._origin, self._mu or []
        scale = float(trainer.accumulate_grad_batches)
        gamma = self.gamma_at(trainer.global_step)
        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            # x' <- x' - eta' (L g - gamma (x - x')) - eps sqrt(2 eta') xi
            pull = torch._foreach_sub(origin, [p.detach() for p in params])
            direction = torch._foreach_mul(grads, scale)
            torch._foreach_add_(direction, pull, alpha=-gamma)
            torch._foreach_add_(params, direction, alpha=-self.inner_lr)
            if self.noise > 0:
                torch._foreach_add_(
                    params, self._noise(trainer, params), alpha=-self.noise * math.sqrt(2 * self.inner_lr)
                )
            torch._foreach_lerp_(mu, [p.detach() for p in params], 1.0 - self.beta1)
        for p in params:
            p.grad = None
        self._inner += 1

    # ------------------------------------------------------------------ the outer step
    def wrap_closure(self, module: Any, optimizer: Any, closure: Any) -> Any:
        """The ``"step"`` plug-in hook: the last inner step (the closure, replica-local), then :math:`x - \\mu`."""
        trainer = module.trainer
        block = getattr(trainer.strategy, "block_backward_sync", None) or contextlib.nullcontext

        def wrapped() -> torch.Tensor | None:
            with block():
                loss = closure()
            origin, mu, params = self._origin, self._mu, self._params
            if origin is None or mu is None:  # no backward in this outer step (every batch skipped)
                return loss
            with torch.no_grad():
                outer = torch._foreach_sub(origin, mu)
                distance = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in outer]))
                *outer, distance = looksam.mean_over_ranks([*outer, distance.reshape(1)])
                torch._foreach_copy_(params, origin)
            self._reset()
            self.outer_steps += 1
            if not bool(torch.isfinite(distance).all()):  # a NaN on any rank reaches every rank: same decision
                self.skipped += 1
                for p in params:
                    p.grad = None
            else:
                for p, g in zip(params, outer):
                    p.grad = g.to(p.dtype)
            self._stats = {"gamma": self.gamma_at(trainer.global_step), "distance": distance.reshape(())}
            return loss

        return wrapped

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._stats and step_logs_due(trainer):
            stats = {f"entropy_sgd/{k}": v for k, v in self._stats.items()}
            stats["entropy_sgd/skipped"] = float(self.skipped)
            log_scalars(trainer, pl_module, stats)
        self._stats = {}


CALLBACKS.register("entropy_sgd")(EntropySGD)
