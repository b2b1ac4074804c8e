r"""UDIM, unknown-domain inconsistency minimization (Shin, Bae, Na, Kim, Moon, *Unknown Domain Inconsistency
Minimization for Domain Generalization*, ICLR 2024), as a :class:`WeightPerturbation` that also perturbs the inputs.

The objective (SAM plus the inconsistency between the source batch and a worst-case "unknown domain" crafted from it):

.. math::
    \min_\theta \max_{\|\epsilon\| \le \rho} L(x; \theta + \epsilon)
    + \lambda\, \frac{1}{N}\sum_i \max_{\|\tilde x_i - x_i\| \le \rho_x}
      \big[\ell(\tilde x_i; \theta + \epsilon) - \ell(x_i; \theta + \epsilon)\big].

A step: the gradient at :math:`(\theta, x)` gives SAM's :math:`\epsilon = \rho\,g/\|g\|`; at :math:`\theta + \epsilon`
``input_steps`` :math:`K` normalised input-gradient steps, per sample,
:math:`\tilde x \leftarrow \Pi_{\rho_x}\big(\tilde x + \frac{\rho_x}{K} \nabla_x \ell / \|\nabla_x \ell\|\big)` from
:math:`\tilde x = x` (:math:`\Pi_{\rho_x}`: projection on the ball of radius :math:`\rho_x` around :math:`x_i`, L2 over
every non-batch dimension); then the descent gradient
:math:`(1 - \lambda) \nabla_\theta L(x; \theta + \epsilon) + \lambda \nabla_\theta L(\tilde x; \theta + \epsilon)`.
Cost: :math:`2 + K` forward-backward passes per step (:math:`3 + K` when :math:`0 < \lambda \ne 1`).

How the inputs are perturbed: the callback keeps the step's batch (``on_train_batch_start``: the very object
Lightning hands ``training_step``) and re-runs Lightning's closure with the input tensor of that batch changed **in
place** (``input`` says which tensor), restoring it exactly afterwards (in a ``finally``). ``training_step`` must
therefore read the input from the batch it is given (it may transform it: the gradient flows back to the batch's
tensor). The input gradient passes run replica-local under DDP (``no_sync``; their weight gradients are dropped);
the descent passes are synchronised as SAM's, so with ``sync_ascent=True`` DDP equals one process on the
concatenated batch. BatchNorm statistics are frozen in every pass after the first, as for SAM.

What the authors' code does (aailabkaist/UDIM ``domainbed/iada/iada_final.py`` and ``algorithms.py``
``IADA_DG_FINAL``), which differs from the formula above: the input step is one step of ``syn_lr`` along
:math:`\nabla_x[\ell(x;\theta) + \rho\|\nabla_\theta \ell(x;\theta)\|]` at :math:`\theta` (second order), its
gradient normalised over the **batch** dimension (``F.normalize(dim=0)``), or, with ``--advstyle True`` (the published
scripts), a step on the per-channel mean and standard deviation of the image ("style"); :math:`\epsilon` is built from
the gradient at :math:`\tilde x`; the inconsistency term is a Fishr-style distance between per-sample gradient
variances of the classifier on :math:`x` and :math:`\tilde x` plus the mean per-sample gradient norm on
:math:`\tilde x` (BackPACK), weighted by ``worst_weight`` (1) and added to the SAM gradient on :math:`x`; the first
``n_steps / sam_warm_up_ratio`` steps are plain SAM (``sam_warm_up_ratio`` 5), :math:`\rho = 0.05` (constant
scheduler), ``syn_lr`` 10 (style space) in ``bash/udim_pacs_*.sh``. This module implements the paper's objective in
input space, not that practical surrogate.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from typing_extensions import override

from lightning_losses._validation import check_int, check_number
from lightning_losses.callbacks import CALLBACKS
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation.passes import rerun
from lightning_losses.perturbation.weight_perturbation import WeightPerturbation

__all__ = ["UDIM", "input_tensor", "project_inputs"]


def input_tensor(batch: Any, input: Any) -> torch.Tensor:
    """The input tensor of ``batch``: ``input`` is a key (mapping batch), an index (tuple / list batch), a callable
    ``batch -> tensor`` returning the batch's own tensor, or ``None`` (``batch["x"]`` or ``batch[0]``)."""
    if callable(input):
        x = input(batch)
    elif isinstance(batch, Mapping):
        key = "x" if input is None else input
        if key not in batch:
            raise ConfigurationError(f"UDIM `input`={key!r} is not a key of the batch; the batch has {sorted(batch)}")
        x = batch[key]
    elif isinstance(batch, Sequence) and not isinstance(batch, str):
        index = 0 if input is None else input
        if not isinstance(index, int) or not -len(batch) <= index < len(batch):
            raise ConfigurationError(f"UDIM `input` must index the batch of {len(batch)} items, got {index!r}")
        x = batch[index]
    elif isinstance(batch, torch.Tensor) and input is None:
        x = batch
    else:
        raise ConfigurationError(f"UDIM cannot find the input in a batch of type {type(batch).__name__}; pass `input`")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        what = x.dtype if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigurationError(f"UDIM perturbs a floating-point input tensor, got {what} for `input`={input!r}")
    return x


def project_inputs(
    current: torch.Tensor, origin: torch.Tensor, grad: torch.Tensor, step: float, radius: float, eps: float = 1e-12
) -> torch.Tensor:
    r""":math:`\Pi_{\rho_x}(\tilde x + s\,\nabla/\|\nabla\|)` per sample (L2 over the non-batch dimensions)."""
    shape = (-1,) + (1,) * (grad.ndim - 1)
    g = grad.to(torch.float32) if grad.dtype in (torch.float16, torch.bfloat16) else grad
    gnorm = torch.linalg.vector_norm(g.reshape(g.shape[0], -1), dim=1).reshape(shape)
    # a sample whose input gradient is not finite (fp16 overflow) stays where it is; no host sync
    moved = current + torch.where(torch.isfinite(gnorm), step * g / (gnorm + eps), 0.0).to(current.dtype)
    delta = moved - origin
    dnorm = torch.linalg.vector_norm(delta.reshape(delta.shape[0], -1).to(gnorm.dtype), dim=1).reshape(shape)
    return origin + delta * (radius / torch.clamp(dnorm, min=radius)).to(delta.dtype)


class UDIM(WeightPerturbation):
    r"""UDIM: SAM's weight perturbation plus the worst-case input perturbation of the same batch.

    Args:
        rho: :math:`\rho`, SAM's radius (a number or a schedule mapping). Default 0.05 (the authors').
        rho_x: :math:`\rho_x`, the per-sample L2 radius of the input perturbation, in the input's units. Default 1.0
            (no pixel-space value in the authors' scripts: they perturb image style).
        lmbda: :math:`\lambda`, the weight of the inconsistency term; 0 is SAM. Default 1.0 (the authors'
            ``worst_weight``).
        input_steps: :math:`K`, input-gradient steps of :math:`\rho_x/K`. Default 1.
        input: which tensor of the batch is the model input: a key (mapping batch), an index (tuple batch), a
            callable ``batch -> tensor`` (it must return the batch's own tensor, changed in place), or ``None``
            (``batch["x"]``, else ``batch[0]``). Default ``None``.
        **options: engine options of the ``sam`` preset (``sync_ascent``, ``params``, ``every_n_steps``, ...);
            ``select_fraction`` (ESAM's data selection) is refused. On unperturbed steps (``every_n_steps``) the
            inputs are not perturbed either.

    Needs ``accumulate_grad_batches=1``. Logs as :class:`WeightPerturbation` (``sharpness`` is then the descent
    objective minus the loss at :math:`(\theta, x)`).

    Example:
        >>> import lightning as L
        >>> from lightning_losses.demo import DigitsClassifier, DigitsDataModule
        >>> trainer = L.Trainer(max_steps=2, callbacks=[UDIM(rho_x=0.5)], logger=False, enable_progress_bar=False,
        ...                     enable_checkpointing=False, enable_model_summary=False)
        >>> trainer.fit(DigitsClassifier(), DigitsDataModule())  # the demo's batches carry the input as "x"
        >>> trainer.global_step
        2
    """

    def __init__(
        self,
        rho: Any = 0.05,
        rho_x: float = 1.0,
        lmbda: float = 1.0,
        input_steps: int = 1,
        input: str | int | Callable[[Any], torch.Tensor] | None = None,
        **options: Any,
    ) -> None:
        if "select_fraction" in options:
            raise ConfigurationError("UDIM does not take `select_fraction` (ESAM's data selection)")
        super().__init__("sam", rho=rho, **options)
        self.method = "udim"
        self.rho_x = check_number("rho_x", rho_x, low=0.0, low_open=True)
        self.lmbda = check_number("lmbda", lmbda, low=0.0)
        self.input_steps = check_int("input_steps", input_steps, low=1)
        if not (input is None or callable(input) or isinstance(input, (str, int))) or isinstance(input, bool):
            raise ConfigurationError(f"UDIM `input` must be a key, an index, a callable or None, got {input!r}")
        self.input = input
        # a callable is named by its qualified name: its repr holds an address, and the state key must be stable
        named = getattr(input, "__qualname__", type(input).__name__) if callable(input) else input
        self.options.update(rho=rho, rho_x=rho_x, lmbda=lmbda, input_steps=input_steps, input=named)
        self._batch: Any = None

    @override
    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.accumulate_grad_batches != 1:
            raise ConfigurationError(
                f"UDIM needs accumulate_grad_batches=1, got {trainer.accumulate_grad_batches}: it perturbs the inputs "
                f"of the step's one batch"
            )
        input_tensor(batch, self.input)  # fail before the step on a batch without the input
        self._batch = batch
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def descent_pass(self, trainer: Any, optimizer: Any, closure: Any, transform: Any) -> torch.Tensor | None:
        r"""At :math:`\theta + \epsilon`: the input steps, then the descent passes on :math:`\tilde x` and :math:`x`."""
        if self.lmbda == 0.0:
            return rerun(closure, transform)
        x = input_tensor(self._batch, self.input)
        origin = x.detach().clone()
        block = getattr(trainer.strategy, "block_backward_sync", None) or contextlib.nullcontext
        step = self.rho_x / self.input_steps
        try:
            for _ in range(self.input_steps):
                x.requires_grad_(True)
                try:
                    with block():
                        rerun(closure)
                    grad = x.grad
                finally:
                    x.grad = None
                    x.requires_grad_(False)
                optimizer.zero_grad(set_to_none=True)
                if grad is None:
                    raise ConfigurationError(
                        "UDIM: the loss has no gradient with respect to the batch's input tensor; `training_step` "
                        "must compute the model's output from the tensor of the batch it is given (see `input`)"
                    )
                with torch.no_grad():
                    x.copy_(project_inputs(x, origin, grad, step, self.rho_x))
            clean = self.lmbda != 1.0
            with block() if clean else contextlib.nullcontext():
                loss = rerun(closure, lambda loss: loss * self.lmbda)
            if clean:
                with torch.no_grad():
                    x.copy_(origin)
                loss_x = rerun(closure, lambda loss: loss * (1.0 - self.lmbda))
                if loss is not None and loss_x is not None:
                    loss = self.lmbda * loss + (1.0 - self.lmbda) * loss_x
        finally:
            with torch.no_grad():
                x.copy_(origin)
        return loss

    @override
    def wrap_closure(self, module: Any, optimizer: Any, closure: Any) -> Any:
        if self._batch is None:
            raise ConfigurationError("UDIM did not see the step's batch (`on_train_batch_start` did not run)")
        return super().wrap_closure(module, optimizer, closure)


CALLBACKS.register("udim")(UDIM)
