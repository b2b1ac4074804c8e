"""Non-finite entropies never reach the controller's beta / dual variable (one process and DDP), are counted and
logged; Tent resets to the source weights instead of applying a non-finite update; a skipped micro-batch leaves the
controller's accumulators as they were."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import lightning_losses as ll
from lightning_losses.distributed import rank
from lightning_losses.entropy import Tent
from lightning_losses.entropy.controller import EntropyController

NAN = float("nan")


def test_controller_leaves_nonfinite_entropies_out():
    poisoned, clean = EntropyController(target=1.0, lr=0.5, kp=0.5), EntropyController(target=1.0, lr=0.5, kp=0.5)
    poisoned.observe(torch.tensor([0.2, NAN, 0.4, float("inf")]))
    clean.observe(torch.tensor([0.2, 0.4]))
    assert poisoned.update(step=0)[0] == clean.update(step=0)[0]
    for name in ("beta", "dual"):
        assert torch.equal(getattr(poisoned, name), getattr(clean, name)) and bool(torch.isfinite(poisoned.beta))
    poisoned.observe(torch.tensor([NAN, NAN]))  # nothing finite: beta stays
    beta, mean = poisoned.update(step=1)
    assert torch.equal(beta, clean.beta) and bool(torch.isfinite(mean))
    tokens = torch.tensor([[0.5, NAN], [0.7, 0.1]])
    poisoned.observe(tokens, mask=torch.tensor([[True, True], [True, False]]))
    clean.observe(torch.tensor([0.5, 0.7]))
    torch.testing.assert_close(poisoned.update(step=2)[0], clean.update(step=2)[0])


def _logits(n=6, c=4, seed=0):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kwargs", [{"target": 0.8, "lr": 0.5}, {"beta": 0.2}])
def test_callback_counts_and_logs_nonfinite_entropies(kwargs):
    module = SimpleNamespace(objective_logging_suppressed=False, automatic_optimization=True)
    rows = []
    connector = SimpleNamespace(
        log_metrics=lambda metrics, step=None: rows.append({k: float(v) for k, v in metrics.items()})
    )
    trainer = SimpleNamespace(global_step=0, loggers=[], callback_metrics={}, _logger_connector=connector)
    cb = ll.EntropyControl(log_every_n_steps=2, per_class=True, **kwargs)
    for i in range(2):
        z = _logits(seed=i)
        z[1] = NAN
        bonus = cb.extra_terms(module, {"logits": z, "target": torch.arange(6) % 4}, trainer.global_step)
        assert bool(torch.isnan(bonus["entropy_bonus"][1])) and bool(torch.isfinite(bonus["entropy_bonus"][2:]).all())
        trainer.global_step += 1
        cb.on_train_batch_end(trainer, module, {"loss": 1.0}, None, i)
    (logged,) = rows
    assert logged["entropy/nonfinite"] == 2.0
    assert all(v == v for v in logged.values())  # no NaN logged (mean, per-class means, beta)
    if cb.controller is not None:
        assert bool(torch.isfinite(cb.controller.beta)) and bool(torch.isfinite(cb.controller.dual))
    assert float(cb.state_dict()["nonfinite"]) == 2.0


def test_skipped_micro_batch_leaves_the_controller_as_it_was():
    """Micro-batch 1 returns ``None`` from ``training_step``: beta and the dual variable equal a run without it."""
    module = SimpleNamespace(objective_logging_suppressed=False, automatic_optimization=True)
    skipping, reference = ll.EntropyControl(target=0.8, lr=0.5), ll.EntropyControl(target=0.8, lr=0.5)
    trainers = [SimpleNamespace(global_step=0, loggers=[], log_every_n_steps=50) for _ in range(2)]
    runs = dict(zip((skipping, reference), trainers))
    for i in range(3):
        for cb, trainer in runs.items():
            skipped = cb is skipping and i == 1
            if cb is reference and i == 1:
                continue  # the batch is absent from the reference run
            cb.on_train_batch_start(trainer, module, None, i)
            cb.extra_terms(module, {"logits": _logits(seed=i) * (i + 1)}, trainer.global_step)
            trainer.global_step += 1  # Lightning still counts the skipped optimizer step
            cb.on_train_batch_end(trainer, module, {} if skipped else {"loss": 1.0}, None, i)
    assert float(reference.controller.beta) != 0.0
    assert torch.equal(skipping.controller.beta, reference.controller.beta)
    assert torch.equal(skipping.controller.dual, reference.controller.dual)


# ---------------------------------------------------------------- DDP: NaN on one rank only


def _ddp_controller():
    ctl = EntropyController(target=1.0, lr=0.5)
    h = torch.tensor([0.2, NAN, 0.4]) if rank() == 0 else torch.tensor([0.9, 0.3])
    ctl.observe(h)
    beta, mean = ctl.update(step=0)
    return beta, mean, ctl.dual


def test_ddp_nan_on_one_rank_gives_the_same_beta(ddp):
    (b0, m0, d0), (b1, m1, d1) = ddp.run(_ddp_controller)
    single = EntropyController(target=1.0, lr=0.5)
    single.observe(torch.tensor([0.2, 0.4, 0.9, 0.3]))
    beta, mean = single.update(step=0)
    assert torch.equal(b0, b1) and torch.equal(d0, d1) and torch.equal(m0, m1)
    torch.testing.assert_close(b0, beta)
    torch.testing.assert_close(m0, mean)


# ---------------------------------------------------------------- Tent


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 4)
    )


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_tent_resets_to_the_source_weights_on_a_nonfinite_update(optimizer):
    net = _net().eval()
    tent = Tent(lr=0.1, optimizer=optimizer, steps=2)
    tent._start(net, "test")
    source = {k: p.detach().clone() for k, p in net.named_parameters()}
    g = torch.Generator().manual_seed(1)
    tent.adapt(net, {"x": torch.randn(16, 6, generator=g)})  # a clean batch adapts
    assert any(not torch.equal(p, source[k]) for k, p in net.named_parameters())
    bad = torch.randn(16, 6, generator=g)
    bad[3] = NAN  # one corrupted test sample
    tent.adapt(net, {"x": bad})
    assert tent.nonfinite == 1
    for k, p in net.named_parameters():
        assert torch.equal(p, source[k]), k  # back to the source weights, not NaN
    tent.adapt(net, {"x": torch.randn(16, 6, generator=g)})  # later batches adapt normally from the source
    assert all(bool(torch.isfinite(p).all()) for p in net.parameters())
    assert bool(torch.isfinite(net(torch.randn(4, 6))).all())
    tent.restore(net)


@pytest.mark.parametrize("masked", [False, True])
def test_window_statistics_leave_out_nan_and_both_infinities_as_a_loop_does(masked):
    from lightning_losses.entropy.window import window_statistics

    h = torch.tensor([0.5, NAN, float("inf"), float("-inf"), 1.25, 2.0], dtype=torch.float64)
    mask = torch.tensor([True, True, False, True, True, False]) if masked else None
    seen = [i for i in range(6) if mask is None or mask[i]]
    finite = [float(h[i]) for i in seen if math.isfinite(float(h[i]))]
    expected = [sum(finite), len(finite), len(seen) - len(finite)]
    assert window_statistics(h, mask, torch.zeros(6, 3), None, per_class=False).tolist() == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_window_statistics_of_finite_values_on_the_cpu_equal_the_general_path(dtype):
    """On the CPU without a mask a finite sum is the whole answer (no test per value); it equals the path that tests
    every value (taken with a mask of all ``True``), in the values' dtype, and one NaN takes that path."""
    from lightning_losses.entropy.window import window_statistics

    h = torch.rand(640, generator=torch.Generator().manual_seed(0)).to(dtype) * 2.3
    logits = torch.zeros(640, 3)
    fast = window_statistics(h, None, logits, None, per_class=False)
    general = window_statistics(h, torch.ones(640, dtype=torch.bool), logits, None, per_class=False)
    assert fast.dtype == general.dtype == dtype and torch.equal(fast, general)
    assert fast.tolist() == [float(h.sum()), 640.0, 0.0]
    h[7] = NAN
    expected = torch.tensor([639.0, 1.0], dtype=dtype)  # (a count in bfloat16 is rounded: 639 is 640 there)
    assert torch.equal(window_statistics(h, None, logits, None, per_class=False)[1:], expected)
