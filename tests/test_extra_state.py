"""Module extra state saved apart under FSDP2 (:mod:`lightning_losses._extra_state`), without processes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy

from lightning_losses._extra_state import KEY, load_extra_states, save_extra_states
from lightning_losses.losses.mat import MAT


def _model(table: torch.Tensor | None = None) -> torch.nn.Module:
    model = torch.nn.Module()
    model.head = torch.nn.Linear(2, 2)
    model.mat = MAT(num_classes=2, temperature=1.0)
    if table is not None:
        model.mat.load_held_out(table)
    return model


def test_saved_apart_under_model_parallel_only_and_set_back():
    table = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0]])
    checkpoint: dict = {}
    save_extra_states(_model(table), checkpoint, DDPStrategy())
    assert checkpoint == {}  # DDP loads the module's extra state itself
    save_extra_states(_model(table), checkpoint, ModelParallelStrategy())
    assert list(checkpoint[KEY]) == ["mat"]
    fresh = _model()
    load_extra_states(fresh, checkpoint)
    rows, seen = fresh.mat.held_out_logits(torch.arange(3))
    assert bool(seen.all()) and torch.equal(rows, table)
    load_extra_states(fresh, {})  # a checkpoint without them: nothing to do


def test_extra_state_of_a_missing_submodule_is_refused():
    checkpoint = {KEY: {"other.mat": _model(torch.zeros(1, 2)).mat.get_extra_state()}}
    with pytest.raises(ValueError, match=r"the checkpoint holds the extra state of the submodules \['other.mat'\], "
                       r"which the model does not have \(its submodules with extra state: \['mat'\]\)"):  # fmt: skip
        load_extra_states(_model(), checkpoint)


def test_mixin_hooks_use_the_trainer_strategy():
    from tests.sharded._fsdp2 import Net

    model = Net(objective={"mat": {"num_classes": 3, "temperature": 1.0}})
    model.objective.losses["mat"].load_held_out(torch.ones(4, 3))
    model.__dict__["_trainer"] = SimpleNamespace(strategy=ModelParallelStrategy())
    checkpoint: dict = {}
    model.on_save_checkpoint(checkpoint)
    assert list(checkpoint[KEY]) == ["objective.losses.mat"]
    fresh = Net(objective={"mat": {"num_classes": 3, "temperature": 1.0}})
    fresh.on_load_checkpoint(checkpoint)
    assert bool(fresh.objective.losses["mat"].held_out_logits(torch.arange(4))[1].all())
