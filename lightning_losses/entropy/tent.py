r"""Tent: fully test-time adaptation by entropy minimisation (Wang, Shelhamer, Liu, Olshausen, Darrell, ICLR 2021).

On each test / predict batch, before ``test_step`` / ``predict_step`` runs, the callback takes ``steps`` gradient
steps on the mean prediction entropy of the batch,

.. math:: L = \frac{1}{B}\sum_b H(\mathrm{softmax}(z_b)),

updating **only the affine parameters (weight, bias) of normalisation layers**; batch-norm layers switch to the
statistics of the test batch (``track_running_stats = False``, running buffers removed), as in the reference
``configure_model``. Everything else is frozen; dropout stays off (the model stays in eval mode, unlike the reference,
which calls ``model.train()`` on models without dropout). The step then predicts with the adapted parameters
(the reference returns the outputs of the adaptation forward, i.e. before its update: one extra forward here).

Lightning runs evaluation under ``torch.inference_mode()`` by default, where no gradient can be taken: **create
the Trainer with** ``L.Trainer(..., inference_mode=False)``; the callback then re-enables gradients inside its hook.
It raises a :class:`~lightning_losses.ConfigurationError` saying so, before touching the model, otherwise.

The original parameters, buffers and ``requires_grad`` flags are saved at the start and restored at the end of the
test / predict run (``restore_on_end=True``, the default), on an exception, or by :meth:`Tent.restore`. Reset to them
(and a fresh optimizer) after every batch (``reset="batch"``: the reference's *episodic* mode) or epoch
(``reset="epoch"``). Under DDP the gradients are averaged over ranks by hand (``sync_grads=True``), since evaluation
loops do not synchronise them: the adapted copies stay identical.

A non-finite update (a NaN / inf entropy or gradient, e.g. from one corrupted test sample) is never applied: the
adapted parameters go back to the source weights with a fresh optimizer (as ``reset="batch"`` does), the event is
counted in :attr:`Tent.nonfinite` and logged as ``test/tent_nonfinite``. With ``sync_grads`` the check runs on the
all-reduced gradients, so every rank takes the same decision.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from typing_extensions import override

from lightning_losses._validation import check_bool, check_choice, check_int, check_number
from lightning_losses.callbacks import CALLBACKS
from lightning_losses.distributed import global_mean, is_distributed
from lightning_losses.entropy._batch import ForwardFn, batch_logits, check_forward_args
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.entropy import entropy

__all__ = ["NormSnapshot", "Tent", "configure_norm_adaptation", "norm_layers"]

# public classes only (a lazy layer becomes its plain class when materialised)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_NORM_TYPES = {
    "batch_norm": _BATCH_NORMS,
    "all": (*_BATCH_NORMS, nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d),
}


def norm_layers(module: nn.Module, kind: str = "all") -> list[tuple[str, nn.Module]]:
    """Named normalisation layers of ``module``: batch norm only (``kind="batch_norm"``) or also layer, group and
    instance norm (``"all"``)."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, _NORM_TYPES[kind])]


class NormSnapshot:
    """Saved ``requires_grad`` flags and normalisation-layer parameters / buffers; :meth:`restore` puts them back."""

    def __init__(self, module: nn.Module, layers: list[tuple[str, nn.Module]]) -> None:
        self.requires_grad = {n: p.requires_grad for n, p in module.named_parameters()}
        self.layers = []
        for _, m in layers:
            params = {k: p.detach().clone() for k, p in m.named_parameters(recurse=False)}
            buffers = {k: None if b is None else b.detach().clone() for k, b in m._buffers.items()}
            self.layers.append((m, params, buffers, getattr(m, "track_running_stats", None)))

    def restore_parameters(self) -> None:
        """Put the saved norm-layer parameter values back (configuration unchanged)."""
        with torch.no_grad():
            for m, params, _, _ in self.layers:
                for k, value in params.items():
                    getattr(m, k).copy_(value)

    def restore(self, module: nn.Module) -> None:
        """Undo everything: parameters, buffers, ``track_running_stats`` and ``requires_grad`` flags."""
        self.restore_parameters()
        for m, _, buffers, track in self.layers:
            for k, value in buffers.items():
                setattr(m, k, None if value is None else value.clone())
            if track is not None:
                m.track_running_stats = track
        for n, p in module.named_parameters():
            p.requires_grad_(self.requires_grad.get(n, p.requires_grad))


def configure_norm_adaptation(module: nn.Module, kind: str = "all") -> tuple[list[nn.Parameter], NormSnapshot]:
    """Tent's ``configure_model``: freeze everything but norm-layer affine parameters; batch norm uses batch stats.

    Returns:
        ``(parameters to optimise, snapshot to restore the module with)``.

    Raises:
        ConfigurationError: the module has no normalisation layer with affine parameters.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
        >>> params, snapshot = configure_norm_adaptation(net)
        >>> [tuple(p.shape) for p in params], net[1].running_mean is None
        ([(8,), (8,)], True)
        >>> snapshot.restore(net); net[1].running_mean.shape
        torch.Size([8])
    """
    layers = norm_layers(module, kind)
    params = [p for _, m in layers for p in m.parameters(recurse=False)]
    if not params:
        found = "normalisation layers without affine parameters" if layers else "no normalisation layer"
        raise ConfigurationError(
            f"Tent adapts the affine parameters of normalisation layers ({kind}), but `{type(module).__name__}` has "
            f"{found}; add BatchNorm / LayerNorm / GroupNorm (the digits demo: `model.batch_norm: true`)"
        )
    snapshot = NormSnapshot(module, layers)
    module.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    for _, m in layers:
        if isinstance(m, _BATCH_NORMS):
            m.track_running_stats = False
            m.running_mean, m.running_var, m.num_batches_tracked = None, None, None
    return params, snapshot


@CALLBACKS.register("tent", aliases=("test_time_adaptation",))
class Tent(L.Callback):
    """Test-time entropy minimisation on normalisation-layer affine parameters (see the module docstring).

    Args:
        lr: learning rate. Default 1e-3 (the reference CIFAR-10-C config, with Adam).
        optimizer: ``"adam"`` (betas 0.9, 0.999) or ``"sgd"`` (with ``momentum``). Default ``"adam"``.
        momentum: SGD momentum. Default 0.9.
        steps: gradient steps per batch (``>= 0``; 0 only switches batch norm to test-batch statistics). Default 1.
        reset: ``"never"`` (online, the default), ``"batch"`` (episodic) or ``"epoch"``.
        stages: loops to adapt in, from ``"test"`` and ``"predict"``. Default both.
        norm: ``"all"`` (batch / layer / group / instance norm, default) or ``"batch_norm"`` (the paper's choice).
        input_key: batch key of the model input (dict batches). Default ``"x"``.
        forward_fn: optional ``forward_fn(pl_module, batch) -> logits`` for other batch layouts.
        sync_grads: average gradients over DDP ranks. Default True.
        restore_on_end: restore the original weights when the loop ends. Default True.

    Example:
        >>> import lightning as L
        >>> tent = Tent(lr=1e-3, reset="never")
        >>> trainer = L.Trainer(callbacks=[tent], inference_mode=False, logger=False)  # inference_mode=False!
    """

    def __init__(
        self,
        lr: float = 1e-3,
        optimizer: str = "adam",
        momentum: float = 0.9,
        steps: int = 1,
        reset: str = "never",
        stages: Sequence[str] = ("test", "predict"),
        norm: str = "all",
        input_key: str = "x",
        forward_fn: ForwardFn | None = None,
        sync_grads: bool = True,
        restore_on_end: bool = True,
    ) -> None:
        self.lr = check_number("lr", lr, low=0.0)
        self.optimizer_name = check_choice("optimizer", optimizer, ("adam", "sgd"))
        self.momentum = check_number("momentum", momentum, low=0.0, high=1.0)
        self.steps = check_int("steps", steps, low=0)
        self.reset = check_choice("reset", reset, ("never", "batch", "epoch"))
        if isinstance(stages, str) or not isinstance(stages, Sequence) or not stages:
            raise ConfigurationError(f"`stages` must be a non-empty list from 'test', 'predict', got {stages!r}")
        self.stages = tuple(check_choice("stages[]", s, ("test", "predict")) for s in stages)
        self.norm = check_choice("norm", norm, tuple(_NORM_TYPES))
        check_forward_args(input_key, forward_fn)
        self.input_key, self.forward_fn = input_key, forward_fn
        self.sync_grads = check_bool("sync_grads", sync_grads)
        self.restore_on_end = check_bool("restore_on_end", restore_on_end)
        self.snapshot: NormSnapshot | None = None
        self._params: list[nn.Parameter] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._module: nn.Module | None = None
        self.entropies: list[float] = []  # mean batch entropy before each adaptation (first step)
        self.nonfinite = 0  # adaptation steps refused for a non-finite entropy / gradient (reset to the source)

    # ------------------------------------------------------------------ set-up and restore
    def _make_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self._params, lr=self.lr, momentum=self.momentum)
        return torch.optim.Adam(self._params, lr=self.lr, betas=(0.9, 0.999))

    def _start(self, pl_module: nn.Module, stage: str) -> None:
        if stage not in self.stages:
            return
        if torch.is_inference_mode_enabled():
            raise ConfigurationError(
                f"Tent updates parameters during `{stage}`, which Lightning runs under torch.inference_mode() by "
                "default; create the Trainer with `inference_mode=False`, e.g. L.Trainer(..., inference_mode=False)"
            )
        self.restore()  # a previous run that kept its adaptation
        self._params, self.snapshot = configure_norm_adaptation(pl_module, self.norm)
        self._module = pl_module
        self._optimizer = self._make_optimizer()
        self.entropies, self.nonfinite = [], 0

    def restore(self, pl_module: nn.Module | None = None) -> None:
        """Restore the original parameters, buffers and flags (no-op when nothing is adapted)."""
        if self.snapshot is not None:
            self.snapshot.restore(pl_module if pl_module is not None else self._module)
        self.snapshot, self._optimizer, self._params, self._module = None, None, [], None

    def reset_adaptation(self) -> None:
        """Back to the original affine parameters and a fresh optimizer, staying configured for adaptation."""
        if self.snapshot is not None:
            self.snapshot.restore_parameters()
            self._optimizer = self._make_optimizer()

    # ------------------------------------------------------------------ adaptation
    def adapt(self, pl_module: nn.Module, batch: Any) -> None:
        """Take ``steps`` entropy-minimisation steps on ``batch`` (called before each test / predict step)."""
        if self._optimizer is None:
            return
        with torch.enable_grad():
            for i in range(self.steps):
                loss = entropy(batch_logits(pl_module, batch, self.input_key, self.forward_fn)).mean()
                if i == 0:
                    self.entropies.append(float(loss.detach()))
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
                flat = torch.cat([g.reshape(-1) for g in grads])
                if self.sync_grads and is_distributed():
                    flat = global_mean(flat)
                    for p, g in zip(self._params, torch.split(flat, [q.numel() for q in self._params])):
                        p.grad = g.view_as(p)
                if not bool(
                    torch.isfinite(flat).all() & torch.isfinite(loss.detach())
                ):  # never applied: back to the source
                    self.nonfinite += 1
                    self.reset_adaptation()
                    break
                self._optimizer.step()
        self._optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------------ hooks
    @override
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module, "test")

    @override
    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(pl_module, "predict")

    @override
    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any) -> None:
        self.adapt(pl_module, batch)

    @override
    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, *args: Any):
        self.adapt(pl_module, batch)

    @override
    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self._optimizer is not None and self.entropies and self.steps:
            pl_module.log("test/tent_entropy", self.entropies[-1], on_step=False, on_epoch=True)
            pl_module.log("test/tent_nonfinite", float(self.nonfinite), on_step=False, on_epoch=True, reduce_fx="max")
        if self.reset == "batch":
            self.reset_adaptation()

    @override
    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if self.reset == "batch":
            self.reset_adaptation()

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.reset == "epoch":
            self.reset_adaptation()

    on_predict_epoch_end = on_test_epoch_end

    @override
    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.restore_on_end:
            self.restore(pl_module)

    on_predict_end = on_test_end

    @override
    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.restore(pl_module)
