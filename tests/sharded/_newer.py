"""Runs inside the 2-process gloo pool: the newer methods (reweighters, losses and callbacks added after the FSDP2
support) fitted under FSDP2 and under DDP on the same data (``_fsdp2.fit``), and the ones refused under FSDP2."""

from __future__ import annotations

import os
from typing import Any

import torch

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError

from . import _fsdp2


def cases(held_out: str) -> dict[str, tuple[Any, dict[str, Any]]]:
    """name -> (callbacks factory, fit arguments); ``held_out``: MAT's table file."""
    sync = {"sync_ascent": True}
    return {
        "storm": (lambda: [ll.SampleReweighting("storm", meta_lr=1.0, lookahead_lr=1.0)], {}),
        "per_class_normalized": (lambda: [ll.SampleReweighting("per_class_normalized")], {}),
        "sovr": (lambda: [], {"objective": {"sovr": {"fraction": 0.5}}}),
        "mat": (
            lambda: [],
            {"objective": {"mat": {"num_classes": 3, "held_out": held_out, "temperature": 1.0}}, "indexed": True},
        ),
        "perp_grad": (lambda: [ll.PerpGrad()], {}),
        "perp_grad_sam": (lambda: [ll.PerpGrad(), ll.SAM(rho=0.5, **sync)], {}),
        "udim": (lambda: [ll.UDIM(rho=0.5, rho_x=0.5, lmbda=0.5, **sync)], {}),
    }


#: callbacks that need whole parameters: refused at setup under FSDP2
REFUSED = {
    "EntropySGD": lambda: ll.EntropySGD(inner_steps=2),
    "CurvatureMonitor": lambda: ll.CurvatureMonitor(every_n_steps=1, probe_size=8, power_iters=2, hutchinson_samples=1),
}


def _max_diff(a: dict, b: dict) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def compare(tmp: str) -> dict[str, tuple[float, float]]:
    """``name -> (|fsdp2 - ddp|, |ddp - plain ddp|)`` for every case (plain: cross entropy, no callback)."""
    held_out = os.path.join(tmp, "held_out.pt")
    if _fsdp2.rank() == 0:
        torch.save(torch.randn(32, 3, generator=torch.Generator().manual_seed(5)), held_out)
    torch.distributed.barrier()
    plain: dict[bool, dict] = {}
    out = {}
    for name, (callbacks, kwargs) in cases(held_out).items():
        indexed = kwargs.get("indexed", False)
        if indexed not in plain:
            plain[indexed] = _fsdp2.fit("ddp", [], indexed=indexed)
        sharded = _fsdp2.fit("fsdp2", callbacks(), **kwargs)
        replicated = _fsdp2.fit("ddp", callbacks(), **kwargs)
        out[name] = (_max_diff(sharded, replicated), _max_diff(replicated, plain[indexed]))
    return out


def refusals() -> dict[str, str]:
    """``name -> the error`` of a fit under FSDP2 with each callback of :data:`REFUSED`."""
    out = {}
    for name, callback in REFUSED.items():
        try:
            _fsdp2.fit("fsdp2", [callback()], steps=2)
            out[name] = "no error"
        except ConfigurationError as err:
            out[name] = f"ConfigurationError: {err}"
        except Exception as err:  # noqa: BLE001 - returned to the test
            out[name] = repr(err)
    return out


def _mat(model: Any) -> Any:
    from lightning_losses.losses.mat import MAT

    (loss,) = [m for m in model.modules() if isinstance(m, MAT)]
    return loss


def mat_table_through_checkpoint(tmp: str, distributed_checkpoint: bool, num_samples: int | None) -> dict[str, float]:
    """MAT's held-out table (its ``get_extra_state``) through an FSDP2 checkpoint: a fit with the table from a file
    saves a checkpoint, a fresh model without the table (``num_samples``: its size) resumes from it.
    ``{"seen": rows the resumed table has, "diff": max |resumed table - file|}``."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    from tests.helpers.trainers import quiet_trainer

    held_out = os.path.join(tmp, "held_out.pt")
    path = os.path.join(tmp, f"mat-{distributed_checkpoint}.ckpt")
    table = torch.randn(32, 3, generator=torch.Generator().manual_seed(5))
    if _fsdp2.rank() == 0:
        torch.save(table, held_out)
    torch.distributed.barrier()
    spec = {"num_classes": 3, "temperature": 1.0, "num_samples": num_samples}
    with _fsdp2._lightning_env():
        for source in (held_out, None):
            strat = ModelParallelStrategy(
                data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=distributed_checkpoint
            )
            model = _fsdp2.Net(objective={"mat": {**spec, "held_out": source}})
            trainer = quiet_trainer([], max_steps=1, strategy=strat, devices=2)
            trainer.fit(model, _fsdp2.data(indexed=True), ckpt_path=None if source else path)
            if source:
                trainer.save_checkpoint(path)
    rows, seen = _mat(model).held_out_logits(torch.arange(32))
    return {"seen": int(seen.sum()), "diff": float((rows[seen] - table[seen]).abs().max()) if seen.any() else -1.0}


def useful(strategy: str) -> tuple[dict, torch.Tensor]:
    """A 2-epoch fit with USEFUL (split after epoch 1) under ``"fsdp2"`` or ``"ddp"``: (weights, upsampled mask)."""
    from torch.utils.data import DataLoader

    from tests.helpers.trainers import quiet_trainer

    loader = _fsdp2.data(indexed=True)
    sampler = ll.UpsampleSampler(len(loader.dataset), num_replicas=2, rank=_fsdp2.rank(), seed=0)
    loader = DataLoader(loader.dataset, batch_size=4, sampler=sampler)
    cb = ll.USEFUL(separating_epoch=1)
    with _fsdp2._lightning_env():
        if strategy == "fsdp2":
            from lightning.pytorch.strategies import ModelParallelStrategy

            strat: Any = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        else:
            strat = "ddp"
        model = _fsdp2.Net()
        t = quiet_trainer([cb], max_epochs=2, strategy=strat, devices=2, use_distributed_sampler=False)
        t.fit(model, loader)
    return _fsdp2.full_weights(model), cb.upsampled.clone()


def useful_compare() -> tuple[float, bool, int]:
    """``(|fsdp2 - ddp| weights, same upsampled mask, samples upsampled)``."""
    sharded, mask_s = useful("fsdp2")
    replicated, mask_r = useful("ddp")
    return _max_diff(sharded, replicated), bool(torch.equal(mask_s, mask_r)), int(mask_r.sum())
