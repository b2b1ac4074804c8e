"""Runs inside the 2-process gloo pool: a fit under FSDP2 interrupted after its first epoch and resumed from the
checkpoint (distributed or full) against the same fit uninterrupted, with the library's stateful callbacks."""

from __future__ import annotations

import os
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy

import lightning_losses as ll
from lightning_losses.distributed import rank
from tests.helpers.trainers import quiet_trainer

from . import _fsdp2

#: name -> callbacks (fresh objects per fit)
CASES = {
    "reweight_sam_entropy": lambda: [
        ll.SampleReweighting("per_sample_ema"),
        ll.SAM(rho=0.5, probability=0.5, seed=3, sync_ascent=True),
        ll.EntropyControl(target=0.5, lr=0.1),
    ],
    "saf": lambda: [ll.SAF(epochs_ago=1, start_epoch=1, coefficient=1.0)],
}


def _state(callbacks: list[Any]) -> dict[str, Any]:
    return {type(c).__name__: c.state_dict() for c in callbacks}


def _fit(callbacks: list[Any], epochs: int, distributed_checkpoint: bool, save: str | None, resume: str | None):
    with _fsdp2._lightning_env():
        strat = ModelParallelStrategy(
            data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=distributed_checkpoint
        )
        model = _fsdp2.Net()
        t = quiet_trainer(callbacks, max_epochs=epochs, strategy=strat, devices=2)
        t.fit(model, _fsdp2.data(indexed=True), ckpt_path=resume)
        if save is not None:
            t.save_checkpoint(save)
        return _fsdp2.full_weights(model), _state(callbacks)


def resume(tmp: str, name: str, distributed_checkpoint: bool) -> dict[str, Any]:
    """``{"weights": max |resumed - uninterrupted|, "moved": max |uninterrupted - after epoch 1|, "state": the
    callback state entries that differ}`` after 2 epochs (4 steps each)."""
    path = os.path.join(tmp, f"{name}-{distributed_checkpoint}.ckpt")
    whole, whole_state = _fit(CASES[name](), 2, distributed_checkpoint, None, None)
    half, _ = _fit(CASES[name](), 1, distributed_checkpoint, path, None)
    resumed, resumed_state = _fit(CASES[name](), 2, distributed_checkpoint, None, path)
    return {
        "rank": rank(),
        "weights": max(float((resumed[k] - whole[k]).abs().max()) for k in whole),
        "moved": max(float((half[k] - whole[k]).abs().max()) for k in whole),
        "state": _differences(whole_state, resumed_state),
    }


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [] if set(a) == set(b) else [f"{prefix}: keys {sorted(set(a) ^ set(b))}"]
        for k in set(a) & set(b):
            out += _differences(a[k], b[k], f"{prefix}.{k}")
        return out
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        same = a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=1e-6, equal_nan=True))
        return [] if same else [prefix]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _differences(x, y, f"{prefix}[{i}]")]
    return [] if a == b else [f"{prefix}: {a!r} != {b!r}"]
