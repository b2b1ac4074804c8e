"""Wall time of a perturbed optimizer step against its unperturbed part, for the ``perturbation/...`` logs.

Timed only on the Trainer's logging steps (the callback's ``collect_stats``). On an asynchronous device (CUDA, ...)
the device is synchronised at the three marks of a timed step (its start, the end of the first forward-backward and
its end): a host sync on logging steps only, where Lightning's logging reads values on the host anyway.
"""

from __future__ import annotations

import time

import torch

__all__ = ["StepTimer"]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        accelerator = getattr(torch, "accelerator", None)
        if accelerator is not None and hasattr(accelerator, "synchronize"):
            accelerator.synchronize()


class StepTimer:
    """Marks ``start`` / ``first_done`` / ``stop`` of one step; :meth:`metrics` reads the result once.

    Example:
        >>> timer = StepTimer()
        >>> timer.start(torch.device("cpu")); timer.first_done(); timer.stop()
        >>> sorted(timer.metrics())
        ['perturbation/step_time', 'perturbation/time_ratio']
    """

    def __init__(self) -> None:
        self.device: torch.device | None = None
        self._t0 = self._t1 = self._t2 = None

    def start(self, device: torch.device | None) -> None:
        """Begin timing a step on ``device`` (``None``: this step is not timed)."""
        self.device, self._t1, self._t2 = device, None, None
        if device is not None:
            _synchronize(device)
            self._t0 = time.perf_counter()

    def first_done(self) -> None:
        """The first (unperturbed) forward-backward of the step has run."""
        if self.device is not None and self._t1 is None:
            _synchronize(self.device)
            self._t1 = time.perf_counter()

    def stop(self) -> None:
        """The step's closure (every pass) has run."""
        if self.device is not None:
            _synchronize(self.device)
            self._t2 = time.perf_counter()

    def metrics(self) -> dict[str, float]:
        """``perturbation/step_time`` (seconds of the step's closure: every forward-backward pass and the
        perturbation's own work) and ``perturbation/time_ratio`` (that over its first, unperturbed forward-backward:
        about 1 on an unperturbed step, 2 or more on a perturbed one); empty when the last step was not timed."""
        if self.device is None or self._t1 is None or self._t2 is None:
            return {}
        total, first = self._t2 - self._t0, self._t1 - self._t0
        self.device = None
        return {"perturbation/step_time": total, "perturbation/time_ratio": total / max(first, 1e-9)}
