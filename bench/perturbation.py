"""Step-time cost of the weight-perturbation engine, measured interleaved in one run (ratios vs a plain step).

Part A (plain PyTorch): a plain step, two forward-backward passes and one optimizer step (``two_passes``: the floor
of any two-pass method), the engine's presets through ``perturbed_backward``, every-k-th-step SAM, LookSAM,
randomised SAM, gsam / wsam / friendly_sam / esam (with and without data selection), gam / fad (4 passes), SAF (a
plain step plus the trajectory term), MESA (a plain step plus the EMA model's forward and update) and a hand-written
two-pass SAM (the usual ``first_step`` / ``second_step`` loop). Each round runs 20 steps of every configuration
interleaved step by step (the order rotating; 20 holds whole periods of the every-2nd / 4th / 5th-step schedules).
Part B (Lightning): ONE ``Trainer.fit`` whose steps switch between a plain automatic-optimization step, the ``SAM``
and ``AdversarialModelPerturbation`` callbacks (wrapped closure), every-2nd-step SAM, the ``SAF`` callback, and a
plain / hand-written two-pass SAM step in manual optimization (``automatic_optimization`` toggled per step). Each
round runs a block of ``--block`` consecutive steps per configuration (the first of a block is dropped: it pays the
switch), cycling through the configurations in alternating order.

Reported: the median step time, and the median over rounds of the ratio to the plain step of the same round (Part A
also to ``two_passes``), so that a machine whose speed drifts by more than the differences measured (shared CPUs)
hits every configuration alike.

Expected: SAM / Adversarial Model Perturbation (1 inner step) <= 2.05x a plain step, every-k-th-step SAM ~ 1 + 1/k,
SAF ~ 1x, the callback no slower than the hand-written manual loop. Tiny smoke run:
``python bench/perturbation.py --rounds 1 --block 2 --batch 16 --width 32``.

Usage::

    OMP_NUM_THREADS=1 python bench/perturbation.py [--rounds 8] [--block 9] [--device cpu]
    OMP_NUM_THREADS=1 python bench/perturbation.py --model cnn --part b --clock cpu --rounds 60 --block 5 \
        --configs sam_callback,manual_hand_written_sam  # issue 19's target: the callback vs the hand-written loop
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lightning_losses as ll
from lightning_losses.functional.distillation import kd
from lightning_losses.perturbation import MESA, SAF, build_perturbation, perturbed_backward

#: ``--clock``: wall time, or this thread's CPU time (blind to the time the process waits for a core on a shared
#: machine; with ``OMP_NUM_THREADS=1`` a CPU step runs on this one thread). CUDA runs use the wall clock.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = time.perf_counter

#: per model: the width of an input row (the CNN reads it as a 1 x 8 x 8 image, as the digits of bench/overhead.py)
IN_FEATURES = {"mlp": 256, "cnn": 64}


def make_model(width: int, device: str, model: str = "mlp") -> nn.Module:
    """The MLP (``width`` hidden units), or the small 2-D CNN of ``bench/overhead.py`` (conv 16, conv 32, max-pool,
    linear 128, linear 10 on 8x8 inputs; ``width`` unused)."""
    torch.manual_seed(0)
    if model == "cnn":
        net = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 128),
            nn.ReLU(),
            nn.Linear(128, 10),
        )
    else:
        net = nn.Sequential(nn.Linear(256, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))
    return net.to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- part A: plain PyTorch
def hand_written_sam(model, opt, loss_fn, rho=0.05):
    loss_fn().backward()
    params = [p for p in model.parameters() if p.grad is not None]
    with torch.no_grad():
        norm = torch.norm(torch.stack([p.grad.norm() for p in params]))
        old = [p.clone() for p in params]
        for p in params:
            p.add_(p.grad * (rho / (norm + 1e-12)))
    opt.zero_grad()
    loss_fn().backward()
    with torch.no_grad():
        for p, o in zip(params, old):
            p.copy_(o)
    opt.step()


def part_a(args) -> dict[str, list[float]]:
    model = make_model(args.width, args.device, args.model)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, IN_FEATURES[args.model], device=args.device)
    y = torch.randint(0, 10, (args.batch,), device=args.device)

    def loss_fn():
        return nn.functional.cross_entropy(model(x), y)

    engines = {
        "sam": build_perturbation("sam"),
        "sam_no_statistics": build_perturbation("sam"),
        "adversarial_model_perturbation": build_perturbation("adversarial_model_perturbation"),
        "asam": build_perturbation("asam"),
        "sam_every_2": build_perturbation("sam", every_n_steps=2),
        "sam_every_4": build_perturbation("sam", every_n_steps=4),
        "looksam_k5": build_perturbation("sam", every_n_steps=5, reuse_alpha=0.7),
        "random_sam_p0.2": build_perturbation("sam", probability=0.2),
        "gsam": build_perturbation("gsam"),
        "wsam": build_perturbation("wsam"),
        "friendly_sam": build_perturbation("friendly_sam"),
        "esam_swp": build_perturbation("esam", gamma=1.0),
        "esam": build_perturbation("esam"),  # data selection: the per-sample loss function below
        "gam": build_perturbation("gam"),  # first-order flatness: 4 passes
        "fad": build_perturbation("fad"),
    }

    engines["sam_no_statistics"].collect_stats = False  # as the callbacks on steps whose logs no logger receives

    def plain():
        opt.zero_grad()
        loss_fn().backward()
        opt.step()

    saf = SAF(epochs_ago=1, start_epoch=0, num_samples=args.batch)
    index = torch.arange(args.batch, device=args.device)
    epoch_one = type("Epoch", (), {"current_epoch": 1, "objective_logging_suppressed": False})()
    saf.record(index, model(x).detach(), epoch=0)

    def two_passes():  # the floor of a two-pass method: two forward-backward passes and one optimizer step
        opt.zero_grad()
        loss_fn().backward()
        opt.zero_grad()
        loss_fn().backward()
        opt.step()

    def saf_step():
        opt.zero_grad()
        logits = model(x)
        term = saf.extra_terms(epoch_one, {"logits": logits, "index": index}, step=0)["saf"]
        (nn.functional.cross_entropy(logits, y) + term.mean()).backward()
        opt.step()

    def per_sample_loss_fn():
        return nn.functional.cross_entropy(model(x), y, reduction="none")

    def engine_step(engine):
        fn = per_sample_loss_fn if engine.select_fraction < 1 else loss_fn

        def run():
            opt.zero_grad()
            perturbed_backward(engine, model, fn, optimizer=opt)
            opt.step()

        return run

    mesa = MESA(start_epoch=0, decay=0.99)

    def mesa_step():  # a plain step, the EMA model's forward (no gradient), the KL term, the EMA update
        opt.zero_grad()
        logits = model(x)
        term = mesa.coefficient(0) * kd(logits, mesa.teacher_logits(model, x), temperature=mesa.temperature)
        (nn.functional.cross_entropy(logits, y) + term.mean()).backward()
        opt.step()
        mesa.update(model)

    def hand():
        opt.zero_grad()
        hand_written_sam(model, opt, loss_fn)

    configs = {
        "plain": plain,
        "two_passes": two_passes,
        **{k: engine_step(e) for k, e in engines.items()},
        "saf": saf_step,
        "mesa": mesa_step,
        "hand_written_sam": hand,
    }
    for fn in configs.values():  # warm-up
        for _ in range(3):
            fn()
    names = list(configs)
    period = 20  # whole periods of the every-2nd / every-4th / every-5th-step schedules
    times: dict[str, list[float]] = {k: [] for k in configs}
    for _ in range(args.rounds):
        block = {k: 0.0 for k in configs}
        for j in range(period):  # one step of each configuration in turn, the order rotating
            for name in names[j % len(names) :] + names[: j % len(names)]:
                sync(args.device)
                start = clock()
                configs[name]()
                sync(args.device)
                block[name] += clock() - start
        for k, v in block.items():
            times[k].append(v / period)
    return times


# ---------------------------------------------------------------- part B: Lightning
class Net(ll.LossesMixin, L.LightningModule):
    def __init__(self, width: int, manual_sam: bool = False, model: str = "mlp"):
        super().__init__()
        self.net = make_model(width, "cpu", model)
        self.configure_objective({"cross_entropy": {}})
        self.manual_sam = manual_sam
        self.automatic_optimization = not manual_sam

    def training_step(self, batch, batch_idx):
        x, y, index = batch
        if not self.manual_sam:
            return self.compute_loss(logits=self.net(x), target=y, index=index)
        opt = self.optimizers()
        opt.zero_grad()

        def loss_fn():
            return self.compute_loss(logits=self.net(x), target=y)

        # a hand-written two-pass SAM, the way manual-optimization users write it
        self.manual_backward(loss_fn())
        params = [p for p in self.parameters() if p.grad is not None]
        with torch.no_grad():
            norm = torch.norm(torch.stack([p.grad.norm() for p in params]))
            old = [p.clone() for p in params]
            for p in params:
                p.add_(p.grad * (0.05 / (norm + 1e-12)))
        opt.zero_grad()
        self.objective_logging_suppressed = True
        self.manual_backward(loss_fn())
        self.objective_logging_suppressed = False
        with torch.no_grad():
            for p, o in zip(params, old):
                p.copy_(o)
        opt.step()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class Interleaved(Net):
    """:class:`Net` whose step is chosen per batch (``mode``): the library callbacks attach here but only the current
    mode's plug-in is applied; ``plain`` uses Lightning's own ``optimizer_step``; the manual modes switch
    ``automatic_optimization`` off for their step."""

    mode = "plain"

    def __init__(self, width: int, model: str = "mlp"):
        super().__init__(width, model=model)
        self.plugins: dict[Any, Any] = {}

    def attach(self, slot: str, plugin: Any) -> None:
        self.plugins[plugin] = slot  # installed per step by Schedule

    def training_step(self, batch, batch_idx):
        self.manual_sam = self.mode == "manual_hand_written_sam"
        if self.mode == "manual_plain":
            x, y, index = batch
            opt = self.optimizers()
            opt.zero_grad()
            self.manual_backward(self.compute_loss(logits=self.net(x), target=y, index=index))
            opt.step()
            return None
        return super().training_step(batch, batch_idx)

    def optimizer_step(self, *args, **kwargs):
        if self.mode == "plain":
            return L.LightningModule.optimizer_step(self, *args, **kwargs)
        return super().optimizer_step(*args, **kwargs)


class Schedule(L.Callback):
    """Blocks of ``block`` steps per mode, modes cycled in alternating order; times each step."""

    def __init__(self, modes: dict[str, Any], block: int, device: str):
        self.modes, self.block, self.device = modes, block, device
        self.times: dict[str, list[list[float]]] = {m: [] for m in modes}  # per block, per step
        self.count, self._start = 0, 0.0

    def _mode(self) -> str:
        names = list(self.modes)
        cycle, position = divmod(self.count // self.block, len(names))
        return (names if cycle % 2 == 0 else names[::-1])[position]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        mode = pl_module.mode = self._mode()
        pl_module.automatic_optimization = not mode.startswith("manual")
        plugin = self.modes[mode]
        slots = {"reweighter": None, "terms": [], "step": None}
        if plugin is not None:
            slots[pl_module.plugins[plugin]] = [plugin] if pl_module.plugins[plugin] == "terms" else plugin
        pl_module.__dict__["_ll_plugin_slots"] = slots
        sync(self.device)
        self._start = clock()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        sync(self.device)
        position = self.count % self.block
        if position == 1:
            self.times[pl_module.mode].append([])
        if position:  # the first step of a block pays the switch
            self.times[pl_module.mode][-1].append(clock() - self._start)
        self.count += 1


def part_b(args) -> dict[str, list[float]]:
    callbacks = {
        "sam_callback": ll.SAM(rho=0.05),
        "adversarial_model_perturbation_callback": ll.AdversarialModelPerturbation(epsilon=0.5),
        "sam_every_2_callback": ll.SAM(rho=0.05, every_n_steps=2),
        "saf_callback": ll.SAF(epochs_ago=1, start_epoch=0),
    }
    modes = {"plain": None, **callbacks, "manual_plain": None, "manual_hand_written_sam": None}
    if args.configs:  # a subset (the plain step always runs: it is the reference)
        modes = {k: v for k, v in modes.items() if k == "plain" or k in args.configs}
    steps = args.rounds * len(modes) * args.block + 3
    n = args.batch * steps
    data = TensorDataset(torch.randn(n, IN_FEATURES[args.model]), torch.randint(0, 10, (n,)), torch.arange(n))
    schedule = Schedule(modes, args.block, args.device)
    trainer = L.Trainer(
        accelerator="gpu" if args.device == "cuda" else "cpu",
        devices=1,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[schedule, *callbacks.values()],
    )
    trainer.fit(Interleaved(args.width, args.model), DataLoader(data, batch_size=args.batch))
    return {f"lightning_{k}": [statistics.fmean(b) for b in v] for k, v in schedule.times.items()}


def report(title: str, rounds: dict[str, list[float]], base: str, floor: str | None = None) -> None:
    """Median step time per configuration, and the median over rounds of its ratio to ``base`` (and ``floor``) in
    the same round: a pairing that cancels drift slower than a round."""

    def ratio(name: str, ref: str) -> float:
        return statistics.median(a / b for a, b in zip(rounds[name], rounds[ref]))

    print(f"\n{title}")
    print(f"{'config':48s} {'ms/step':>8s} {'ratio':>7s}" + (f" {'vs ' + floor:>14s}" if floor else ""))
    for name, values in rounds.items():
        line = f"{name:48s} {1000 * statistics.median(values):8.2f} {ratio(name, base):7.3f}"
        print(line + (f" {ratio(name, floor):14.3f}" if floor else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="cycles through the configurations")
    parser.add_argument("--block", type=int, default=9, help="consecutive steps per configuration and cycle")
    parser.add_argument("--batch", type=int, default=None, help="default: 256 (MLP), 128 (CNN)")
    parser.add_argument("--width", type=int, default=512, help="MLP hidden width")
    parser.add_argument("--model", choices=tuple(IN_FEATURES), default="mlp", help="MLP, or the small 2-D CNN")
    parser.add_argument("--part", choices=("a", "b", "both"), default="both")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--configs",
        type=lambda text: text.split(","),
        default=None,
        help="Part B: a comma-separated subset, e.g. sam_callback,manual_hand_written_sam (default: all)",
    )
    parser.add_argument("--clock", choices=tuple(CLOCKS), default="wall", help="wall time, or the thread's CPU time")
    args = parser.parse_args()
    global clock
    clock = CLOCKS["wall" if args.device == "cuda" else args.clock]
    if args.batch is None:
        args.batch = 256 if args.model == "mlp" else 128
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    print(
        f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, batch {args.batch}, "
        f"{'CNN' if args.model == 'cnn' else f'MLP width {args.width}'}, {args.rounds} rounds (Part A: 20 interleaved "
        f"steps; Part B: blocks of {args.block})"
    )
    if args.part in ("a", "both"):
        report("Part A: plain PyTorch (ratio vs a plain step)", part_a(args), "plain", floor="two_passes")
    if args.part in ("b", "both"):
        rounds = part_b(args)
        report("Part B: Lightning (ratio vs a plain automatic-optimization step)", rounds, "lightning_plain")
        if "lightning_sam_callback" not in rounds or "lightning_manual_hand_written_sam" not in rounds:
            return
        sam, hand = rounds["lightning_sam_callback"], rounds["lightning_manual_hand_written_sam"]
        ratios = [a / b for a, b in zip(sam, hand)]
        print(
            f"SAM callback / hand-written manual SAM: median {statistics.median(ratios):.3f} over {len(ratios)} rounds "
            f"(range {min(ratios):.3f} .. {max(ratios):.3f}); fixed cost per step "
            f"{1000 * statistics.median(a - b for a, b in zip(sam, hand)):+.2f} ms (target <= 1.02)"
        )


if __name__ == "__main__":
    main()
