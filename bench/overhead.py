"""Step-time overhead of the mixin vs plain Lightning with a hand-written cross entropy (same model, same data).

Two models on the digits demo data (``--model``):

* ``mlp``: the demo's MLP at batch 64 (about 2 ms a step): a toy, where the fixed cost of a step dominates;
* ``cnn``: a small 2-D CNN on the 8x8 images (conv 16, conv 32, max-pool, linear 128, linear 10) at batch 128
  (several ms a step on one thread): the realistic small model the mixin must stay within 1% of (issue 19, item 4).

Two measurements, both interleaved in one process (target on the CNN: mixin / plain <= 1.01):

* ``steps`` (the headline): one ``Trainer.fit`` whose module computes its loss by hand on some steps and with the
  mixin on the others, in ``A B B A`` blocks of four steps (the optimizer step of the plain steps is Lightning's own,
  not the mixin's override). Each block gives the ratio of its two mixin steps to its two plain steps, so drift
  slower than a few milliseconds cancels; the median over blocks discards bursts. Also prints the median time of the
  loss forward (the objective and its logging) and of the backward pass of each variant.
* ``runs``: separate short fits of a plain module and of the demo module, alternating (``A B`` then ``B A``), the
  median step of each run compared. Simpler, but on a shared machine the speed drifts between runs by more than the
  overhead being measured.

    OMP_NUM_THREADS=1 python bench/overhead.py                     # the MLP, both measurements
    OMP_NUM_THREADS=1 python bench/overhead.py --model cnn --mode steps --epochs 40
    OMP_NUM_THREADS=1 python bench/overhead.py --model cnn --mode steps --epochs 120 --clock cpu  # a shared machine
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from lightning_losses.demo import DigitsClassifier, DigitsDataModule

#: per model: the data module's batch size
BATCH_SIZE = {"mlp": 64, "cnn": 128}
#: ``--clock``: wall time, or this thread's CPU time (blind to the time the process waits for a core on a shared
#: machine, the main noise there; the step runs on this one thread with ``OMP_NUM_THREADS=1``)
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = time.perf_counter


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """A small 2-D CNN on the flattened 8x8 digits (``x`` of shape ``[N, 64]``)."""
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def build(cls: type, model: str, *args) -> L.LightningModule:
    """``cls(*args, dropout=0)`` with the demo MLP, or with its network replaced by :func:`digits_cnn`."""
    module = cls(*args, dropout=0.0)
    if model == "cnn":
        module.net = digits_cnn()
    return module


def plain_loss(module: L.LightningModule, logits: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss as a user writes it without the library (same logging key and options as the mixin's)."""
    loss = F.cross_entropy(logits, batch["target"])
    training = module.trainer.training
    module.log("train/loss" if training else "val/loss", loss.detach(), on_step=training, on_epoch=not training)
    return loss


class PlainClassifier(DigitsClassifier):
    """The demo model with the loss written by hand and Lightning's own ``optimizer_step`` (same metrics)."""

    def loss_from_batch(self, logits, batch):
        return plain_loss(self, logits, batch)

    def optimizer_step(self, *args, **kwargs):
        return L.LightningModule.optimizer_step(self, *args, **kwargs)


class Alternating(DigitsClassifier):
    """Plain loss on some steps, the mixin's on the others (``plain`` is set per step by :class:`Schedule`)."""

    plain = False

    def __init__(self, record, **kwargs):
        super().__init__(**kwargs)
        self._record = record

    def loss_from_batch(self, logits, batch):
        start = clock()
        loss = plain_loss(self, logits, batch) if self.plain else super().loss_from_batch(logits, batch)
        self._record("loss", self.plain, clock() - start)
        return loss

    def on_before_backward(self, loss):
        self._backward_start = clock()

    def on_after_backward(self):
        self._record("backward", self.plain, clock() - self._backward_start)

    def optimizer_step(self, *args, **kwargs):
        if self.plain:
            return L.LightningModule.optimizer_step(self, *args, **kwargs)
        return super().optimizer_step(*args, **kwargs)


class Schedule(L.Callback):
    """Sets ``A B B A`` per block of four steps and times each training step (batch start to batch end)."""

    def __init__(self, record) -> None:
        self.record, self.count = record, 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        pl_module.plain = self.count % 4 in (0, 3)
        self._start = clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.record("step", pl_module.plain, clock() - self._start)
        self.count += 1


def trainer(epochs: int, callbacks: list) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )


def measure_steps(model: str, epochs: int, warmup: int = 20) -> None:
    times: dict[tuple[str, bool], list[float]] = {}

    def record(what: str, plain: bool, seconds: float) -> None:
        times.setdefault((what, plain), []).append(seconds)

    L.seed_everything(0, verbose=False)
    data = DigitsDataModule(batch_size=BATCH_SIZE[model])
    trainer(epochs, [Schedule(record)]).fit(build(Alternating, model, record), datamodule=data)
    plain, mixin = times[("step", True)], times[("step", False)]
    blocks = min(len(plain), len(mixin)) // 2
    ratios = [(mixin[2 * b] + mixin[2 * b + 1]) / (plain[2 * b] + plain[2 * b + 1]) for b in range(blocks)]
    ratios = ratios[warmup // 4 :]
    quartiles = statistics.quantiles(ratios, n=4)
    print(
        f"[steps] model {model}, batch {BATCH_SIZE[model]}, clock {clock.__name__}: {len(ratios)} blocks of A B B A "
        f"({4 * len(ratios)} steps after {warmup} warm-up steps)"
    )
    for what in ("step", "loss", "backward"):
        p = statistics.median(times[(what, True)][warmup // 2 :])
        m = statistics.median(times[(what, False)][warmup // 2 :])
        print(f"  {what:8s} median  plain {p * 1e6:8.1f} us  mixin {m * 1e6:8.1f} us  diff {(m - p) * 1e6:6.1f} us")
    print(
        f"  ratio mixin / plain per block: median {statistics.median(ratios):.3f} "
        f"(quartiles {quartiles[0]:.3f} .. {quartiles[2]:.3f}; target 1.01 on the CNN)"
    )


def run(cls: type, model: str, epochs: int, seed: int) -> list[float]:
    times: list[float] = []

    class Timer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._start = clock()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            times.append(clock() - self._start)

    L.seed_everything(seed, verbose=False)
    data = DigitsDataModule(batch_size=BATCH_SIZE[model])
    trainer(epochs, [Timer()]).fit(build(cls, model), datamodule=data)
    return times[5:]  # drop warm-up steps


def measure_runs(model: str, rounds: int, epochs: int) -> None:
    times: dict[str, list[float]] = {"plain": [], "mixin": []}
    ratios = []
    for r in range(rounds):
        order = (("plain", PlainClassifier), ("mixin", DigitsClassifier))
        medians = {}
        for name, cls in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
            steps = run(cls, model, epochs, seed=r)
            times[name] += steps
            medians[name] = statistics.median(steps)
        ratios.append(medians["mixin"] / medians["plain"])
    plain, mixin = statistics.median(times["plain"]), statistics.median(times["mixin"])
    print(
        f"[runs] model {model}, batch {BATCH_SIZE[model]}: {rounds} rounds x {epochs} epochs, "
        f"{len(times['plain'])} steps per variant"
    )
    print(f"  median step  plain {plain * 1e3:.3f} ms   mixin {mixin * 1e3:.3f} ms")
    print(f"  per-round ratios: {', '.join(f'{x:.3f}' for x in ratios)}")
    print(f"  ratio mixin / plain: median of rounds {statistics.median(ratios):.3f} (pooled {mixin / plain:.3f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=tuple(BATCH_SIZE), default="mlp", help="toy MLP or realistic small CNN")
    parser.add_argument("--mode", choices=("steps", "runs", "both"), default="both")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the interleaved fit (MLP 20, CNN 10 steps)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds of the run-interleaved measurement")
    parser.add_argument("--run-epochs", type=int, default=2, help="epochs of each run-interleaved fit")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="wall time, or the thread's CPU time")
    args = parser.parse_args()
    global clock
    clock = CLOCKS[args.clock]
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.set_num_threads(1)
    if args.mode in ("steps", "both"):
        measure_steps(args.model, args.epochs)
    if args.mode in ("runs", "both"):
        measure_runs(args.model, args.rounds, args.run_epochs)


if __name__ == "__main__":
    main()
