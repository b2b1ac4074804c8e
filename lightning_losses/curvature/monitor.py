r"""``CurvatureMonitor``: occasional curvature and training-health diagnostics over a fixed probe batch.

At its cadence (every ``every_n_steps`` optimizer steps and / or every ``every_n_epochs`` epochs; on other steps it
only compares two integers) the callback evaluates, on a probe batch fixed at the first training batch, in eval mode
(dropout off, BatchNorm running statistics used and left unchanged):

* ``curvature/lambda_max``: the Hessian eigenvalue of largest magnitude by power iteration on Hessian-vector
  products (:func:`~lightning_losses.functional.curvature.power_iteration`), ``curvature/power_iters`` products used;
* ``curvature/edge_of_stability``: :math:`\eta\,\lambda_{max}/2` with :math:`\eta` the first parameter group's
  learning rate: gradient descent on a quadratic is stable while it is below 1, i.e. :math:`\lambda_{max} < 2/\eta`
  (Gilmer et al., ICLR 2022; for Adam compare the preconditioned sharpness instead);
* ``curvature/trace``: Hutchinson's estimate of :math:`\operatorname{tr} H` (``hutchinson_samples`` products);
* ``curvature/grad_norm`` and ``curvature/coherence``: :math:`\alpha = \lVert \mathbb E g_z \rVert^2 /
  \mathbb E \lVert g_z \rVert^2` of per-sample gradients (Chatterjee & Zielinski, 2022; ``torch.func`` ``vmap``);
* ``logit_health/max_logit``, ``logit_health/norm`` (mean row L2 norm), ``logit_health/max_softmax`` (mean) and
  ``logit_health/collapsed_fraction`` (rows whose float32 softmax is one-hot: softmax collapse, Prieto et al.,
  ICLR 2025);
* ``curvature/entanglement`` (with ``preference_fn``): the cosine between the gradients of the chosen and of the
  rejected log-probabilities (gradient entanglement of margin-based preference losses).

**DDP.** The probe is gathered once from every rank's first batch, so every rank holds the same global probe (and a
checkpoint restores it whatever the number of ranks); rank ``r`` evaluates rows ``r::world`` and every product,
gradient and sum is summed over the data-parallel group, so each value equals one process on the whole probe. When it
runs depends only on ``global_step`` / ``current_epoch``, the same on every rank; the random vectors come from a CPU
generator seeded with ``seed + global_step``, the same on every rank. FSDP2 / tensor parallelism
(``ModelParallelStrategy``) is refused at ``setup``: the products and per-sample gradients need whole parameters.

**Cost** per run, for a probe of ``B`` rows: ``power_iters + hutchinson_samples`` double-backward products (about 2-3
forward-backward passes each), one per-sample-gradient pass (about ``B`` single-sample backward passes, vectorised)
and one forward for the logits; 0 on the other steps. The README gives the measured figure on the digits demo.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.distributed as dist
import torch.nn.functional as F
from typing_extensions import override

from lightning_losses import distributed
from lightning_losses._validation import check_bool, check_int, check_number, check_state_keys
from lightning_losses.callbacks import CALLBACKS
from lightning_losses.curvature.probe import FunctionModule, num_rows, rows, sum_over_ranks
from lightning_losses.diagnostics import log_scalars
from lightning_losses.entropy._batch import ForwardFn, batch_logits, batch_target, check_forward_args, check_target_key
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional import curvature as C
from lightning_losses.strategies import refuse_sharded

__all__ = ["CurvatureMonitor"]

LossFn = Callable[[Any, Any], torch.Tensor]
PreferenceFn = Callable[[Any, Any], tuple[torch.Tensor, torch.Tensor]]


def _check_callable(name: str, fn: Any, signature: str) -> Any:
    if fn is not None and not callable(fn):
        raise ConfigurationError(f"`{name}` must be callable as {signature}, got {fn!r}")
    return fn


@CALLBACKS.register("curvature_monitor", aliases=("curvature",))
class CurvatureMonitor(L.Callback):
    """Occasional curvature (top Hessian eigenvalue, trace, edge of stability), gradient-coherence, logit-health and
    gradient-entanglement diagnostics, logged through Lightning (see the module docstring for the values).

    Args:
        every_n_steps: run after every ``N``-th optimizer step (0: never). Default 100.
        every_n_epochs: run at the end of every ``N``-th training epoch (0: never). Default 0.
        probe_size: rows of the probe batch (global, over all ranks), taken from the first training batch.
            Default 64.
        power_iters: most Hessian-vector products of the power iteration. Default 20.
        tol: relative change that stops the power iteration early. Default 1e-3.
        hutchinson_samples: Rademacher vectors of the trace estimate (0: no trace). Default 10.
        coherence: log the gradient norm and coherence (per-sample gradients). Default True.
        logit_health: log the logit-health values. Default True.
        seed: seed of the random vectors (``seed + global_step`` at each run). Default 0.
        input_key / target_key / forward_fn: how logits and labels come out of a batch, as in
            :class:`~lightning_losses.CalibrationMonitor` (defaults ``"x"`` / ``"target"``, ``pl_module(x)``).
        loss_fn: ``loss_fn(pl_module, batch) -> [N]`` per-sample losses to probe (default: cross entropy of the
            logits and labels).
        preference_fn: ``preference_fn(pl_module, batch) -> (chosen_logps [N], rejected_logps [N])``: adds
            ``curvature/entanglement``.

    Attributes:
        last: the values of the last run (floats), by logged name.

    Example:
        >>> cb = CurvatureMonitor(every_n_steps=50, probe_size=32)
        >>> trainer = L.Trainer(callbacks=[cb], logger=False)  # after fit: cb.last["curvature/lambda_max"], ...
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        every_n_epochs: int = 0,
        probe_size: int = 64,
        power_iters: int = 20,
        tol: float = 1e-3,
        hutchinson_samples: int = 10,
        coherence: bool = True,
        logit_health: bool = True,
        seed: int = 0,
        input_key: str = "x",
        target_key: str = "target",
        forward_fn: ForwardFn | None = None,
        loss_fn: LossFn | None = None,
        preference_fn: PreferenceFn | None = None,
    ) -> None:
        self.every_n_steps = check_int("every_n_steps", every_n_steps, low=0)
        self.every_n_epochs = check_int("every_n_epochs", every_n_epochs, low=0)
        if not self.every_n_steps and not self.every_n_epochs:
            raise ConfigurationError(
                "`every_n_steps` and `every_n_epochs` are both 0, so CurvatureMonitor would never run; set one > 0"
            )
        self.probe_size = check_int("probe_size", probe_size, low=1)
        self.power_iters = check_int("power_iters", power_iters, low=1)
        self.tol = check_number("tol", tol, low=0.0)
        self.hutchinson_samples = check_int("hutchinson_samples", hutchinson_samples, low=0)
        self.coherence = check_bool("coherence", coherence)
        self.logit_health = check_bool("logit_health", logit_health)
        self.seed = check_int("seed", seed)
        check_forward_args(input_key, forward_fn)
        self.input_key, self.target_key, self.forward_fn = input_key, check_target_key(target_key), forward_fn
        self.loss_fn = _check_callable("loss_fn", loss_fn, "loss_fn(pl_module, batch) -> [N] losses")
        self.preference_fn = _check_callable(
            "preference_fn", preference_fn, "preference_fn(pl_module, batch) -> (chosen_logps, rejected_logps)"
        )
        self.probe: Any = None
        self.last: dict[str, float] = {}
        self._last_step = -1

    # ------------------------------------------------------------------ probe
    def _take_probe(self, batch: Any) -> None:
        """The first ``probe_size`` rows of the global batch (gathered over ranks, identical on every rank)."""
        local = rows(batch, lambda t: t.detach())
        with torch.no_grad():
            gathered = rows(local, distributed.all_gather_with_grad)
        self.probe = rows(gathered, lambda t: t[: self.probe_size].cpu())

    def _logits(self, module: Any, batch: Any) -> torch.Tensor:
        return batch_logits(module, batch, self.input_key, self.forward_fn)

    def _losses(self, module: Any, batch: Any) -> torch.Tensor:
        if self.loss_fn is not None:
            out = self.loss_fn(module, batch)
            if not isinstance(out, torch.Tensor) or out.ndim != 1:
                got = f"shape {list(out.shape)}" if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"`loss_fn` must return per-sample losses [N], got {got}")
            return out
        logits = self._logits(module, batch)
        return F.cross_entropy(logits.float(), batch_target(batch, self.target_key), reduction="none")

    # ------------------------------------------------------------------ measurement
    def measure(self, pl_module: Any, step: int = 0) -> dict[str, torch.Tensor]:
        """Every value on the probe batch now (a collective under DDP: call it on every rank), without logging."""
        if self.probe is None:
            raise ConfigurationError("CurvatureMonitor has no probe batch yet: it is taken from the first train batch")
        device = next(pl_module.parameters()).device
        world, rank = distributed.world_size(), distributed.rank()
        n = num_rows(self.probe)
        batch = rows(self.probe, lambda t: t[rank::world].to(device))
        params = [p for p in pl_module.parameters() if p.requires_grad]
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        out: dict[str, torch.Tensor] = {}
        try:
            with torch.enable_grad():
                loss = self._losses(pl_module, batch).sum() / n  # this rank's share of the probe's mean loss
                out.update(self._curvature(loss, params, step))
                if self.coherence:
                    out.update(self._coherence(pl_module, batch, params, n))
                if self.preference_fn is not None:
                    out["curvature/entanglement"] = self._entanglement(pl_module, batch, params, n)
            if self.logit_health:
                with torch.no_grad():
                    out.update(self._health(self._logits(pl_module, batch)))
        finally:
            for module, training in modes.items():
                module.training = training
        return {k: v.detach().double().cpu() for k, v in out.items()}

    def _curvature(self, loss: torch.Tensor, params: list[torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        local_hvp = C.hessian_vector_product(loss, params)

        def hvp(v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            return sum_over_ranks(local_hvp(v))

        generator = torch.Generator().manual_seed(self.seed + step)
        value, _, used = C.power_iteration(hvp, params, iters=self.power_iters, tol=self.tol, generator=generator)
        out = {"curvature/lambda_max": value, "curvature/power_iters": torch.tensor(float(used))}
        if self.hutchinson_samples:
            out["curvature/trace"] = C.hutchinson_trace(
                hvp, params, samples=self.hutchinson_samples, generator=generator
            )
        return out

    def _coherence(self, module: Any, batch: Any, params: list[torch.Tensor], n: int) -> dict[str, torch.Tensor]:
        from torch.func import functional_call, grad, vmap

        wrapped = FunctionModule(module, lambda m, b: self._losses(m, b).sum())
        names = [name for name, p in wrapped.named_parameters() if p.requires_grad]
        values = {name: p.detach() for name, p in wrapped.named_parameters() if p.requires_grad}
        frozen = {name: p for name, p in wrapped.named_parameters() if not p.requires_grad}
        buffers = {**dict(wrapped.named_buffers()), **frozen}

        def one(p: dict[str, torch.Tensor], sample: Any) -> torch.Tensor:
            single = rows(sample, lambda t: t.unsqueeze(0), keep_scalars=True)
            return functional_call(wrapped, (p, buffers), (single,))

        per_sample = vmap(grad(one), in_dims=(None, 0))(values, batch)
        flat = torch.cat([per_sample[name].reshape(per_sample[name].shape[0], -1).double() for name in names], 1)
        total, sq = sum_over_ranks([flat.sum(0), flat.pow(2).sum()])
        mean_sq = sq / n
        return {
            "curvature/grad_norm": (total / n).norm(),
            "curvature/coherence": (total / n).pow(2).sum() / mean_sq.clamp_min(torch.finfo(torch.float64).tiny),
        }

    def _entanglement(self, module: Any, batch: Any, params: list[torch.Tensor], n: int) -> torch.Tensor:
        chosen, rejected = self.preference_fn(module, batch)
        grads = []
        for logps in (chosen, rejected):
            g = torch.autograd.grad(logps.sum() / n, params, allow_unused=True, retain_graph=True)
            grads.append([torch.zeros_like(p) if gi is None else gi for gi, p in zip(g, params)])
        g_w = sum_over_ranks(grads[0])
        g_l = sum_over_ranks(grads[1])
        return C.cosine(g_w, g_l)

    def _health(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        h = C.logit_health(logits)
        count, norm, top, collapsed = sum_over_ranks([h["count"], h["norm_sum"], h["max_softmax_sum"], h["collapsed"]])
        (max_logit,) = sum_over_ranks([h["max_logit"]], op=dist.ReduceOp.MAX if distributed.is_distributed() else None)
        count = count.clamp_min(1.0)
        return {
            "logit_health/max_logit": max_logit,
            "logit_health/norm": norm / count,
            "logit_health/max_softmax": top / count,
            "logit_health/collapsed_fraction": collapsed / count,
        }

    def _run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = int(trainer.global_step)
        out = self.measure(pl_module, step)
        optimizers = getattr(trainer, "optimizers", None) or []
        if optimizers and optimizers[0].param_groups:
            lr = float(optimizers[0].param_groups[0]["lr"])
            out["curvature/edge_of_stability"] = out["curvature/lambda_max"] * lr / 2
        self.last = {k: float(v) for k, v in out.items()}  # at the cadence only
        log_scalars(trainer, pl_module, {k: v.float() for k, v in out.items()}, own_interval=True)

    # ------------------------------------------------------------------ hooks
    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        refuse_sharded(
            getattr(trainer, "strategy", None),
            "CurvatureMonitor",
            "its Hessian-vector products, per-sample gradients and power-iteration vectors are formed on whole "
            "parameters (summed over data-parallel ranks), not on shards",
        )

    @override
    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        if self.probe is None:
            self._take_probe(batch)
        step = trainer.global_step  # the same on every rank: the decision to run is collective
        if self.every_n_steps and step and step % self.every_n_steps == 0 and step != self._last_step:
            self._last_step = step
            self._run(trainer, pl_module)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.every_n_epochs and self.probe is not None and (trainer.current_epoch + 1) % self.every_n_epochs == 0:
            self._run(trainer, pl_module)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"probe": self.probe, "seed": self.seed, "last_step": self._last_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_state_keys("CurvatureMonitor", state_dict, ("probe", "seed", "last_step"))
        self.probe, self.seed, self._last_step = state_dict["probe"], state_dict["seed"], state_dict["last_step"]
