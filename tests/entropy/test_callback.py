"""EntropyControl: the objective term, logging, a real controlled run, exact resume, recipes, DDP."""

import math
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import scipy.stats
import torch
from lightning.pytorch.loggers import Logger
from torch.utils.data import DataLoader

import lightning_losses as ll
from lightning_losses.config import build_run, load_recipe
from lightning_losses.demo import DigitsClassifier, DigitsDataModule
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.entropy import entropy
from tests.helpers.ddp import lightning_env

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


class _MemoryLogger(Logger):
    def __init__(self):
        super().__init__()
        self.rows = []

    name = "memory"
    version = 0

    def log_metrics(self, metrics, step=None):
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs):
        pass


def _fake_trainer(logger):
    """A stand-in Trainer whose logger connector writes to ``logger`` (what ``diagnostics.log_scalars`` uses)."""

    def log_metrics(metrics, step=None):
        logger.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)

    return SimpleNamespace(
        global_step=0, loggers=[logger], callback_metrics={}, _logger_connector=SimpleNamespace(log_metrics=log_metrics)
    )


def _batch(n=12, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) * 2, torch.randint(0, c, (n,), generator=g)


def test_fixed_beta_adds_bonus_to_objective():
    model = DigitsClassifier(num_features=4, num_classes=5)
    cb = ll.EntropyControl(beta=0.25)
    model.attach("terms", cb)
    z, y = _batch()
    loss = model.compute_loss(logits=z, target=y)
    expected = torch.nn.functional.cross_entropy(z, y) - 0.25 * entropy(z).mean()
    torch.testing.assert_close(model.objective_output.value, expected)
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(model.objective_output.terms["entropy_bonus"], -0.25 * entropy(z).mean())


def test_scheduled_beta_and_token_logits():
    cb = ll.EntropyControl(beta={"name": "linear", "start": 0.0, "end": 1.0, "steps": 10}, name="ent")
    z, y = _batch()
    module = SimpleNamespace(objective_logging_suppressed=False)
    torch.testing.assert_close(cb.extra_terms(module, {"logits": z}, 5)["ent_bonus"], -0.5 * entropy(z))
    tokens = torch.randn(2, 3, 4)
    target = torch.tensor([[0, -100, 1], [2, 2, -100]])
    got = cb.extra_terms(module, {"logits": tokens, "target": target}, 10)["ent_bonus"]
    torch.testing.assert_close(got, -ll.functional.sequence_entropy(tokens, target != -100))


def test_perturbed_passes_are_not_observed():
    cb = ll.EntropyControl(target=1.0)
    z, _ = _batch()
    cb.extra_terms(SimpleNamespace(objective_logging_suppressed=True), {"logits": z}, 0)
    assert float(cb.controller.state_dict()["count"]) == 0
    cb.extra_terms(SimpleNamespace(objective_logging_suppressed=False), {"logits": z}, 0)
    assert float(cb.controller.state_dict()["count"]) == 12


def test_logging_window_per_class_and_controller_update():
    cb = ll.EntropyControl(target=1.0, lr=0.5, per_class=True, log_every_n_steps=2)
    logger = _MemoryLogger()
    trainer = _fake_trainer(logger)
    module = SimpleNamespace(objective_logging_suppressed=False)
    batches = [_batch(seed=s) for s in range(4)]
    # step 0: two micro-batches, step 1: two micro-batches (log after step 1 -> global_step 2)
    for i, (z, y) in enumerate(batches):
        cb.extra_terms(module, {"logits": z, "target": y}, trainer.global_step)
        if i % 2 == 1:
            trainer.global_step += 1
        cb.on_train_batch_end(trainer, module, None, None, i)
    h = [torch.tensor([scipy.stats.entropy(r) for r in torch.softmax(z, -1).numpy()]) for z, _ in batches]
    step_means = [torch.cat(h[:2]).mean(), torch.cat(h[2:]).mean()]
    beta0 = 0.5 * (1.0 - float(step_means[0]))
    beta1 = min(1.0, beta0 + 0.5 * (1.0 - float(step_means[1])))
    assert len(logger.rows) == 1 and logger.rows[0][0] == 2
    logged = logger.rows[0][1]
    all_h, all_y = torch.cat(h), torch.cat([y for _, y in batches])
    assert logged["entropy/mean"] == pytest.approx(float(all_h.mean()), rel=1e-5)
    assert logged["entropy/beta"] == pytest.approx(beta1, rel=1e-5)
    assert logged["entropy/target"] == 1.0
    for c in range(5):
        assert logged[f"entropy/class_{c}"] == pytest.approx(float(all_h[all_y == c].mean()), rel=1e-5)
    assert float(cb.last_entropy) == pytest.approx(float(step_means[1]), rel=1e-5)


def test_logging_without_controller_and_with_a_band():
    """Fixed beta: mean H and beta are logged (no target); a band logs its edges; nothing between log steps."""
    module = SimpleNamespace(objective_logging_suppressed=False)
    batches = [_batch(seed=s) for s in range(3)]
    h = torch.cat([torch.tensor([scipy.stats.entropy(r) for r in torch.softmax(z, -1).numpy()]) for z, _ in batches])
    for cb in (
        ll.EntropyControl(beta=0.3, log_every_n_steps=3),
        ll.EntropyControl(band=[0.4, 0.6], log_every_n_steps=3),
    ):
        logger = _MemoryLogger()
        trainer = _fake_trainer(logger)
        for i, (z, y) in enumerate(batches):  # one micro-batch per optimizer step; log after the third
            cb.extra_terms(module, {"logits": z, "target": y}, trainer.global_step)
            trainer.global_step += 1
            cb.on_train_batch_end(trainer, module, None, None, i)
        assert [row[0] for row in logger.rows] == [3]
        logged = logger.rows[0][1]
        assert logged["entropy/mean"] == pytest.approx(float(h.mean()), rel=1e-5)
        if cb.controller is None:
            assert logged == {
                "entropy/mean": logged["entropy/mean"],
                "entropy/beta": pytest.approx(0.3),
                "entropy/nonfinite": 0.0,
            }
        else:
            assert logged["entropy/target"] == pytest.approx(0.5)
            assert (logged["entropy/band_low"], logged["entropy/band_high"]) == (0.4, 0.6)
            assert logged["entropy/beta"] == pytest.approx(float(cb.controller.beta))


def test_errors():
    with pytest.raises(ConfigurationError, match="needs a LightningModule that uses `lightning_losses.LossesMixin`"):
        ll.EntropyControl(beta=0.1).setup(None, L.LightningModule(), "fit")
    with pytest.raises(ValueError, match=r"EntropyControl needs `scores` in compute_loss\(...\); got `logits`"):
        ll.EntropyControl(input="scores").extra_terms(SimpleNamespace(), {"logits": torch.zeros(2, 3)}, 0)
    with pytest.raises(ConfigurationError, match="`input` must name the logits tensor passed to compute_loss, got ''"):
        ll.EntropyControl(input="")
    with pytest.raises(ConfigurationError, match="`ignore_index` must be an integer, got 0.5"):
        ll.EntropyControl(ignore_index=0.5)
    with pytest.raises(ConfigurationError, match=r"`per_class` must be a bool \(True or False\), got 'no'"):
        ll.EntropyControl(per_class="no")
    with pytest.raises(ConfigurationError, match=r"`band` must satisfy low <= high, got \[0.9, 0.1\]"):
        ll.EntropyControl(band=[0.9, 0.1])
    with pytest.raises(ConfigurationError, match="`log_every_n_steps` must be an integer >= 1, got 0"):
        ll.EntropyControl(log_every_n_steps=0)
    with pytest.raises(ConfigurationError, match="`name` must be an identifier-like string"):
        ll.EntropyControl(name="my entropy")
    with pytest.raises(ConfigurationError, match="`beta` must be a number or a schedule mapping"):
        ll.EntropyControl(beta="high")
    with pytest.raises(ConfigurationError, match="`beta` must be a finite number"):
        ll.EntropyControl(target=0.5, beta={"name": "linear"})
    with pytest.raises(ConfigurationError, match="unexpected argument `targt`; did you mean `target`"):
        ll.build_callbacks({"entropy_control": {"targt": 0.5}})
    fixed = ll.EntropyControl(beta=0.1)
    with pytest.raises(ConfigurationError, match="has controller state but this callback has none"):
        fixed.load_state_dict(ll.EntropyControl(target=0.5).state_dict())


def test_state_key_is_unique_per_name():
    assert ll.EntropyControl(name="a").state_key != ll.EntropyControl(name="b").state_key


# ---------------------------------------------------------------- real Trainer runs


class _Recorder(L.Callback):
    def __init__(self, control):
        self.control, self.entropy, self.beta = control, [], []

    def on_train_batch_end(self, trainer, pl_module, *args):
        last = self.control.last_entropy
        self.entropy.append(None if last is None else float(last))
        self.beta.append(float(self.control.controller.beta))


def _trainer(callbacks, **kwargs):
    defaults = dict(logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    return L.Trainer(callbacks=callbacks, limit_val_batches=0, accelerator="cpu", **{**defaults, **kwargs})


@pytest.mark.parametrize("target", [0.5, 1.0])
def test_controller_holds_demo_entropy_at_target(target):
    L.seed_everything(0, verbose=False)
    cb = ll.EntropyControl(target=target, lr=0.03, kp=1.0, warmup_steps=40)
    rec = _Recorder(cb)
    model = DigitsClassifier(dropout=0.0, cosine_schedule=False)
    _trainer([cb, rec], max_steps=300).fit(model, DigitsDataModule(batch_size=64))
    held = sum(rec.entropy[150:]) / len(rec.entropy[150:])  # after warm-up: the last 150 optimizer steps
    assert abs(held - target) < 0.05 * target, (held, rec.beta[-5:])
    assert rec.entropy[0] > math.log(10) - 0.1  # started near uniform ...
    assert rec.beta[-1] > 0.1  # ... and a bonus was needed: cross entropy alone drives H below 0.3 here


class _OrderedDigits(DigitsDataModule):
    def train_dataloader(self):
        return DataLoader(self.datasets["train"] if self.datasets else self._setup(), batch_size=self.batch_size)

    def _setup(self):
        self.setup()
        return self.datasets["train"]


def _resume_run(tmp_path, epochs, ckpt=None, save=None, accumulate=1):
    L.seed_everything(0, verbose=False)
    cb = ll.EntropyControl(target=0.8, lr=0.05, kp=0.2, log_every_n_steps=7, per_class=True)
    model = DigitsClassifier(dropout=0.0, cosine_schedule=False)
    trainer = _trainer([cb], max_epochs=epochs, default_root_dir=tmp_path, accumulate_grad_batches=accumulate)
    trainer.fit(model, _OrderedDigits(batch_size=128), ckpt_path=ckpt)
    if save:
        trainer.save_checkpoint(save)
    return cb, model


@pytest.mark.parametrize("accumulate", [1, 2])
def test_resume_continues_exactly(tmp_path, accumulate):
    full_cb, full_model = _resume_run(tmp_path, epochs=3, accumulate=accumulate)
    ckpt = tmp_path / "epoch1.ckpt"
    _resume_run(tmp_path, epochs=1, save=ckpt, accumulate=accumulate)
    resumed_cb, resumed_model = _resume_run(tmp_path, epochs=3, ckpt=str(ckpt), accumulate=accumulate)
    assert float(full_cb.controller.beta) != 0.0
    for key, value in full_cb.state_dict()["controller"].items():
        assert torch.equal(value, resumed_cb.state_dict()["controller"][key]), key
    assert full_cb.state_dict()["last_step"] == resumed_cb.state_dict()["last_step"] == 30 // accumulate
    torch.testing.assert_close(full_cb.state_dict()["window"], resumed_cb.state_dict()["window"], rtol=0, atol=0)
    for (name, p), q in zip(full_model.named_parameters(), resumed_model.parameters()):
        assert torch.equal(p, q), name


def test_recipe_builds():
    cfg = load_recipe(CONFIGS / "entropy_target.yaml", ["trainer.max_steps=1", "logger=none"])
    run = build_run(cfg)
    (cb,) = [c for c in run.callbacks if isinstance(c, ll.EntropyControl)]
    assert cb.controller.target_at(0) == 0.5 and cb.controller.kp == 1.0 and cb.per_class
    with pytest.raises(ConfigurationError, match=r"`callbacks.entropy_control.kp` must be >= 0.0, got -1.0"):
        build_run(load_recipe(CONFIGS / "entropy_target.yaml", ["callbacks.entropy_control.kp=-1", "logger=none"]))


# ---------------------------------------------------------------- the one real 2-process Trainer run


class _RecordingClassifier(DigitsClassifier):
    """The demo model that records, for every training micro-batch, ``(global_step, sum of H, count)`` with H
    computed here by hand (``-sum p log p`` in float64), independently of the library."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.seen = []

    def compute_loss(self, **tensors):
        if self.training:
            p = torch.softmax(tensors["logits"].detach().double(), -1)
            h = -torch.special.xlogy(p, p).sum(-1)
            self.seen.append((int(self.global_step), float(h.sum()), h.numel()))
        return super().compute_loss(**tensors)


def _ddp_trainer_run():

    with lightning_env():
        L.seed_everything(0, verbose=False)
        cb = ll.EntropyControl(target=0.8, lr=0.05, beta_min=-10.0, beta_max=10.0)
        rec = _Recorder(cb)
        model = _RecordingClassifier(dropout=0.0, cosine_schedule=False)
        trainer = _trainer([cb, rec], max_steps=12, strategy="ddp", devices=2, accumulate_grad_batches=2)
        trainer.fit(model, DigitsDataModule(batch_size=32))
        return rec.beta, rec.entropy, trainer.world_size, model.seen


def test_ddp_trainer_beta_identical_on_both_ranks(ddp):
    (beta0, h0, ws0, seen0), (beta1, h1, ws1, seen1) = ddp.run(_ddp_trainer_run)
    assert ws0 == ws1 == 2
    # the controller's H of each optimizer step is the mean over both ranks' shards and both micro-batches
    for step in range(12):
        rows = [r for r in seen0 + seen1 if r[0] == step]
        assert len(rows) == 4, (step, rows)  # 2 ranks x 2 micro-batches
        expected = sum(r[1] for r in rows) / sum(r[2] for r in rows)
        assert h0[2 * step + 1] == pytest.approx(expected, rel=1e-5), step
    assert {r[1] for r in seen0}.isdisjoint({r[1] for r in seen1})  # the ranks saw different data
    assert len(beta0) == 24  # on_train_batch_end per micro-batch; beta moves once per optimizer step
    assert beta0 == beta1 and h0 == h1  # the shards differ: equal values mean the global batch was used
    assert len(set(beta0)) == 13  # initial 0.0 during the first accumulation + one new value per step
    steps = list(zip(beta0[1::2], h0[1::2]))  # after the second micro-batch of each optimizer step
    previous = 0.0
    for beta, h in steps:
        assert beta == pytest.approx(previous + 0.05 * (0.8 - h), abs=1e-6)
        previous = beta


def test_controller_options_without_target_are_rejected():
    from lightning_losses.entropy import EntropyControl

    with pytest.raises(ConfigurationError, match=r"`kp` configures the entropy controller, which needs `target` or"):
        EntropyControl(kp=1.0)
    with pytest.raises(ConfigurationError, match=r"`lr` configures the entropy controller"):
        EntropyControl(beta=0.1, lr=0.5)
    assert EntropyControl(beta=0.1).controller is None


def test_per_class_window_takes_narrow_integer_labels():
    z, y = _batch(seed=3)
    windows = []
    for dtype in (torch.int64, torch.int32, torch.int16, torch.uint8):
        cb = ll.EntropyControl(beta=0.1, per_class=True)
        cb.extra_terms(SimpleNamespace(objective_logging_suppressed=False), {"logits": z, "target": y.to(dtype)}, 0)
        windows.append(cb._folded_window())
    for window in windows[1:]:
        torch.testing.assert_close(window, windows[0])
