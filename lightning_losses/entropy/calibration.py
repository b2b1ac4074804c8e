r"""Calibration: expected calibration error (torchmetrics) and post-hoc temperature scaling.

Temperature scaling (Guo, Pleiss, Sun, Weinberger, *On Calibration of Modern Neural Networks*, ICML 2017) fits one
scalar :math:`T > 0` on held-out data by minimising the negative log-likelihood of :math:`\mathrm{softmax}(z/T)`,
then predicts with :math:`z/T`: accuracy is unchanged (the argmax is), confidence is rescaled. ECE is the
:math:`\ell_1` gap between confidence and accuracy over ``n_bins`` equal-width confidence bins (torchmetrics
``multiclass_calibration_error``, 15 bins as in Guo et al.).

* :func:`fit_temperature`, :func:`expected_calibration_error`: pure functions (in
  :mod:`~lightning_losses.entropy.calibration_fit`, re-exported here).
* :class:`TemperatureScaling`: a callback that fits ``T`` on the validation data when ``fit`` ends (gathered over
  DDP ranks, so every rank holds the same ``T``) and installs a forward hook that divides the module's output by
  ``T``; logs ``calibration/temperature`` and the validation ECE before / after (in ``trainer.callback_metrics``
  too) and, to W&B loggers, the reliability diagrams ``calibration/reliability_before`` / ``_after``; ``T`` is
  checkpointed.
* :class:`CalibrationMonitor`: logs ``{stage}/ece`` for validation and test epochs (the logits are captured from the
  module's own forward call, so no extra forward is needed when ``*_step`` calls ``self(...)``) and, to W&B loggers,
  the reliability diagram ``{stage}/reliability`` (an image rendered from the metric's bins, at the media cadence
  of validation epochs and the end of the fit, every test epoch; loggers without media get none, with no error).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torchmetrics.classification import MulticlassCalibrationError
from torchmetrics.utilities import dim_zero_cat
from typing_extensions import override

from lightning_losses._compat import log_step
from lightning_losses._validation import check_int, check_state_keys
from lightning_losses.callbacks import CALLBACKS
from lightning_losses.diagnostics import (
    MediaCadence,
    log_reliability,
    log_reliability_bins,
    log_scalars,
    reliability_bins,
)
from lightning_losses.entropy._batch import ForwardFn, batch_logits, batch_target, check_forward_args, check_target_key
from lightning_losses.entropy.calibration_fit import collect_logits, expected_calibration_error, fit_temperature
from lightning_losses.errors import ConfigurationError

__all__ = ["CalibrationMonitor", "TemperatureScaling", "expected_calibration_error", "fit_temperature"]


@CALLBACKS.register("temperature_scaling")
class TemperatureScaling(L.Callback):
    """Fit a temperature on the validation data at the end of ``fit`` and apply it to every later forward.

    Args:
        n_bins: ECE bins for the before / after report. Default 15.
        max_iter: L-BFGS iterations. Default 100.
        input_key / target_key: batch keys of the model input and the labels. Defaults ``"x"`` / ``"target"``.
        forward_fn: optional ``forward_fn(pl_module, batch) -> logits``.

    Attributes:
        temperature: the fitted ``T`` (``None`` before fitting).
        ece_before / ece_after: validation ECE with ``T = 1`` and with the fitted ``T``.

    Example:
        >>> cb = TemperatureScaling()
        >>> trainer = L.Trainer(callbacks=[cb], logger=False)  # after fit: cb.temperature, model(x) is divided by T
    """

    def __init__(
        self,
        n_bins: int = 15,
        max_iter: int = 100,
        input_key: str = "x",
        target_key: str = "target",
        forward_fn: ForwardFn | None = None,
    ) -> None:
        self.n_bins = check_int("n_bins", n_bins, low=1)
        self.max_iter = check_int("max_iter", max_iter, low=1)
        check_forward_args(input_key, forward_fn)
        self.input_key, self.target_key, self.forward_fn = input_key, check_target_key(target_key), forward_fn
        self.temperature: float | None = None
        self.ece_before: float | None = None
        self.ece_after: float | None = None
        self._handle: Any = None
        self._pending = False  # a checkpointed temperature waiting for its module

    def _install(self, pl_module: torch.nn.Module) -> None:
        self.remove()
        t = self.temperature
        self._handle = pl_module.register_forward_hook(lambda module, args, output: output / t)

    def remove(self) -> None:
        """Remove the forward hook (the module returns raw logits again until the next fit)."""
        self._pending = False
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @override
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending:  # a temperature restored from a checkpoint (after setup, so install here)
            self._install(pl_module)

    on_test_start = on_predict_start = on_validation_start

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.remove()  # train (and re-fit) on raw logits

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.val_dataloaders
        if loader is None and trainer.datamodule is not None:
            loader = trainer.datamodule.val_dataloader()
        if loader is None:
            raise ConfigurationError("TemperatureScaling needs validation data: pass `val_dataloaders` or a datamodule")
        loaders = loader if isinstance(loader, (list, tuple)) else [loader]
        parts = [collect_logits(pl_module, dl, self.input_key, self.target_key, self.forward_fn) for dl in loaders]
        logits, target = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        self.temperature = fit_temperature(logits, target, self.max_iter)
        self.ece_before = float(expected_calibration_error(logits, target, self.n_bins))
        self.ece_after = float(expected_calibration_error(logits / self.temperature, target, self.n_bins))
        self._install(pl_module)
        metrics = {
            "calibration/temperature": self.temperature,
            "calibration/val_ece_before": self.ece_before,
            "calibration/val_ece_after": self.ece_after,
        }
        log_scalars(trainer, pl_module, metrics, own_interval=True)  # in callback_metrics too; `log` is refused here
        for when, scaled in (("before", logits), ("after", logits / self.temperature)):
            conf, pred = torch.softmax(scaled.float(), -1).max(-1)
            ece = self.ece_before if when == "before" else self.ece_after
            title = f"val, T={self.temperature if when == 'after' else 1.0:.2f}, ECE={ece:.4f}"
            log_reliability(trainer, f"calibration/reliability_{when}", conf, pred == target, self.n_bins, title)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_keys("TemperatureScaling", state_dict, ("temperature",))
        t = state_dict["temperature"]
        if t is not None and not (isinstance(t, float) and math.isfinite(t) and t > 0):
            raise ConfigurationError(f"checkpointed `temperature` must be a positive float, got {t!r}")
        self.temperature = t
        self._pending = t is not None


@CALLBACKS.register("calibration_monitor", aliases=("ece",))
class CalibrationMonitor(L.Callback):
    """Log the expected calibration error ``{stage}/ece`` of validation and test epochs (torchmetrics).

    The logits are captured from the module's own forward call during each ``*_step`` (a temporary forward hook; the
    last forward of the batch counts, so a preceding Tent adaptation forward does not); if the step never calls the
    module's ``forward``, the callback runs one extra forward on the batch.

    Args:
        n_bins: equal-width confidence bins. Default 15.
        stages: from ``"val"``, ``"test"``. Default both.
        input_key / target_key / forward_fn: as in :class:`TemperatureScaling`.
        media_every_n_steps: when validation epochs draw their reliability diagram (W&B loggers; the ECE is logged
            every epoch): at the first validation epoch at or after every this many optimizer steps. Default
            ``None``: about once per epoch, at most once per :data:`~lightning_losses.diagnostics.MEDIA_MIN_STEPS`
            steps (:class:`~lightning_losses.diagnostics.MediaCadence`; a diagram is a matplotlib drawing of about
            50 ms). The last validation epoch's diagram, when its epoch
            drew none, is drawn when the fit ends, at that epoch's step. ``0``: no validation diagrams during a fit.
            Every test epoch, and every ``trainer.validate`` run, draws its diagram.
    """

    def __init__(
        self,
        n_bins: int = 15,
        stages: tuple[str, ...] | list[str] = ("val", "test"),
        input_key: str = "x",
        target_key: str = "target",
        forward_fn: ForwardFn | None = None,
        media_every_n_steps: int | None = None,
    ) -> None:
        self.n_bins = check_int("n_bins", n_bins, low=1)
        self.media = MediaCadence(media_every_n_steps)
        self._held: tuple[int, torch.Tensor, str] | None = None  # a validation diagram not drawn yet: step, bins, title
        if isinstance(stages, str) or not stages or any(s not in ("val", "test") for s in stages):
            raise ConfigurationError(f"`stages` must be a non-empty list from 'val', 'test', got {stages!r}")
        self.stages = tuple(stages)
        check_forward_args(input_key, forward_fn)
        self.input_key, self.target_key, self.forward_fn = input_key, check_target_key(target_key), forward_fn
        self.metric: MulticlassCalibrationError | None = None
        self._captured: list[torch.Tensor] = []
        self._handle: Any = None
        self.last: dict[str, float] = {}

    def _start_batch(self, pl_module: L.LightningModule) -> None:
        self._captured = []
        self._handle = pl_module.register_forward_hook(lambda m, a, out: self._captured.append(out))

    def _end_batch(self, pl_module: L.LightningModule, batch: Any) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        logits = next((t for t in reversed(self._captured) if isinstance(t, torch.Tensor) and t.ndim == 2), None)
        if logits is None:
            with torch.no_grad():
                logits = batch_logits(pl_module, batch, self.input_key, self.forward_fn)
        self._captured = []
        if self.metric is None:
            self.metric = MulticlassCalibrationError(num_classes=logits.shape[-1], n_bins=self.n_bins, norm="l1")
        self.metric = self.metric.to(logits.device)
        self.metric.update(torch.softmax(logits.detach().float(), -1), batch_target(batch, self.target_key))

    def _end_epoch(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.metric is None:
            return
        ece = self.metric.compute()  # synchronised over ranks by torchmetrics
        if self.metric.confidences:  # this rank's states (empty on a rank without batches: it still joins the sum)
            conf, acc = dim_zero_cat(self.metric.confidences), dim_zero_cat(self.metric.accuracies)
        else:
            conf = acc = torch.zeros(0, device=ece.device)
        title = f"{stage} ECE={float(ece):.4f}"
        bins = reliability_bins(trainer, conf, acc, self.n_bins)  # every epoch: a collective, on every rank alike
        fitting = getattr(getattr(trainer.state, "fn", None), "_value_", None) == "fit"
        if bins is not None and (stage == "test" or not fitting):  # `trainer.test` / `trainer.validate`: always
            log_reliability_bins(trainer, f"{stage}/reliability", bins, title)
        elif bins is not None and self.media.every != 0:
            if self.media.due(int(trainer.global_step), trainer.current_epoch):
                log_reliability_bins(trainer, "val/reliability", bins, title)
                self._held = None
            else:
                self._held = (log_step(trainer), bins, title)
        self.metric.reset()
        self.last[stage] = float(ece)
        pl_module.log(f"{stage}/ece", ece, on_step=False, on_epoch=True)

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._held = None

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._held is not None:  # the last validation epoch's diagram, which its epoch did not draw
            step, bins, title = self._held
            self._held = None
            log_reliability_bins(trainer, "val/reliability", bins, title, step=step)

    @override
    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if "val" in self.stages and not trainer.sanity_checking:
            self._start_batch(pl_module)

    @override
    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, *args: Any) -> None:  # noqa: ANN001
        if "val" in self.stages and not trainer.sanity_checking:
            self._end_batch(pl_module, batch)

    @override
    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "val" in self.stages and not trainer.sanity_checking:
            self._end_epoch(trainer, pl_module, "val")

    @override
    def on_test_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if "test" in self.stages:
            self._start_batch(pl_module)

    @override
    def on_test_batch_end(self, trainer, pl_module, outputs, batch, *args: Any) -> None:  # noqa: ANN001
        if "test" in self.stages:
            self._end_batch(pl_module, batch)

    @override
    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if "test" in self.stages:
            self._end_epoch(trainer, pl_module, "test")
