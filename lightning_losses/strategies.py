"""The Lightning strategies the library's callbacks run under, and the error for the others.

Every callback reduces its statistics over the data-parallel group (:mod:`lightning_losses.distributed`) and keeps
per-step state that is undone when Lightning skips a step. That is exact on one device (``SingleDeviceStrategy``),
under DDP (``DDPStrategy`` and its ``ddp_spawn`` / ``ddp_fork`` / ``ddp_notebook`` launchers, one node or several)
and under FSDP2 / tensor parallelism (``ModelParallelStrategy``, reductions over the mesh's ``data_parallel``
dimension). Refused at ``setup`` with a :class:`~lightning_losses.errors.ConfigurationError` naming the strategy:

- DeepSpeed (``DeepSpeedStrategy``): it owns the optimizer step, gradient accumulation and the skipping of
  overflowing fp16 steps, none of which Lightning's hooks (and so the callbacks) see;
- FSDP1 (``FSDPStrategy``): flat parameters, untested; use ``ModelParallelStrategy`` (FSDP2);
- any other strategy: whether its processes share a batch (and so which group to reduce over) is unknown.

A callback that needs whole parameters on every rank (Entropy-SGD's replica-local Langevin iterates, the curvature
monitor's Hessian-vector products and per-sample gradients) also refuses ``ModelParallelStrategy``
(:func:`refuse_sharded`). It must do so at ``setup`` by the strategy, not by looking at the parameters: Lightning calls
the callbacks' ``setup`` before ``configure_model`` applies ``fully_shard``, so the parameters are still plain tensors.
"""

from __future__ import annotations

from typing import Any

from lightning_losses.errors import ConfigurationError

__all__ = ["SUPPORTED_STRATEGIES", "UNSHARDED_STRATEGIES", "check_strategy", "refuse_sharded"]

#: the strategies the callbacks support, as the errors name them
SUPPORTED_STRATEGIES = (
    "one device (`SingleDeviceStrategy`), DDP (`DDPStrategy`: `ddp`, `ddp_spawn`, `ddp_fork`, ...) and FSDP2 / "
    "tensor parallelism (`ModelParallelStrategy`)"
)

#: the strategies of the callbacks that need whole parameters (:func:`refuse_sharded`), as the errors name them
UNSHARDED_STRATEGIES = (
    "one device (`SingleDeviceStrategy`) and DDP (`DDPStrategy`: `ddp`, `ddp_spawn`, `ddp_fork`, ...)"
)

_DEEPSPEED = (
    "DeepSpeed owns the optimizer step (and its gradient accumulation and skipped fp16 steps), which Lightning's "
    "hooks do not see, so per-step state could advance on steps that never happened"
)


def _named_in_mro(obj: Any, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(obj).__mro__)


def check_strategy(strategy: Any, what: str, *, supported: str = SUPPORTED_STRATEGIES, deepspeed: str = _DEEPSPEED):
    """Raise a :class:`~lightning_losses.errors.ConfigurationError` naming ``strategy`` unless the callback ``what``
    runs exactly under it (see the module docstring); ``supported`` and ``deepspeed`` word the message.

    Example:
        >>> check_strategy(object(), "SampleReweighting")
        Traceback (most recent call last):
        ...
        lightning_losses.errors.ConfigurationError: SampleReweighting does not support the `object` strategy; ...
    """
    from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

    name = type(strategy).__name__
    if _named_in_mro(strategy, "DeepSpeedStrategy"):
        raise ConfigurationError(f"{what} does not support the `{name}` strategy: {deepspeed}; supported: {supported}")
    if not isinstance(strategy, (SingleDeviceStrategy, DDPStrategy, ModelParallelStrategy)):
        raise ConfigurationError(f"{what} does not support the `{name}` strategy; supported: {supported}")


def refuse_sharded(strategy: Any, what: str, why: str) -> None:
    """Raise a :class:`~lightning_losses.errors.ConfigurationError` naming ``strategy`` when it shards the parameters
    (``ModelParallelStrategy``: FSDP2 / tensor parallelism), which the callback ``what`` cannot run on (``why``).

    Example:
        >>> from lightning.pytorch.strategies import ModelParallelStrategy
        >>> refuse_sharded(ModelParallelStrategy(), "EntropySGD", "its Langevin steps are replica-local")
        Traceback (most recent call last):
        ...
        lightning_losses.errors.ConfigurationError: EntropySGD does not support the `ModelParallelStrategy` strategy ...
    """
    from lightning.pytorch.strategies import ModelParallelStrategy

    if isinstance(strategy, ModelParallelStrategy):
        raise ConfigurationError(
            f"{what} does not support the `{type(strategy).__name__}` strategy (FSDP2 / tensor parallelism: every "
            f"rank holds only shards of the parameters): {why}; supported: {UNSHARDED_STRATEGIES}"
        )
