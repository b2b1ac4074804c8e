"""The combination matrix's model, data, runs and state snapshots (shared by ``test_matrix.py``).

Model: a float64 ``LossesMixin`` classifier with a **tied weight** (one ``nn.Parameter`` registered as
``mix1.weight`` and ``mix2.weight`` and used twice in the forward) and a **BatchNorm** layer. The BatchNorm is a
*ghost* BatchNorm1d: it normalises each chunk of ``CHUNK`` rows separately (and updates its running statistics once
per chunk, in order). A batch of ``k * CHUNK`` rows is therefore normalised exactly as ``k`` micro-batches of
``CHUNK`` rows (or ``k`` DDP ranks with ``CHUNK`` rows each), so the accumulation and DDP invariants can be exact
with BatchNorm in the model.

Data: ``N`` samples with ``x``, ``target``, ``group`` (2 groups), ``index`` and a per-sample ``scale`` multiplied
into the logits after the network (1.0 everywhere; NaN for some samples of one batch in the ``"nan"`` data set, so
that those samples' losses, entropies and predictions are NaN while BatchNorm only ever sees finite inputs).

A run is one ``Trainer.fit`` of ``EPOCHS`` epochs; after every optimizer step a snapshot of every state is taken:
the module's ``state_dict`` (both names of the tied weight, BatchNorm buffers), the optimizer state, the reweighter
state, the entropy callback (controller and window), the perturbation engine counters and SAF's trajectory table.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import lightning_losses as ll
from tests.helpers.ddp import lightning_env
from tests.helpers.trainers import quiet_trainer

N = 16  # samples
CHUNK = 8  # micro-batch size B (ghost BatchNorm chunk); 2 batches per epoch
DDP_CHUNK = 4  # per-rank batch (and ghost chunk) of the DDP runs
FEATURES, HIDDEN, CLASSES = 6, 8, 3
EPOCHS = 2
#: NaN ``scale`` for some samples of one batch (at batch size CHUNK): batch 1 (samples 8..15: step 2 at k=1, the
#: last micro-batch of step 1 at k=2) for ``"nan"``, batch 0 (the first micro-batch at k=2) for ``"nan_first"``
NAN_SAMPLES = {"nan": (9, 12, 14), "nan_first": (1, 4)}
RAGGED = 12  # ``"ragged"`` data: 12 samples, micro-batches of 8 and 4 rows

PERTURBATIONS = ("none", "sam", "asam", "adversarial_model_perturbation", "awp", "saf", "sam_every_2")
#: the peer presets (issue 18) on the same engine: radius 0, accumulation and the NaN batch, as the ones above
PEER_PERTURBATIONS = ("gsam", "wsam", "friendly_sam", "gam", "fad")
REWEIGHTERS = ("none", "loss_softmax", "group_dro", "per_sample_ema", "jtt")


class GhostBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d applied to consecutive chunks of ``chunk`` rows (running statistics updated once per chunk)."""

    def __init__(self, num_features: int, chunk: int, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.chunk = chunk

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or x.shape[0] <= self.chunk:
            return super().forward(x)
        return torch.cat([super(GhostBatchNorm1d, self).forward(c) for c in x.split(self.chunk)])


class MatrixNet(ll.LossesMixin, L.LightningModule):
    """Linear -> ghost BatchNorm -> tanh -> tied (mix1 = mix2) residual block used twice -> head.

    Args:
        skip_nonfinite_inputs: the "never saw it" comparator: ``training_step`` runs the forward (BatchNorm sees the
            batch as in the NaN run) and returns ``None`` before ``compute_loss`` when ``scale`` has a NaN.
    """

    def __init__(self, skip_nonfinite_inputs: bool = False, chunk: int = CHUNK) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(1234)
        self.inp = nn.Linear(FEATURES, HIDDEN, dtype=torch.float64)
        self.bn = GhostBatchNorm1d(HIDDEN, chunk, dtype=torch.float64)
        self.mix1 = nn.Linear(HIDDEN, HIDDEN, dtype=torch.float64)
        self.mix2 = nn.Linear(HIDDEN, HIDDEN, bias=False, dtype=torch.float64)
        self.mix2.weight = self.mix1.weight  # tied: one Parameter, two names
        self.head = nn.Linear(HIDDEN, CLASSES, dtype=torch.float64)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
            self.bn.weight.add_(1.0)
        self.configure_objective({"ce": {"loss": "cross_entropy"}})
        self.skip_nonfinite_inputs = skip_nonfinite_inputs
        self.dump_in_perturbed_pass = False
        self.dumped: list[dict[str, Any]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.bn(self.inp(x)))
        h = torch.tanh(self.mix1(h)) + h
        h = torch.tanh(self.mix2(h)) + h
        return self.head(h)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | None:
        logits = self(batch["x"]) * batch["scale"].unsqueeze(1)
        if self.dump_in_perturbed_pass and self.objective_logging_suppressed:
            checkpoint = self.trainer._checkpoint_connector.dump_checkpoint()
            # copied now: the entries are live tensors the optimizer step changes afterwards
            self.dumped.append({k: v.detach().clone() for k, v in checkpoint["state_dict"].items()})
        if self.skip_nonfinite_inputs and not bool(torch.isfinite(batch["scale"]).all()):
            return None
        loss = self.compute_loss(logits=logits, target=batch["target"], index=batch["index"], group=batch["group"])
        if not bool(torch.isfinite(loss)):
            return None  # the user's guard: skip the step
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.2, momentum=0.9)


class MatrixData(Dataset):
    """``N`` deterministic samples; ``nan``: a key of :data:`NAN_SAMPLES` (NaN ``scale`` for those samples)."""

    def __init__(self, nan: str | None = None, order: list[int] | None = None) -> None:
        g = torch.Generator().manual_seed(7)
        self.x = torch.randn(N, FEATURES, generator=g, dtype=torch.float64)
        self.target = torch.randint(0, CLASSES, (N,), generator=g)
        self.group = (torch.arange(N) % 3 == 0).long()
        self.scale = torch.ones(N, dtype=torch.float64)
        if nan:
            self.scale[list(NAN_SAMPLES[nan])] = float("nan")
        self.order = list(range(N)) if order is None else order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        j = self.order[i]
        return {
            "x": self.x[j],
            "target": self.target[j],
            "group": self.group[j],
            "index": torch.tensor(j),
            "scale": self.scale[j],
        }


def perturbation(name: str, zero: bool, sync_ascent: bool = False) -> L.Callback | None:
    """The matrix's perturbation callback; ``zero``: its radius (SAF: its coefficient) is 0."""
    if name == "none":
        return None
    z = 0.0 if zero else None
    engine = {"sync_ascent": True} if sync_ascent else {}
    if name == "sam":
        return ll.SAM(rho=0.1 if z is None else z, **engine)
    if name == "sam_every_2":
        return ll.SAM(rho=0.1 if z is None else z, every_n_steps=2, **engine)
    if name == "asam":
        return ll.ASAM(rho=0.5 if z is None else z, eta=0.01, **engine)
    if name == "adversarial_model_perturbation":
        return ll.AdversarialModelPerturbation(epsilon=0.1 if z is None else z, **engine)
    if name == "awp":
        return ll.AWP(gamma=0.05 if z is None else z, **engine)
    if name == "gsam":
        return ll.GSAM(rho=0.1 if z is None else z, alpha=0.4, **engine)
    if name == "wsam":
        return ll.WSAM(rho=0.1 if z is None else z, gamma=0.9, **engine)
    if name == "friendly_sam":
        return ll.FriendlySAM(rho=0.1 if z is None else z, sigma=1.0, lmbda=0.9, **engine)
    if name == "gam":  # radius 0: both radii
        return ll.GAM(rho=0.1 if z is None else z, norm_rho=0.2 if z is None else z, gamma=0.3, **engine)
    if name == "fad":
        return ll.FAD(rho=0.1 if z is None else z, alpha=0.8, beta=0.7, **engine)
    if name == "saf":
        return ll.SAF(coefficient=0.5 if z is None else z, temperature=2.0, epochs_ago=1, start_epoch=1, num_samples=N)
    raise ValueError(name)


def reweighting(name: str) -> L.Callback | None:
    if name == "none":
        return None
    kwargs = {
        "loss_softmax": {"temperature": 1.0},
        "group_dro": {"step_size": 0.5, "num_groups": 2},
        "per_sample_ema": {"momentum": 0.5, "temperature": 1.0, "num_samples": N},
        "jtt": {"upweight": 3.0, "stage_epochs": 1, "num_samples": N},
    }[name]
    return ll.SampleReweighting(name, **kwargs)


def entropy(on: bool) -> L.Callback | None:
    return ll.EntropyControl(target=0.5, beta=0.1, lr=0.5) if on else None


def _tensor(value: Any) -> torch.Tensor:
    return value.detach().cpu().clone() if isinstance(value, torch.Tensor) else torch.as_tensor(value)


#: the library's logged step statistics (``log/``: runs with ``log=True``), without the wall-clock ones
LOGGED = ("reweight/", "entropy/", "perturbation/", "objective/", "train/")
TIMED = ("perturbation/step_time", "perturbation/time_ratio", "perturbation/plain_step_time")


def snapshot(
    trainer: L.Trainer, module: MatrixNet, callbacks: list[L.Callback], log: bool = False
) -> dict[str, torch.Tensor]:
    """Every state of the run, by name (``model/``, ``opt/``, ``rew/``, ``ent/``, ``pert/``, ``saf/``) and, with
    ``log``, the step's logged statistics (``log/``)."""
    out = {f"model/{k}": _tensor(v) for k, v in module.state_dict(keep_vars=False).items()}
    if log:
        logged = trainer.callback_metrics
        out.update({f"log/{k}": _tensor(v) for k, v in logged.items() if k.startswith(LOGGED) and k not in TIMED})
    opt = trainer.optimizers[0].state_dict()["state"]
    for i, state in opt.items():
        out.update({f"opt/{i}/{k}": _tensor(v) for k, v in state.items() if v is not None})
    for cb in callbacks:
        if isinstance(cb, ll.SampleReweighting):
            out.update({f"rew/{k}": _tensor(v) for k, v in cb.reweighter.state_dict().items()})
        elif isinstance(cb, ll.EntropyControl):
            state = cb.state_dict()
            out.update({f"ent/controller/{k}": _tensor(v) for k, v in state["controller"].items()})
            if state["window"] is not None:
                out["ent/window"] = _tensor(state["window"])
        elif isinstance(cb, ll.WeightPerturbation):
            state = cb.engine.state_dict()
            out.update({f"pert/{k}": _tensor(state[k]) for k in ("skipped", "perturbed_steps")})
        elif isinstance(cb, ll.SAF) and cb.logits is not None:
            out["saf/logits"], out["saf/stamp"] = _tensor(cb.logits), _tensor(cb.stamp)
    return out


class Snapshots(L.Callback):
    """A snapshot after every optimizer step."""

    def __init__(self, callbacks: list[L.Callback], log: bool = False) -> None:
        # not `self.log`: Lightning sets `callback.log` (the module's `log`) on every callback at fit start
        self.callbacks, self.with_logs = callbacks, log
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.global_step > len(self.steps):
            self.steps.append(snapshot(trainer, pl_module, self.callbacks, self.with_logs))


def callbacks_for(pert: str, zero: bool, rew: str, ent: bool, sync_ascent: bool = False) -> list[L.Callback]:
    return [c for c in (reweighting(rew), entropy(ent), perturbation(pert, zero, sync_ascent)) if c is not None]


def trainer_for(callbacks: list[L.Callback], k: int, **kwargs: Any) -> L.Trainer:
    options = dict(max_epochs=EPOCHS, accumulate_grad_batches=k, num_sanity_val_steps=0, limit_val_batches=0)
    return quiet_trainer(callbacks, **{**options, **kwargs})


@functools.cache
def run(
    pert: str,
    zero: bool,
    rew: str,
    k: int,
    batch: int,
    ent: bool,
    data: str = "clean",
    chunk: int = CHUNK,
    log: bool = False,
) -> tuple:
    """Snapshots after each optimizer step of one fit (cached: baselines are shared between cells).

    Args:
        data: ``"clean"``; ``"nan"`` / ``"nan_first"`` (NaN scales for some samples of one batch, see
            :data:`NAN_SAMPLES`; the model returns ``None`` on a non-finite loss); ``"skip"`` / ``"skip_first"`` (the
            same data, the model returns ``None`` before ``compute_loss``); ``"ragged"`` (:data:`RAGGED` samples).
        chunk: the ghost BatchNorm chunk (``DDP_CHUNK`` for the one-process reference of the DDP runs).
        log: log every step (``log_every_n_steps=1``) and add the logged statistics to the snapshots (``log/``).
    """
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    callbacks = callbacks_for(pert, zero, rew, ent)
    snaps = Snapshots(callbacks, log)
    model = MatrixNet(skip_nonfinite_inputs=data.startswith("skip"), chunk=chunk)
    nan = {"skip": "nan", "skip_first": "nan_first"}.get(data, data if data.startswith("nan") else None)
    order = list(range(RAGGED)) if data == "ragged" else None
    loader = DataLoader(MatrixData(nan=nan, order=order), batch_size=batch, shuffle=False)
    trainer = trainer_for([*callbacks, snaps], k, **({"log_every_n_steps": 1} if log else {}))
    trainer.fit(model, loader)
    return tuple(snaps.steps)


def differences(a: dict, b: dict, tol: float = 0.0, prefixes: tuple[str, ...] | None = None) -> list[str]:
    """Keys (restricted to ``prefixes``) where ``a`` and ``b`` differ by more than ``tol`` (NaN equals NaN);
    a key missing on one side counts as a difference."""
    out = []
    keys = sorted(set(a) | set(b))
    for key in keys:
        if prefixes is not None and not key.startswith(prefixes):
            continue
        if key not in a or key not in b:
            out.append(f"{key} (missing)")
            continue
        x, y = a[key], b[key]
        if x.shape != y.shape:
            out.append(f"{key} (shape {list(x.shape)} vs {list(y.shape)})")
            continue
        if x.is_floating_point() or y.is_floating_point():
            x, y = x.double(), y.double()
            both_nan = torch.isnan(x) & torch.isnan(y)
            diff = (x - y).abs().masked_fill(both_nan, 0.0)
            diff = diff.masked_fill(torch.isnan(diff), float("inf"))
            worst = float(diff.max()) if diff.numel() else 0.0
            if worst > tol:
                out.append(f"{key} (max diff {worst:.3g})")
        elif not torch.equal(x, y):
            out.append(f"{key} (differs)")
    return out


# ---------------------------------------------------------------- DDP (run inside the session's 2-process group)


def rank_order(rank: int, batch: int) -> list[int]:
    """Rank ``rank``'s sample order: its ``batch`` rows of every global batch of ``2 * batch`` consecutive rows."""
    return [s + rank * batch + i for s in range(0, N, 2 * batch) for i in range(batch)]


def ddp_run(pert: str, rew: str, k: int, ent: bool, log: bool = False) -> tuple:
    """One fit under Lightning's DDP strategy on this rank of the already initialised 2-process group (rank ``r``
    gets rows ``[r*B, (r+1)*B)`` of every global batch of ``2B``, ``B = DDP_CHUNK``; perturbations with
    ``sync_ascent=True``)."""
    from lightning_losses.distributed import rank

    r = rank()
    with lightning_env():
        callbacks = callbacks_for(pert, False, rew, ent, sync_ascent=True)
        snaps = Snapshots(callbacks, log)
        loader = DataLoader(MatrixData(order=rank_order(r, DDP_CHUNK)), batch_size=DDP_CHUNK, shuffle=False)
        extra = {"log_every_n_steps": 1} if log else {}
        trainer = trainer_for([*callbacks, snaps], k, strategy="ddp", devices=2, use_distributed_sampler=False, **extra)
        trainer.fit(MatrixNet(chunk=DDP_CHUNK), loader)
        return tuple(snaps.steps)
