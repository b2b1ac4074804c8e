"""Runs inside the 2-process gloo pool: tensor-parallel layouts (a 1-D ``tp`` mesh of 2, i.e. dp=1, tp=2)."""

from __future__ import annotations

import torch


def sam_with_partial_gradient() -> tuple[tuple, float]:
    """SAM (manual helper) on a replicated weight used on activations sharded over a ``tp`` mesh, whose gradient
    is a ``Partial`` sum: ``(placements of the descent gradient, max |it - one process on the whole batch|)``."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    from lightning_losses.perturbation import build_perturbation, perturbed_backward

    mesh = init_device_mesh("cpu", (2,), mesh_dim_names=("tp",))
    g = torch.Generator().manual_seed(0)
    w, x = torch.randn(4, 3, generator=g), torch.randn(6, 4, generator=g)
    model = torch.nn.Module()
    model.w = torch.nn.Parameter(distribute_tensor(w.clone(), mesh, [Replicate()]))
    xs = distribute_tensor(x, mesh, [Shard(0)])
    sam = build_perturbation("sam", rho=0.5, sync_ascent=True)
    perturbed_backward(sam, model, lambda: torch.tanh(xs @ model.w).square().sum())

    def grad_at(weights: torch.Tensor) -> torch.Tensor:
        weights = weights.clone().requires_grad_()
        return torch.autograd.grad(torch.tanh(x @ weights).square().sum(), weights)[0]

    ascent = grad_at(w)
    expected = grad_at(w + 0.5 * ascent / ascent.norm())
    grad = model.w.grad
    return tuple(grad.placements), float((grad.full_tensor() - expected).abs().max())


def partial_tensor_refused() -> str:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial

    from lightning_losses.errors import ConfigurationError
    from lightning_losses.perturbation.sharding import ShardSum

    pending = DTensor.from_local(torch.ones(3), init_device_mesh("cpu", (2,)), [Partial()])
    try:
        ShardSum([torch.ones(2), pending])
    except ConfigurationError as err:
        return str(err)
    return "no error"
