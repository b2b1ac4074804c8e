"""Runs inside the 2-process gloo pool: a tiny language model whose loss is the chunked linear cross entropy on the
output weight, fitted under FSDP2 (the head in its own ``fully_shard`` unit, or in the root's) and under DDP."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll
from tests.helpers.trainers import quiet_trainer

from . import _fsdp2

VOCAB, HIDDEN, TOKENS = 11, 6, 5


class LM(ll.LossesMixin, L.LightningModule):
    """Embedding, one tanh layer, an output head used only through its weight (``linear_cross_entropy``).

    ``head_unit``: the head is its own FSDP2 unit (its weight is a sharded ``DTensor`` when the loss reads it) or
    part of the root unit (unsharded by the root's forward)."""

    def __init__(self, head_unit: bool, bias: bool = False, objective: Any = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head_unit = head_unit
        self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
        self.body = torch.nn.Linear(HIDDEN, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, VOCAB, bias=bias)
        spec = {"loss": "linear_cross_entropy", "chunk_size": 3, "inputs": {"weight": "lm_weight"}}
        if bias:
            spec["inputs"]["bias"] = "lm_bias"
        self.configure_objective(objective or {"lm": spec})

    def configure_model(self) -> None:
        mesh = getattr(self, "_device_mesh", None)
        if mesh is None or not isinstance(self.trainer.strategy, ModelParallelStrategy):
            return
        from torch.distributed.fsdp import fully_shard

        dp = mesh["data_parallel"]
        units = (self.embed, self.body, self.head) if self.head_unit else (self.embed, self.body)
        for layer in units:
            fully_shard(layer, mesh=dp)
        fully_shard(self, mesh=dp)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.body(self.embed(x)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        extra = {"lm_bias": self.head.bias} if self.head.bias is not None else {}
        return self.compute_loss(hidden=self(x), target=y, lm_weight=self.head.weight, **extra)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5, momentum=0.9)


def data(n: int = 16) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randint(0, VOCAB, (n, TOKENS), generator=g), torch.randint(0, VOCAB, (n, TOKENS), generator=g)
    y[::3, :2] = -100  # prompt tokens: per-rank token counts differ, the global normalisation matters
    return DataLoader(TensorDataset(x, y), batch_size=4, shuffle=False)


def fit(strategy: str, callbacks: list[Any], head_unit: bool = True, steps: int = 3, **model_kw: Any) -> dict:
    """One fit of :class:`LM` under ``"fsdp2"`` or ``"ddp"``; the full weights afterwards."""
    with _fsdp2._lightning_env():
        if strategy == "fsdp2":
            strat: Any = ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
        else:
            strat = "ddp"
        model = LM(head_unit, **model_kw)
        t = quiet_trainer(callbacks, max_steps=steps, strategy=strat, devices=2)
        t.fit(model, data())
        return _fsdp2.full_weights(model)


def initial_weights(head_unit: bool) -> dict:
    return _fsdp2.full_weights(LM(head_unit))


def sharded_functional(bias: bool) -> dict[str, float]:
    """The functional entry points with a ``Shard(0)`` weight (and bias) on a 1-D mesh, each rank on its own tokens,
    against the materialised logits: ``name -> max |difference|`` of the per-token values and of the gradients
    (the sharded parameters' against the average over ranks of the full gradients, as DDP has them)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    from lightning_losses.functional import linear_cross_entropy, linear_entropy, linear_log_probs

    mesh = init_device_mesh("cpu", (2,))
    g = torch.Generator().manual_seed(5)
    w0, b0 = torch.randn(VOCAB, HIDDEN, generator=g, dtype=torch.float64), torch.randn(VOCAB, generator=g).double()
    g.manual_seed(10 + dist.get_rank())  # each rank its own tokens
    h0 = torch.randn(3, TOKENS, HIDDEN, generator=g, dtype=torch.float64)
    y = torch.randint(0, VOCAB, (3, TOKENS), generator=g)
    y[0, :2] = -100
    up = torch.randn(3, TOKENS, generator=g, dtype=torch.float64)

    def terms(fn):
        out = {}
        for name, make in {
            "ce": lambda h, w, b: fn("ce", h, w, b),
            "logp": lambda h, w, b: fn("logp", h, w, b),
            "entropy": lambda h, w, b: fn("entropy", h, w, b),
        }.items():
            w = torch.nn.Parameter(distribute_tensor(w0.clone(), mesh, [Shard(0)]))
            b = torch.nn.Parameter(distribute_tensor(b0.clone(), mesh, [Shard(0)])) if bias else None
            wr, br = w0.clone().requires_grad_(), (b0.clone().requires_grad_() if bias else None)
            h, hr = h0.clone().requires_grad_(), h0.clone().requires_grad_()
            value = make(h, w, b)
            (value * up).sum().backward()
            ref = _materialised(name, hr, wr, br, y)
            (ref * up).sum().backward()
            grads = [(w.grad.full_tensor(), wr.grad), (h.grad, hr.grad)]
            if bias:
                grads.append((b.grad.full_tensor(), br.grad))
            out[name] = float((value - ref).abs().max())
            for i, (mine, full) in enumerate(grads):
                if i != 1:  # parameters: DDP averages the ranks' gradients
                    full = full.clone()
                    dist.all_reduce(full)
                    full /= 2
                out[f"{name}_grad{i}"] = float((mine - full).abs().max())
        return out

    def call(name, h, w, b):
        if name == "ce":
            return linear_cross_entropy(h, w, y, b, z_loss=1e-2, chunk_size=4, impl="chunked")
        if name == "logp":
            return linear_log_probs(h, w, y, b, chunk_size=4)
        return linear_entropy(h, w, b, chunk_size=4)

    return terms(call)


def _materialised(name: str, h, w, b, y) -> torch.Tensor:
    z = h @ w.T + (b if b is not None else 0)
    logp = torch.log_softmax(z, -1)
    if name == "entropy":
        return -(logp.exp() * logp).sum(-1)
    valid = y != -100
    lp = logp.gather(-1, y.clamp_min(0)[..., None])[..., 0] * valid
    if name == "logp":
        return lp
    return (-lp + 1e-2 * torch.logsumexp(z, -1) ** 2) * valid


def hidden_dtensor_error() -> str:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, distribute_tensor

    from lightning_losses.functional import linear_cross_entropy

    h = distribute_tensor(torch.zeros(2, TOKENS, HIDDEN), init_device_mesh("cpu", (2,)), [Replicate()])
    try:
        linear_cross_entropy(h, torch.zeros(VOCAB, HIDDEN), torch.zeros(2, TOKENS, dtype=torch.long))
    except TypeError as err:
        return str(err)
    return "no error"
