"""A helper for manual optimization (plain PyTorch loops, or ``automatic_optimization = False``).

Plain PyTorch: neither this module nor anything it imports imports Lightning (a test runs it with Lightning blocked).

In a ``LightningModule`` with ``automatic_optimization = False``::

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        loss = perturbed_backward(
            self.sam, self, lambda: self.compute_loss(logits=self(batch["x"]), target=batch["target"]),
            backward=self.manual_backward,  # precision plugins (GradScaler) included
            no_sync=getattr(self.trainer.strategy, "block_backward_sync", None),  # DDP: per-replica ascent
        )
        opt.step()

(under a GradScaler also pass ``grad_scaler=self.trainer.precision_plugin.scaler``). A plain loop:

    >>> import torch
    >>> from lightning_losses.perturbation import build_perturbation, perturbed_backward
    >>> torch.manual_seed(0) is not None
    True
    >>> model = torch.nn.Linear(3, 1)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> sam = build_perturbation("sam", rho=0.05)
    >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
    >>> before = [p.detach().clone() for p in model.parameters()]
    >>> opt.zero_grad()
    >>> loss = perturbed_backward(sam, model, lambda: torch.nn.functional.mse_loss(model(x), y))
    >>> all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # weights restored, descent grad in .grad
    True
    >>> opt.step()
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import bayes_step, decoupled
from lightning_losses.perturbation.checkpoints import guarded_checkpoints
from lightning_losses.perturbation.data_selection import selected_loss
from lightning_losses.perturbation.engine import Perturbation, batchnorm_modules
from lightning_losses.perturbation.passes import frozen_metrics, metric_modules, suppressed_logging

__all__ = ["perturbed_backward"]


def perturbed_backward(
    perturbation: Perturbation,
    model: nn.Module,
    loss_fn: Callable[[], torch.Tensor],
    *,
    backward: Callable[[torch.Tensor], Any] | None = None,
    zero_grad: Callable[[], None] | None = None,
    no_sync: Callable[[], Any] | None = None,
    grad_scaler: Any = None,
    step: int | None = None,
    optimizer: Any = None,
) -> torch.Tensor | None:
    """Run the perturbed forward-backward passes; afterwards ``.grad`` holds the descent gradient and the weights
    are exactly as before. Call ``optimizer.step()`` (or ``scaler.step(optimizer)``) next. Inside, a checkpoint
    written through the module's ``on_save_checkpoint`` hook (a ``LightningModule``) holds the original weights.

    Args:
        perturbation: a :class:`Perturbation` (e.g. ``build_perturbation("sam")``).
        model: the module whose parameters are perturbed (a DDP wrapper's ``.module`` names match the model's).
        loss_fn: computes the scalar loss at the current weights (forward only); ``None`` skips the batch: no
            backward, no perturbation (the call returns ``None``). With data selection (esam's ``gamma`` < 1) it
            returns the per-sample losses ``[N]``: averaged, except in the descent pass (the selected samples' mean);
            per-sample losses are averaged without data selection too.
        backward: how to backpropagate (default ``loss.backward()``; Lightning: ``self.manual_backward``; with a
            GradScaler: ``lambda l: scaler.scale(l).backward()``).
        zero_grad: clears gradients between passes (default: ``p.grad = None`` on the model's parameters).
        no_sync: a DDP ``model.no_sync`` (per-replica ascent unless the perturbation has ``sync_ascent=True``).
        grad_scaler: the ``torch.amp.GradScaler`` whose scale the gradients carry (unscaled for the ascent).
        step: the optimizer step (schedules, ``every_n_steps``); default: the number of calls so far.
        optimizer: the optimizer that will step (needed by WSAM's decoupled form, whose sharpness term is applied
            right after ``optimizer.step()`` by a step post-hook registered here, and by ``bsam``: its
            :class:`~lightning_losses.perturbation.bsam.BSAM`).

    Returns:
        The loss at the unperturbed weights (detached).
    """
    if perturbation.decouple:
        if optimizer is None:
            raise ConfigurationError(
                "WSAM's decoupled form (`decouple=True`) applies its sharpness term after the optimizer step: pass "
                "`optimizer=` to perturbed_backward (or build it with decouple=False)"
            )
        decoupled.attach(perturbation, optimizer)
    if perturbation.rule == bayes_step.BAYES and optimizer is None:
        raise ConfigurationError(
            "perturbation `bsam` divides its ascent by the BSAM optimizer's precision: pass `optimizer=` to "
            "perturbed_backward"
        )
    if step is None:
        step = perturbation.calls
    perturbation.calls += 1
    module = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    named = perturbation.select(module.named_parameters())
    all_params = [p for p in module.parameters() if p.requires_grad]
    if zero_grad is None:

        def zero_grad() -> None:
            for p in all_params:
                p.grad = None

    run_backward = backward or (lambda loss: loss.backward())
    metrics = metric_modules(module)  # found once for all the passes of this step
    fraction = perturbation.select_fraction
    before: list[torch.Tensor] = []  # ESAM's data selection: the per-sample losses at w

    def forward_backward(phase: str) -> torch.Tensor | None:
        with contextlib.ExitStack() as quiet:
            if phase in ("ascent", "descent"):  # perturbed passes: no logging, metric states put back
                if hasattr(module, "objective_logging_suppressed"):
                    quiet.enter_context(suppressed_logging(module))
                quiet.enter_context(frozen_metrics(module, metrics))
            loss = loss_fn()
            if loss is None:
                return None
            if fraction < 1.0 or loss.ndim == 1:  # per-sample losses: selected in the descent pass, else averaged
                if loss.ndim != 1:
                    raise ValueError(
                        f"data selection (esam's `gamma` = {fraction} < 1) needs `loss_fn` to return per-sample "
                        f"losses of shape [N], got shape {list(loss.shape)}; or pass gamma=1.0"
                    )
                if phase in ("first", "plain"):
                    before[:] = [loss.detach()]
                use = phase == "descent" and before
                loss = selected_loss(loss, before[0], fraction) if use else loss.mean()
            run_backward(loss)
        return loss.detach()

    grad_scale = None
    if grad_scaler is not None and grad_scaler.is_enabled():
        grad_scale = grad_scaler.scale(torch.ones((), device=all_params[0].device))
    with guarded_checkpoints(module, perturbation):  # a checkpoint written mid-step holds the original weights
        return perturbation.step(
            forward_backward,
            named,
            step=step,
            zero_grad=zero_grad,
            no_sync=no_sync,
            grad_scale=grad_scale,
            bn_modules=batchnorm_modules(module),
            skip_on_none=True,
            optimizer=optimizer,
        )
