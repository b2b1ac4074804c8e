r"""MESA: memory-efficient sharpness-aware training (Du, Zhou, Feng, Tan, Zhou, *Sharpness-Aware Training for Free*,
NeurIPS 2022), the EMA-teacher variant of :class:`~lightning_losses.perturbation.SAF`.

SAF's teacher is the model's own output for the same sample :math:`\tilde E` epochs ago (a per-sample table); MESA's is
the output of an exponential moving average of the weights on the same input, so it needs no table, one more forward
(no gradient) per step and a copy of the weights:

.. math::
    \ell_i = \ell^{task}_i + \lambda\,\tau^2\,\mathrm{KL}\big(\mathrm{softmax}(\tilde z_i/\tau)\,\|\,
             \mathrm{softmax}(z_i/\tau)\big), \qquad \tilde z = f(x; \bar w), \quad
    \bar w \leftarrow d\,\bar w + (1 - d)\,w \text{ after every optimizer step},

active for ``start_epoch <= epoch < end_epoch``. The per-sample term is :func:`lightning_losses.functional.kd` with the
EMA model's logits as the teacher; the EMA model is the training module itself evaluated (in eval mode, no gradient)
with the averaged parameters and buffers (``torch.func.functional_call``). No weight perturbation; every submodule's
train / eval mode is put back afterwards (a frozen, eval-mode BatchNorm stays frozen). A step whose micro-batches
all returned ``None`` from ``training_step`` (Lightning's skipped batch) does not move the EMA nor count in
``updates``.

Reference (AngusDujw/SAF ``MESA_train.py``, README): ``--reinforce`` :math:`\lambda` 0.8 (ImageNet ``run.sh``; 0.3 in
the script), ``--temperature`` 5, ``kl_start_epoch`` 5 and ``kl_end_epoch`` 360 applied when ``kl_start_epoch < epoch
< kl_end_epoch`` (``start_epoch=6``, ``end_epoch=360`` here, 0-based), EMA decay 0.9998 (timm ``ModelEmaV2``, which
averages every floating entry of the state dict, BatchNorm statistics included). The reference takes
``softmax(z/T).log()``; the log-softmax here is the same value, computed stably. The EMA is state: identical on every
rank (DDP keeps the weights identical) and saved in the checkpoint. FSDP2 (sharded parameters) is not supported.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.func import functional_call
from typing_extensions import override

from lightning_losses._state import step_skipped
from lightning_losses._validation import check_int, check_number, check_state_keys
from lightning_losses.callbacks import CALLBACKS, MixinCallback
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.distillation import kd
from lightning_losses.perturbation.sharding import is_sharded
from lightning_losses.schedules import Schedule, build_schedule

__all__ = ["MESA"]


class MESA(MixinCallback):
    r"""Memory-efficient sharpness-aware training: the EMA-teacher trajectory loss as an extra per-sample term.

    Needs ``compute_loss(logits=..., inputs=x)``: ``inputs`` is what the module's ``forward`` takes (the EMA model
    is ``module.forward`` with the averaged weights).

    Args:
        coefficient: :math:`\lambda`, a number or a schedule mapping over optimizer steps. Default 0.8.
        temperature: :math:`\tau`. Default 5.
        decay: EMA decay :math:`d` in :math:`[0, 1)`. Default 0.9998.
        start_epoch / end_epoch: the term is active for ``start_epoch <= epoch < end_epoch`` (0-based; ``end_epoch``
            ``None``: to the end). Default 6 and 360 (the reference's ``5 < epoch < 360``).
        input / inputs: names of the logits and of the model input given to ``compute_loss``. Default ``"logits"``,
            ``"inputs"``.
        name: the term's name in the objective (logged as ``train/{name}``). Default ``"mesa"``.

    Example:
        >>> import lightning as L
        >>> from lightning_losses.demo import DigitsClassifier, DigitsDataModule
        >>> trainer = L.Trainer(max_steps=2, callbacks=[MESA(start_epoch=0)], logger=False, enable_progress_bar=False,
        ...                     enable_checkpointing=False, enable_model_summary=False)
        >>> trainer.fit(DigitsClassifier(), DigitsDataModule())  # it passes `inputs=batch["x"]`
        >>> trainer.callbacks[0].updates
        2
    """

    def __init__(
        self,
        coefficient: Any = 0.8,
        temperature: float = 5.0,
        decay: float = 0.9998,
        start_epoch: int = 6,
        end_epoch: int | None = 360,
        input: str = "logits",
        inputs: str = "inputs",
        name: str = "mesa",
    ) -> None:
        self.coefficient: Schedule = build_schedule(coefficient)
        check_number("coefficient", self.coefficient(0), low=0.0)
        self.temperature = check_number("temperature", temperature, low=0.0, low_open=True)
        self.decay = check_number("decay", decay, low=0.0, high=1.0, high_open=True)
        self.start_epoch = check_int("start_epoch", start_epoch, low=0)
        self.end_epoch = None if end_epoch is None else check_int("end_epoch", end_epoch, low=self.start_epoch + 1)
        for key, value in (("input", input), ("inputs", inputs), ("name", name)):
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"`{key}` must be a non-empty string, got {value!r}")
        self.input, self.inputs, self.name = input, inputs, name
        self.ema: dict[str, torch.Tensor] | None = None  #: averaged parameters and buffers, by state-dict name
        self.updates = 0  #: EMA updates so far (optimizer steps)
        self._seen_step: int | None = None
        self._stepped = False  # a micro-batch of the current optimizer step was not skipped (its gradient counts)

    slot = "terms"
    whole_parameters = "its EMA teacher is a whole copy of the weights, evaluated as one model"

    @override
    def state_key_fields(self) -> dict[str, Any]:
        return {"name": self.name}

    @override
    def check_module(self, pl_module: Any) -> None:
        if any(is_sharded(p) for p in pl_module.parameters()):
            raise ConfigurationError("MESA does not support sharded parameters (FSDP2); use DDP or one device")

    # ------------------------------------------------------------------ the EMA
    def _current(self, module: Any) -> dict[str, torch.Tensor]:
        named = (*module.named_parameters(), *module.named_buffers())
        return {n: t.detach() for n, t in named}

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        if self.ema is None:
            self.ema = {n: t.clone() for n, t in self._current(pl_module).items()}
        self._seen_step = trainer.global_step

    @override
    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._stepped = self._stepped or not step_skipped(pl_module, outputs)
        if self.ema is None or trainer.global_step == self._seen_step:  # no optimizer step in this batch
            return
        self._seen_step = trainer.global_step
        if self._stepped:  # a step whose micro-batches all returned None is skipped here too (DESIGN)
            self.update(pl_module)
        self._stepped = False

    def update(self, module: Any) -> None:
        """One EMA step towards ``module``'s current parameters and buffers (after an optimizer step)."""
        if self.ema is None:
            self.ema = {n: t.clone() for n, t in self._current(module).items()}
        with torch.no_grad():
            for n, t in self._current(module).items():
                avg = self.ema[n]
                if avg.device != t.device:
                    avg = self.ema[n] = avg.to(t.device)
                if t.is_floating_point():
                    avg.lerp_(t.to(avg.dtype), 1.0 - self.decay)
                else:
                    avg.copy_(t)
        self.updates += 1

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema, "updates": self.updates}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_keys(f"MESA `{self.name}`", state_dict, ("ema", "updates"))
        self.ema, self.updates = state_dict["ema"], int(state_dict["updates"])

    # ------------------------------------------------------------------ the term
    def teacher_logits(self, module: Any, inputs: Any) -> torch.Tensor:
        """The EMA model's output on ``inputs`` (eval mode, no gradient; every submodule's mode is put back)."""
        if self.ema is None:
            self.ema = {n: t.clone() for n, t in self._current(module).items()}
        modes = {m: m.training for m in module.modules()}  # per module: a frozen (eval) submodule stays frozen
        try:
            module.eval()
            with torch.no_grad():
                return functional_call(module, self.ema, (inputs,))
        finally:
            for m, training in modes.items():
                m.training = training

    def extra_terms(self, module: Any, tensors: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """The mixin's ``"terms"`` hook: ``{name: lambda * tau^2 KL(softmax(ema/tau) || softmax(z/tau))}``."""
        logits = tensors.get(self.input)
        if logits is None or self.inputs not in tensors:
            given = sorted(tensors)
            raise ValueError(
                f"MESA needs `{self.input}` and `{self.inputs}` (the model input) in compute_loss(...); got {given}"
            )
        epoch = int(module.current_epoch)
        active = epoch >= self.start_epoch and (self.end_epoch is None or epoch < self.end_epoch)
        if not active:
            return {self.name: logits.new_zeros(logits.shape[0], dtype=torch.float32)}
        teacher = self.teacher_logits(module, tensors[self.inputs])
        return {self.name: self.coefficient(step) * kd(logits, teacher, temperature=self.temperature)}


CALLBACKS.register("mesa")(MESA)
