"""Cost of the diagnostics (issue 17) at their default cadence, on the demo: step time with them on and off.

Both variants train the demo (digits, the default recipe's MLP, batch 64, ``log_every_n_steps=10`` as in the default
recipe; ``--log-every 50`` for Lightning's default) with every mechanism that has diagnostics:
``SampleReweighting("group_dro")`` on the spurious-group data,
``EntropyControl(beta=0.1)`` and ``SAM(rho=0.05)``, and an offline W&B logger (``--logger wandb``, default) or a CSV
logger. The mechanisms do the same work in both; only their diagnostics differ:

* ``on``: the defaults. Step statistics on the Trainer's logging steps (``reweight/*``, ``entropy/*``,
  ``perturbation/*``, ``objective/*``), histograms and tables about once per epoch, a ``CalibrationMonitor`` (ECE and
  a reliability diagram per validation epoch);
* ``off``: ``Trainer(log_every_n_steps=0)`` (no step logs: the callbacks compute no statistics),
  ``media_every_n_steps=0``, no ``CalibrationMonitor``; with ``--baseline lightning`` the Trainer's own step logs
  (``train/*``) stay on while the objective's statistics (``objective_statistics = False``), reweighting, entropy and
  SAM (``log_every_n_steps=0``) log nothing: ``on - off`` is then the cost of every diagnostic of the library (the
  objective's and the callbacks' statistics, their keys in the rows, all media and the monitor), with Lightning's own
  rows in both.

Runs alternate ``on off off on`` (so slow drift of a shared machine cancels) with the same seed, data and model; the
first pair is a warm-up and is dropped. Per run: the mean training-step time (the time from one
``on_train_batch_start`` to the next within an epoch: the diagnostics of logging steps are rare, so a mean, not a
median) and the fit's wall time (validation, the reliability diagrams and epoch ends included). Reported: the
median over pairs of the ``on / off`` ratios, with the quartiles. On a busy machine the runs' speeds differ by more
than the cost measured; a steadier estimate is measured within each run: the mean step over the median of its quiet
steps (neither a logging step nor an epoch's first), minus 1, ``on`` minus ``off`` (the logging and media steps'
share of the step time; the work every step does alike cancels).

``--mode accounting`` measures the diagnostics' own time instead, inside each run, which the drift between runs
does not blur: every hook of the four callbacks, the objective's statistics (``log_objective_diagnostics``) and the
Trainer's logger rows are timed (thread CPU time) during the training steps (from an epoch's first batch to its
validation), and the run's total of that time, ``on`` minus ``off`` (``off``: ``--baseline silent``, the default, no
step logs at all, so the rows Lightning writes for ``train/loss`` count against the diagnostics too; ``--baseline
lightning``: every statistic of the library off, Lightning's own rows in both), is divided by
the ``off`` run's total step time: the share of the step time the diagnostics take.

    OMP_NUM_THREADS=1 python bench/diagnostics.py --pairs 12 --epochs 6
    OMP_NUM_THREADS=1 python bench/diagnostics.py --pairs 12 --epochs 6 --clock cpu   # a shared machine
    OMP_NUM_THREADS=1 python bench/diagnostics.py --mode accounting --pairs 4 --epochs 6 --clock cpu
    OMP_NUM_THREADS=1 python bench/diagnostics.py --mode accounting --config default --logger csv --clock cpu
    OMP_NUM_THREADS=1 python bench/diagnostics.py --mode accounting --clock cpu --epochs 20  # the demo's own length

``--config default`` runs the default recipe instead (cross entropy, no callback, a CSV logger as in the recipe):
its diagnostics are the objective's statistics. ``--config reweighting`` / ``entropy`` / ``perturbation`` run one
mechanism alone (group DRO on the spurious-group data; the entropy bonus with the ``CalibrationMonitor``; SAM), as a
run that uses one of them has it.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

import lightning_losses as ll
from lightning_losses.demo import DigitsClassifier, DigitsDataModule

#: ``--clock``: wall time, or this thread's CPU time (blind to the time the process waits for a core on a shared
#: machine, and to the W&B service's own process; the step runs on this one thread with ``OMP_NUM_THREADS=1``)
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
CLOCK = [time.perf_counter]
#: ``--config``: every mechanism with diagnostics, one of them alone, or the default recipe
CONFIGS = ("all", "reweighting", "entropy", "perturbation", "default")
#: ``--log-every``: the Trainer's ``log_every_n_steps`` (the default recipe's 10; Lightning's default is 50)
LOG_EVERY = [10]
#: callbacks added to every fit (the accounting's)
EXTRA: list[L.Callback] = []


class StepClock(L.Callback):
    """Intervals between consecutive ``on_train_batch_start`` calls of one epoch, and which of them are quiet: not a
    logging step (every ``LOG_EVERY``-th) and not an epoch's first step (where media fall by default)."""

    def __init__(self) -> None:
        self.intervals: list[float] = []
        self.quiet: list[float] = []
        self._last: tuple[int, float, int, int] | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        now = CLOCK[0]()
        if self._last is not None and self._last[0] == trainer.current_epoch:
            self.intervals.append(now - self._last[1])
            step, first = self._last[2], self._last[3] == 0
            if (step + 1) % LOG_EVERY[0] != 0 and not first:
                self.quiet.append(now - self._last[1])
        self._last = (trainer.current_epoch, now, trainer.global_step, batch_idx)

    def excess(self) -> float:
        """The mean step over the median quiet step, minus 1: what the rarer steps add, measured within the run."""
        return statistics.fmean(self.intervals) / statistics.median(self.quiet) - 1.0


def fit(
    diagnostics: bool,
    epochs: int,
    logger_kind: str,
    device: str,
    root: Path,
    baseline: str = "silent",
    config: str = "all",
) -> tuple[float, float, float]:
    """One fit; ``(mean step seconds, wall seconds, excess of the mean step over the quiet steps)``. ``config``: one
    of :data:`CONFIGS`: ``all`` (every mechanism with diagnostics), one mechanism alone, or ``default`` (the default
    recipe: cross entropy, no callback; the objective's statistics are its diagnostics)."""
    media = None if diagnostics else 0
    quiet = not diagnostics and baseline == "lightning"  # Lightning's own step logs on, the callbacks' off
    clock = StepClock()
    callbacks = [clock, *EXTRA]
    if config in ("all", "reweighting"):
        callbacks.append(
            ll.SampleReweighting(
                "group_dro", step_size=0.01, media_every_n_steps=media, log_every_n_steps=0 if quiet else None
            )
        )
    if config in ("all", "entropy"):
        callbacks.append(
            ll.EntropyControl(beta=0.1, media_every_n_steps=media, log_every_n_steps=10**9 if quiet else None)
        )
        if diagnostics:
            callbacks.append(ll.CalibrationMonitor())
    if config in ("all", "perturbation"):
        callbacks.append(ll.SAM(rho=0.05, log_every_n_steps=0 if quiet else None))
    if logger_kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        logger = WandbLogger(project="ll-bench", save_dir=str(root), offline=True)
    else:
        from lightning.pytorch.loggers import CSVLogger

        logger = CSVLogger(root)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(
        max_epochs=epochs, callbacks=callbacks, logger=logger,
        log_every_n_steps=LOG_EVERY[0] if diagnostics or quiet else 0, accelerator=device, devices=1,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=root,
    )  # fmt: skip
    spurious = 0.9 if config in ("all", "reweighting") else 0.0
    model = DigitsClassifier(num_features=74 if spurious else 64, hidden_dim=256, depth=2, dropout=0.1)
    model.objective_statistics = not quiet
    data = DigitsDataModule(batch_size=64, spurious=spurious)
    start = time.perf_counter()
    trainer.fit(model, data)
    wall = time.perf_counter() - start
    if logger_kind == "wandb":
        logger.experiment.finish()
    return statistics.fmean(clock.intervals), wall, clock.excess()


class Accounting(L.Callback):
    """Thread CPU time spent in the timed functions (:func:`timed`) during the training steps of a fit."""

    active = False
    seconds = 0.0
    depth = 0
    by_name: dict[str, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        Accounting.active = True

    def on_validation_start(self, trainer, pl_module):
        Accounting.active = False

    def on_train_epoch_end(self, trainer, pl_module):
        Accounting.active = False


def timed(owner: object, name: str) -> None:
    """Wrap ``owner.name`` so that its time inside the training steps adds to ``Accounting.seconds`` (nested timed
    calls count once)."""
    original = getattr(owner, name)
    label = f"{getattr(owner, '__name__', owner)}.{name}"

    def wrapper(*args, **kwargs):
        if not Accounting.active or Accounting.depth:
            return original(*args, **kwargs)
        Accounting.depth += 1
        start = CLOCK[0]()
        try:
            return original(*args, **kwargs)
        finally:
            spent = CLOCK[0]() - start
            Accounting.seconds += spent
            Accounting.by_name[label] = Accounting.by_name.get(label, 0.0) + spent
            Accounting.depth -= 1

    setattr(owner, name, wrapper)


def instrument() -> None:
    """Time every ``on_*`` hook the four callbacks define (their own classes and bases up to Lightning's
    ``Callback``), the objective's statistics, the Trainer's logger rows and the perturbation's in-step statistics."""
    from lightning.pytorch.trainer.connectors.logger_connector.logger_connector import _LoggerConnector

    import lightning_losses.mixin as mixin
    from lightning_losses.perturbation import functional as perturbation_functional

    seen = set()
    for cls in (ll.SampleReweighting, ll.EntropyControl, ll.SAM, ll.CalibrationMonitor):
        for klass in cls.__mro__:
            if klass is L.Callback or klass is object:
                break
            for name, value in vars(klass).items():
                if name.startswith("on_") and callable(value) and (klass, name) not in seen:
                    seen.add((klass, name))
                    timed(klass, name)
    timed(mixin, "log_objective_diagnostics")
    timed(_LoggerConnector, "log_metrics")
    # the perturbation statistics computed inside the optimizer step (norms, cosine; the ascent's own gradient norm
    # is timed in both runs alike and cancels)
    for name in ("global_norm", "delta_grad_statistics"):
        timed(perturbation_functional, name)


def accounting(args: argparse.Namespace) -> None:
    instrument()
    shares, parts = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs + 1):
            got = {}
            for d in (True, False) if i % 2 == 0 else (False, True):
                Accounting.seconds, Accounting.by_name = 0.0, {}
                clock = StepClock()
                EXTRA[:] = [Accounting(), clock]
                fit(d, args.epochs, args.logger, args.device, Path(tmp) / f"{i}-{d}", args.baseline, args.config)
                got[d] = (Accounting.seconds, sum(clock.intervals), len(clock.intervals), dict(Accounting.by_name))
            if i == 0:
                continue  # warm-up
            (on, _, _, on_parts), (off, total, steps, off_parts) = got[True], got[False]
            shares.append((on - off) / total)
            for name in on_parts.keys() | off_parts.keys():
                parts.setdefault(name, []).append((on_parts.get(name, 0.0) - off_parts.get(name, 0.0)) / steps)
            print(
                f"pair {i}: diagnostics {(on - off) / steps * 1e6:.0f} us per step of {total / steps * 1e3:.2f} ms: "
                f"{shares[-1]:.4f} of the step time",
                flush=True,
            )
    print("\nper step, on - off (median over pairs), the largest first:")
    for name, values in sorted(parts.items(), key=lambda kv: -statistics.median(kv[1])):
        if abs(statistics.median(values)) >= 2e-6:
            print(f"  {name:55s} {statistics.median(values) * 1e6:7.1f} us")
    q = statistics.quantiles(shares, n=4) if len(shares) > 1 else [shares[0]] * 3
    print(f"\ndiagnostics' share of the step time: median {q[1]:.4f} (quartiles {q[0]:.4f} - {q[2]:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pairs", type=int, default=12, help="on/off pairs measured (after one warm-up pair)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--logger", choices=("wandb", "csv"), default="wandb")
    parser.add_argument("--device", default="cpu", help="Lightning accelerator: cpu, gpu, ...")
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="step times: wall or thread CPU time")
    parser.add_argument(
        "--baseline",
        choices=("silent", "lightning"),
        default="silent",
        help="off: no step logs at all (silent), or Lightning's own train/* logs only (lightning)",
    )
    parser.add_argument(
        "--log-every", type=int, default=10, help="Trainer(log_every_n_steps=...): the recipe's 10, Lightning's 50"
    )
    parser.add_argument("--mode", choices=("pairs", "accounting"), default="pairs", help="see the module docstring")
    parser.add_argument(
        "--config",
        choices=CONFIGS,
        default="all",
        help="every mechanism, one of them alone, or the default recipe (see the module docstring)",
    )
    args = parser.parse_args()
    CLOCK[0] = CLOCKS[args.clock]
    LOG_EVERY[0] = args.log_every
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    import os

    os.environ.setdefault("WANDB_SILENT", "true")
    if args.mode == "accounting":
        accounting(args)
        return
    step_ratios, wall_ratios, excess, steps = [], [], [], {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.pairs + 1):
            order = (True, False) if i % 2 == 0 else (False, True)
            got = {
                d: fit(d, args.epochs, args.logger, args.device, Path(tmp) / f"{i}-{d}", args.baseline, args.config)
                for d in order
            }
            if i == 0:
                continue  # warm-up
            step_ratios.append(got[True][0] / got[False][0])
            wall_ratios.append(got[True][1] / got[False][1])
            excess.append(got[True][2] - got[False][2])
            for d in (True, False):
                steps[d].append(got[d][0])
            print(
                f"pair {i}: step on/off {step_ratios[-1]:.4f}, fit wall on/off {wall_ratios[-1]:.4f}, "
                f"in-run excess on - off {excess[-1]:+.4f}",
                flush=True,
            )

    def summary(values: list[float]) -> str:
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
        return f"median {q[1]:.4f} (quartiles {q[0]:.4f} - {q[2]:.4f}, {len(values)} pairs)"

    print(f"\nlogger={args.logger} device={args.device} epochs={args.epochs} baseline={args.baseline}", end=" ")
    print(f"clock={args.clock}")
    on, off = (statistics.median(steps[d]) * 1e3 for d in (True, False))
    print(f"mean step: on {on:.3f} ms, off {off:.3f} ms (medians over runs)")
    print(f"step time on/off: {summary(step_ratios)}")
    print(f"fit wall on/off:  {summary(wall_ratios)}")
    print(f"in-run excess of the mean step over the quiet steps, on - off: {summary(excess)}")


if __name__ == "__main__":
    main()
