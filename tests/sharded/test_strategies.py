"""Strategies the perturbation callbacks refuse, with errors naming the strategy and what is supported."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy, SingleDeviceStrategy

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation.sharding import check_strategy
from tests.perturbation._lightning import Tiny

SUPPORTED = r"supported: one device \(`SingleDeviceStrategy`\), DDP \(`DDPStrategy`"


class DeepSpeedStrategy(DDPStrategy):
    """A stand-in named as Lightning's (DeepSpeed itself is not installed): matched by name in the class's bases."""


class OwnStep:
    """Any other strategy (one that may own the optimizer step); only its type is looked at."""


def _setup(callback, strategy):
    callback.setup(SimpleNamespace(strategy=strategy), Tiny(), "fit")


def test_deepspeed_is_refused_at_setup_naming_it():
    with pytest.raises(ConfigurationError, match=rf"SAM does not support the `DeepSpeedStrategy` strategy: DeepSpeed "
                       rf"owns the optimizer step, .*; {SUPPORTED}"):  # fmt: skip
        _setup(ll.SAM(), DeepSpeedStrategy())


def test_unknown_strategy_is_refused_at_setup_naming_it():
    with pytest.raises(ConfigurationError, match=rf"AWP does not support the `OwnStep` strategy; {SUPPORTED}"):
        _setup(ll.AWP(), OwnStep())


def test_fsdp1_is_refused_by_name():
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ConfigurationError, match=r"does not support the `FSDPStrategy` strategy"):
        check_strategy(FSDPStrategy(), "SAM", sync_ascent=True)


def test_fsdp2_needs_sync_ascent():
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    with pytest.raises(ConfigurationError, match=r"SAM under `ModelParallelStrategy` needs `sync_ascent=True`, got "
                       r"sync_ascent=False: FSDP2 reduces the gradients"):  # fmt: skip
        _setup(ll.SAM(), strategy)
    check_strategy(strategy, "SAM", sync_ascent=True)  # accepted


def test_supported_strategies_pass():
    import torch

    check_strategy(SingleDeviceStrategy(torch.device("cpu")), "SAM", sync_ascent=False)
    check_strategy(DDPStrategy(), "SAM", sync_ascent=False)


#: every library callback that reduces over the data-parallel group and keeps per-step state, freshly built
REDUCING = {
    "SampleReweighting": lambda: ll.SampleReweighting("loss_softmax"),
    "EntropyControl": lambda: ll.EntropyControl(target=0.5, lr=0.1),
    "SAF": lambda: ll.SAF(epochs_ago=1, start_epoch=1, coefficient=1.0),
}
GENERAL = r"supported: one device \(`SingleDeviceStrategy`\), DDP \(`DDPStrategy`.*and FSDP2 / tensor parallelism \(`ModelParallelStrategy`\)$"  # noqa: E501


@pytest.mark.parametrize("name", list(REDUCING))
def test_reducing_callbacks_refuse_deepspeed_fsdp1_and_unknown_strategies(name):
    from lightning.pytorch.strategies import FSDPStrategy

    with pytest.raises(ConfigurationError, match=rf"^{name} does not support the `DeepSpeedStrategy` strategy: "
                       rf"DeepSpeed owns the optimizer step \(and its gradient accumulation and skipped fp16 steps\), "
                       rf".*; {GENERAL}"):  # fmt: skip
        _setup(REDUCING[name](), DeepSpeedStrategy())
    with pytest.raises(ConfigurationError, match=rf"^{name} does not support the `FSDPStrategy` strategy; {GENERAL}"):
        _setup(REDUCING[name](), FSDPStrategy())
    with pytest.raises(ConfigurationError, match=rf"^{name} does not support the `OwnStep` strategy; {GENERAL}"):
        _setup(REDUCING[name](), OwnStep())


@pytest.mark.parametrize("name", list(REDUCING))
def test_reducing_callbacks_accept_the_supported_strategies(name):
    import torch

    for strategy in (
        SingleDeviceStrategy(torch.device("cpu")),
        DDPStrategy(),
        ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1),
    ):
        _setup(REDUCING[name](), strategy)


#: callbacks that need whole parameters on every rank: refused under FSDP2 / tensor parallelism at setup
WHOLE_PARAMETERS = {
    "EntropySGD": lambda: ll.EntropySGD(inner_steps=2),
    "CurvatureMonitor": lambda: ll.CurvatureMonitor(every_n_steps=1),
    "MESA": lambda: ll.MESA(),
}


@pytest.mark.parametrize("name", list(WHOLE_PARAMETERS))
def test_callbacks_needing_whole_parameters_refuse_model_parallel_at_setup(name):
    import torch

    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    with pytest.raises(ConfigurationError, match=rf"^{name} does not support the `ModelParallelStrategy` strategy "
                       r"\(FSDP2 / tensor parallelism: every rank holds only shards of the parameters\): .*; "
                       r"supported: one device \(`SingleDeviceStrategy`\) and DDP \(`DDPStrategy`: `ddp`, "
                       r"`ddp_spawn`, `ddp_fork`, \.\.\.\)$"):  # fmt: skip
        _setup(WHOLE_PARAMETERS[name](), strategy)
    for accepted in (SingleDeviceStrategy(torch.device("cpu")), DDPStrategy()):
        WHOLE_PARAMETERS[name]().setup(
            SimpleNamespace(strategy=accepted, accumulate_grad_batches=1, precision_plugin=None), Tiny(), "validate"
        )


def test_udim_under_fsdp2_needs_sync_ascent():
    strategy = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    with pytest.raises(ConfigurationError, match=r"^UDIM under `ModelParallelStrategy` needs `sync_ascent=True`"):
        _setup(ll.UDIM(rho_x=0.5), strategy)
    _setup(ll.UDIM(rho_x=0.5, sync_ascent=True), strategy)  # accepted (FSDP2 == DDP: test_newer_methods.py)
