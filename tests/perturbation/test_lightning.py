"""The callbacks inside a real Trainer: one step equals a hand-computed step in every precision; accumulation,
clipping, logging, global_step, optimizer state, exact restore, checkpoints and resume keep their meaning."""

import math

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from torch import nn

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError

from ._lightning import Tiny, data, loader, trainer
from ._reference import amp_eps, descent_grad, grad_at, norm, sam_eps, tiny_model


def _batches(batch_size, n=16):
    d = data(n)
    return [
        (d.tensors[0][i : i + batch_size].double(), d.tensors[1][i : i + batch_size]) for i in range(0, n, batch_size)
    ]


def reference(eps_fn, batches, optimizer="sgd", clip=None, lr=0.1, make_optimizer=None):
    """Hand-written perturbed steps in float64: eps from the gradient at w, descent gradient at w + eps."""
    model = tiny_model(dtype=torch.float64)
    params = dict(model.named_parameters())
    sched = None
    if make_optimizer is not None:
        opt, sched = make_optimizer(model)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.01)
    else:
        opt = torch.optim.SGD(params.values(), lr=lr, momentum=0.9)
    for x, y in batches:
        w = {k: v.detach().clone() for k, v in params.items()}
        eps = eps_fn(model, w, grad_at(model, w, x, y), x, y)
        g2 = descent_grad(model, w, eps, x, y)
        if clip is not None:
            total = norm(g2.values())
            coef = min(1.0, clip / (total + 1e-6))
            g2 = {k: v * coef for k, v in g2.items()}
        for k, p in params.items():
            p.grad = g2[k].clone()
        opt.step()
        if sched is not None:
            sched.step()
    return {f"net.{k}": v.detach() for k, v in params.items()}, opt


def _sam(rho):
    return lambda model, w, g, x, y: sam_eps(g, rho)


def _amp(epsilon, inner_lr):
    return lambda model, w, g, x, y: amp_eps(model, w, x, y, epsilon, inner_lr, 1)


def _assert_weights(module, expected, atol):
    for k, v in module.named_parameters():
        torch.testing.assert_close(v.detach().double(), expected[k], atol=atol, rtol=0)


class _KeyLogger(Logger):
    """Records the keys of each ``log_metrics`` call with its step."""

    def __init__(self):
        super().__init__()
        self.calls = []

    name, version = "keys", 0

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, set(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def steps(self, key):
        return [step for step, keys in self.calls if key in keys]


def test_statistics_logged_on_the_trainers_logging_steps_only():
    """Like Lightning's LearningRateMonitor: a step value logged between logging steps reaches no logger."""
    model, logger = Tiny(), _KeyLogger()
    t = trainer([ll.SAM(rho=0.05)], max_steps=4, log_every_n_steps=2, logger=logger)
    t.fit(model, loader(16))
    assert t.global_step == 4 and model.logged.count("train/loss") == 4
    assert logger.steps("perturbation/norm") == [1, 3]  # with train/loss's
    assert logger.steps("train/loss") == [1, 3]
    assert abs(float(t.callback_metrics["perturbation/norm"]) - 0.05) < 1e-6


@pytest.mark.parametrize(("every", "steps"), [(3, [2, 5]), (0, []), (None, [0, 1, 2, 3, 4, 5])])
def test_statistics_on_the_callbacks_own_interval(every, steps):
    """``log_every_n_steps=N``: the statistics of optimizer steps N, 2N, ... (written at their steps, whatever the
    Trainer's cadence); ``0``: none, and none are computed inside the step; ``None``: the Trainer's (every step)."""
    model, logger = Tiny(), _KeyLogger()
    callback = ll.SAM(rho=0.05, log_every_n_steps=every)
    t = trainer([callback], max_steps=6, log_every_n_steps=1, logger=logger)
    t.fit(model, loader(24))
    assert logger.steps("train/loss") == list(range(6))
    for key in ("perturbation/norm", "perturbation/cos_delta_grad", "perturbation/step_time"):
        assert logger.steps(key) == steps, key
    assert ("perturbation/norm" in t.callback_metrics) == bool(steps)
    assert callback.state_key == ll.SAM(rho=0.05).state_key  # a logging cadence is not part of the state's identity
    if every == 0:  # only the ascent's own gradient norm: no statistic was computed for logging
        assert set(callback.engine.last_stats) == {"grad_norm"}


def test_log_every_n_steps_is_validated():
    with pytest.raises(ll.ConfigurationError, match=r"`log_every_n_steps` must be an integer >= 0, got -1"):
        ll.SAM(log_every_n_steps=-1)
    with pytest.raises(ll.ConfigurationError, match=r"`log_every_n_steps` must be an integer >= 0, got 'x'"):
        ll.WeightPerturbation("asam", log_every_n_steps="x")


def test_sam_step_precision_32_logs_once_and_counts_one_step():
    model, logger = Tiny(), _KeyLogger()
    t = trainer([ll.SAM(rho=0.05)], max_steps=2, logger=logger)
    t.fit(model, loader(8))
    expected, _ = reference(_sam(0.05), _batches(8))
    _assert_weights(model, expected, atol=1e-6)
    assert t.global_step == 2
    assert model.training_step_calls == 4  # two passes per step
    # compute_loss's log, the user's own log and the callback's stats: once per step, never from the second pass
    assert model.logged.count("train/loss") == 2 and model.logged.count("user/loss") == 2
    assert logger.steps("perturbation/norm") == [0, 1]
    metrics = t.callback_metrics
    assert abs(float(metrics["perturbation/norm"]) - 0.05) < 1e-6
    assert float(metrics["perturbation/skipped"]) == 0.0
    for key in ("perturbation/sharpness", "perturbation/grad_norm", "perturbation/grad_norm_perturbed"):
        assert math.isfinite(float(metrics[key]))


@pytest.mark.parametrize("precision,atol", [("bf16-mixed", 1e-2), ("16-mixed", 2e-3)])
@pytest.mark.parametrize("method", ["sam", "adversarial_model_perturbation"])
def test_mixed_precision_matches_reference(precision, atol, method):
    # AMP's clipped step depends on the gradient's scale: with epsilon = 5 the unscaled step (||g|| ~ 0.3) is never
    # clipped, while a loss-scaled one (x65536) would be clipped to 5 per tensor and miss the reference by far.
    if method == "sam":
        cb, eps_fn = ll.SAM(rho=0.05), _sam(0.05)
    else:
        cb, eps_fn = ll.AdversarialModelPerturbation(epsilon=5.0, inner_lr=1.0), _amp(5.0, 1.0)
    model = Tiny()
    if precision == "16-mixed":
        # Lightning 2.6 turns `precision="16-mixed"` into bf16 on CPU; the plugin given explicitly keeps float16
        # autocast and a real GradScaler, so the loss-scale path runs here
        from lightning.pytorch.plugins.precision import MixedPrecision

        plugin = MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))
        t = trainer([cb], max_steps=2, plugins=[plugin])
    else:
        t = trainer([cb], max_steps=2, precision=precision)
    t.fit(model, loader(8))
    assert t.global_step == 2 and cb.engine.skipped == 0
    scaler = getattr(t.precision_plugin, "scaler", None)
    assert (scaler is not None) == (precision == "16-mixed")
    if scaler is not None:
        assert scaler.get_scale() >= 2.0**15  # a real loss scale was applied
    expected, _ = reference(eps_fn, _batches(8))
    _assert_weights(model, expected, atol=atol)


def test_gradient_accumulation_equals_concatenated_batch():
    """accumulate_grad_batches=2: the ascent uses the gradient of both micro-batches and both are re-evaluated at
    w + eps, so the step equals one perturbed step on the concatenated batch."""
    model = Tiny()
    cb = ll.AdversarialModelPerturbation(epsilon=5.0, inner_lr=1.0)
    t = trainer([cb], max_epochs=1, accumulate_grad_batches=2)
    t.fit(model, loader(4))
    assert t.global_step == 2
    assert model.training_step_calls == 8  # 4 micro-batches, each evaluated at w and at w + eps
    expected, _ = reference(_amp(5.0, 1.0), _batches(8))
    _assert_weights(model, expected, atol=1e-6)
    # closure-based SAM that re-runs only the last micro-batch would give a different step
    wrong, _ = reference(_amp(5.0, 1.0), [(x[4:], y[4:]) for x, y in _batches(8)])
    assert not torch.allclose(wrong["net.0.weight"], expected["net.0.weight"], atol=1e-4)


class _ClipCounter(Tiny):
    clip_calls = 0

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        self.clip_calls += 1
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def test_gradient_clipping_applies_once_to_the_descent_gradient():
    model = _ClipCounter()
    t = trainer([ll.AdversarialModelPerturbation(epsilon=5.0, inner_lr=1.0)], max_steps=2, gradient_clip_val=0.05)
    t.fit(model, loader(8))
    assert model.clip_calls == 2
    expected, _ = reference(_amp(5.0, 1.0), _batches(8), clip=0.05)  # the ascent gradient is not clipped
    _assert_weights(model, expected, atol=1e-6)


def test_adamw_state_survives_and_matches_reference(tmp_path):
    model = Tiny(optimizer="adamw", lr=0.01)
    t = trainer([ll.SAM(rho=0.1)], max_steps=2)
    t.fit(model, loader(8))
    expected, ref_opt = reference(_sam(0.1), _batches(8), optimizer="adamw", lr=0.01)
    _assert_weights(model, expected, atol=1e-6)
    path = tmp_path / "a.ckpt"
    t.save_checkpoint(path)
    state = torch.load(path, weights_only=False)["optimizer_states"][0]["state"]
    ref_state = ref_opt.state_dict()["state"]
    for i in ref_state:
        torch.testing.assert_close(state[i]["exp_avg"].double(), ref_state[i]["exp_avg"], atol=1e-7, rtol=1e-5)
        torch.testing.assert_close(state[i]["exp_avg_sq"].double(), ref_state[i]["exp_avg_sq"], atol=1e-9, rtol=1e-4)


def test_exception_in_perturbed_pass_leaves_weights_exactly():
    model = Tiny(fail_in_perturbed=True)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    with pytest.raises(RuntimeError, match="failure in the perturbed pass"):
        trainer([ll.SAM(rho=0.5)], max_steps=1).fit(model, loader(8))
    for k, v in model.named_parameters():
        assert torch.equal(v.detach(), before[k]), k


class _SaveMidStep(Callback):
    def __init__(self, path):
        self.path, self.before = path, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    def on_after_backward(self, trainer, pl_module):
        if pl_module.objective_logging_suppressed and not self.path.exists():
            trainer.save_checkpoint(self.path)  # written while the weights are perturbed


def test_checkpoint_written_mid_step_has_original_weights(tmp_path):
    saver = _SaveMidStep(tmp_path / "mid.ckpt")
    model = Tiny()
    sam = ll.SAM(rho=0.5)
    trainer([sam, saver], max_steps=1).fit(model, loader(8))
    saved = torch.load(saver.path, weights_only=False)["state_dict"]
    for k, v in saver.before.items():
        assert torch.equal(saved[k], v), k
    assert not torch.equal(saved["net.0.weight"], model.net[0].weight.detach())  # the step did happen afterwards


def _fit(callback, max_epochs, ckpt_in=None, ckpt_out=None):
    model = Tiny()
    t = trainer([callback], max_epochs=max_epochs)
    t.fit(model, loader(8, n=24), ckpt_path=ckpt_in)
    if ckpt_out is not None:
        t.save_checkpoint(ckpt_out)
    return model


def test_crash_and_resume_matches_uninterrupted_run(tmp_path):
    """LookSAM keeps state (the stored orthogonal direction) that the callback checkpoints; SGD keeps momentum."""

    def make():
        return ll.SAM(rho=0.2, every_n_steps=2, reuse_alpha=0.7)

    full = _fit(make(), max_epochs=2)  # 6 steps; step 3 (resumed) reuses the direction stored at step 2
    _fit(make(), max_epochs=1, ckpt_out=tmp_path / "e1.ckpt")
    resumed = _fit(make(), max_epochs=2, ckpt_in=tmp_path / "e1.ckpt")
    for (k, a), b in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    # without the callback's state the resumed run differs (the test can fail)
    ckpt = torch.load(tmp_path / "e1.ckpt", weights_only=False)
    ckpt["callbacks"] = {}
    torch.save(ckpt, tmp_path / "no_state.ckpt")
    stateless = _fit(make(), max_epochs=2, ckpt_in=tmp_path / "no_state.ckpt")
    assert not torch.equal(stateless.net[0].weight, full.net[0].weight)


def test_ascent_terms_drive_only_the_ascent():
    class TwoTerms(Tiny):
        def __init__(self):
            super().__init__()
            self.configure_objective({"ce": {"loss": "cross_entropy"}, "focal": {"gamma": 2.0, "coefficient": 3.0}})

    model = TwoTerms()
    trainer([ll.SAM(rho=0.5, ascent_terms=["ce"])], max_steps=1).fit(model, loader(8))
    ref = tiny_model()
    w = {k: v.detach().clone() for k, v in ref.named_parameters()}
    (x, y) = _batches(8)[0]
    eps = sam_eps(grad_at(ref, w, x, y), 0.5)  # cross entropy only
    from torch.func import functional_call

    wp = {k: (w[k] + eps[k]).requires_grad_(True) for k in w}
    logits = functional_call(ref, wp, (x,))
    ce = nn.functional.cross_entropy(logits, y, reduction="none")
    focal = (1 - torch.exp(-ce)) ** 2 * ce
    g2 = torch.autograd.grad((ce + 3.0 * focal).mean(), list(wp.values()))
    expected = {f"net.{k}": w[k] - 0.1 * g for k, g in zip(w, g2)}
    _assert_weights(model, expected, atol=1e-6)


def test_recipes_and_errors():
    cbs = ll.build_callbacks({"sam": {"rho": 0.1}, "awp": {"gamma": 0.01}})
    assert isinstance(cbs[0], ll.SAM) and cbs[0].engine.radius(0) == 0.1
    assert isinstance(ll.build_callbacks({"asam": {"variant": "p2"}})[0].engine.scaling, str)
    assert ll.build_callbacks({"adversarial_model_perturbation": {}})[0].engine.rule == "clip"
    with pytest.raises(ConfigurationError, match="perturbation `sam` got an unexpected argument `rhoo`"):
        ll.build_callbacks({"sam": {"rhoo": 0.1}})
    with pytest.raises(ConfigurationError, match="`variant` must be one of `authors`, `p2`, got 'x'"):
        ll.ASAM(variant="x")
    with pytest.raises(ConfigurationError, match="`ascent_terms` names unknown objective term"):
        trainer([ll.SAM(ascent_terms=["nope"])], max_steps=1).fit(Tiny(), loader(8))

    class Manual(Tiny):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(ConfigurationError, match="with manual optimization call"):
        trainer([ll.SAM()], max_steps=1).fit(Manual(), loader(8))
    import lightning as L

    class Plain(L.LightningModule):
        pass

    with pytest.raises(ConfigurationError, match="needs a LightningModule that uses `lightning_losses.LossesMixin`"):
        ll.SAM().setup(None, Plain(), "fit")


def _groups_and_scheduler(model):
    """Two parameter groups (weights lr 0.1 with weight decay, biases lr 0.05 without) and a per-step StepLR."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD(
        [{"params": weights, "weight_decay": 0.01}, {"params": biases, "lr": 0.05}], lr=0.1, momentum=0.9
    )
    return opt, torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)


class _Grouped(Tiny):
    def configure_optimizers(self):
        opt, sched = _groups_and_scheduler(self.net)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_param_groups_lr_scheduler_and_checkpoint_cadence_once_per_step(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    model = _Grouped()
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_top_k=-1, filename="{step}")
    t = trainer([ll.SAM(rho=0.2), ckpt], max_steps=3, enable_checkpointing=True)
    t.fit(model, loader(8, n=24))
    expected, _ = reference(_sam(0.2), _batches(8, n=24), make_optimizer=_groups_and_scheduler)
    _assert_weights(model, expected, atol=1e-6)
    assert t.global_step == 3 and model.training_step_calls == 6
    sched = t.lr_scheduler_configs[0].scheduler
    assert sched.last_epoch == 3  # stepped once per optimizer step
    assert [g["lr"] for g in t.optimizers[0].param_groups] == [0.1 / 8, 0.05 / 8]
    assert sorted(p.name for p in tmp_path.glob("*.ckpt")) == ["step=1.ckpt", "step=2.ckpt", "step=3.ckpt"]


class _Metered(Tiny):
    def __init__(self):
        super().__init__()
        import torchmetrics

        self.seen = torchmetrics.SumMetric()
        self.acc = torchmetrics.classification.MulticlassAccuracy(num_classes=3, average="micro")

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.net(x)
        self.seen.update(torch.tensor(float(len(y))))  # no check of objective_logging_suppressed
        batch_acc = self.acc(logits.detach(), y)  # forward: updates the state and returns the batch value
        assert batch_acc.ndim == 0
        return self.compute_loss(logits=logits, target=y)


def test_torchmetrics_are_updated_once_per_step():
    model = _Metered()
    trainer([ll.SAM(rho=0.05)], max_steps=2).fit(model, loader(8))
    assert float(model.seen.compute()) == 16.0  # 2 steps x 8 samples, not 32
    assert model.acc._update_count == 2


class _InfOnce(Tiny):
    """The first pass of the first step produces an infinite loss (a non-finite ascent gradient)."""

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        if self.global_step == 0 and not self.objective_logging_suppressed:
            return loss * float("inf")
        return loss


def test_non_finite_ascent_under_16_mixed_is_skipped_and_counted():
    from lightning.pytorch.plugins.precision import MixedPrecision

    model = _InfOnce()
    cb = ll.AdversarialModelPerturbation(epsilon=5.0, inner_lr=1.0)
    plugin = MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))
    t = trainer([cb], max_steps=2, plugins=[plugin])
    t.fit(model, loader(8))
    assert t.global_step == 2 and cb.engine.skipped == 1 and cb.engine.perturbed_steps == 1
    assert float(t.callback_metrics["perturbation/skipped"]) == 1.0
    calls = []

    def eps_fn(model_, w, g, x, y):  # step 0: no perturbation (a plain step at w); step 1: the clipped ascent
        calls.append(1)
        return {k: torch.zeros_like(v) for k, v in w.items()} if len(calls) == 1 else _amp(5.0, 1.0)(model_, w, g, x, y)

    expected, _ = reference(eps_fn, _batches(8))
    _assert_weights(model, expected, atol=2e-3)


class _ManualSAM(Tiny):
    def __init__(self):
        super().__init__()
        self.automatic_optimization = False
        self.engine = ll.build_perturbation("sam", rho=0.05)

    def training_step(self, batch, batch_idx):
        self.training_step_calls += 1
        x, y = batch
        opt = self.optimizers()
        opt.zero_grad()
        loss = ll.perturbed_backward(
            self.engine,
            self,
            lambda: self.compute_loss(logits=self.net(x), target=y),
            backward=self.manual_backward,
            no_sync=getattr(self.trainer.strategy, "block_backward_sync", None),  # DDP only
        )
        opt.step()
        return loss


def test_manual_optimization_helper_in_a_lightning_module():
    model = _ManualSAM()
    t = trainer([], max_steps=2)
    t.fit(model, loader(8))
    expected, _ = reference(_sam(0.05), _batches(8))
    _assert_weights(model, expected, atol=1e-6)
    assert t.global_step == 2 and model.engine.perturbed_steps == 2
    assert model.logged.count("train/loss") == 2  # the perturbed pass does not log


def test_manual_helper_checkpoint_written_mid_step_has_original_weights(tmp_path):
    saver = _SaveMidStep(tmp_path / "mid.ckpt")
    model = _ManualSAM()
    model.engine = ll.build_perturbation("sam", rho=0.5)
    trainer([saver], max_steps=1).fit(model, loader(8))
    saved = torch.load(saver.path, weights_only=False)["state_dict"]
    for k, v in saver.before.items():
        assert torch.equal(saved[k], v), k
    assert "on_save_checkpoint" not in model.__dict__  # the guard is removed after the step


def test_batchnorm_statistics_see_one_forward_per_step_in_a_trainer():
    model = Tiny(bn=True)
    trainer([ll.SAM(rho=0.5)], max_steps=1).fit(model, loader(8))
    ref = tiny_model(dtype=torch.float32, bn=True)
    ref(_batches(8)[0][0].float())  # one ordinary training forward at the unperturbed weights
    bn, ref_bn = model.net[1], ref[1]
    assert model.training_step_calls == 2 and int(bn.num_batches_tracked) == 1
    torch.testing.assert_close(bn.running_mean, ref_bn.running_mean, rtol=0, atol=1e-7)
    torch.testing.assert_close(bn.running_var, ref_bn.running_var, rtol=0, atol=1e-7)


class _LateLayers(Tiny):
    """BatchNorm and a metric created after the callbacks' `setup` (in `configure_model` / `setup`)."""

    def __init__(self):
        super().__init__()
        self.net = None

    def configure_model(self):
        if self.net is None:
            self.net = tiny_model(dtype=torch.float32, bn=True)

    def setup(self, stage):
        import torchmetrics

        self.acc = torchmetrics.Accuracy(task="multiclass", num_classes=3)

    def training_step(self, batch, batch_idx):
        self.training_step_calls += 1
        x, y = batch
        logits = self.net(x)
        self.acc(logits.detach(), y)
        return self.compute_loss(logits=logits, target=y)


def test_layers_and_metrics_created_after_callback_setup_are_guarded():
    model = _LateLayers()
    trainer([ll.SAM(rho=0.5)], max_steps=2).fit(model, loader(8))
    assert model.training_step_calls == 4
    assert int(model.net[1].num_batches_tracked) == 2  # one forward per step counted, not two
    assert model.acc._update_count == 2


def test_state_key_is_cached_and_unique():
    a, b = ll.SAM(rho=0.05), ll.SAM(rho=0.1)
    assert a.state_key is a.state_key and a.state_key != b.state_key
    assert a.state_key == ll.SAM(rho=0.05).state_key  # resume matches the callback by its key
    assert a.state_key == a._generate_state_key(method="sam", rho=repr(0.05))


def test_no_op_guards_are_null_contexts():
    import contextlib

    from lightning_losses.perturbation import frozen_batchnorm
    from lightning_losses.perturbation.callback import ascent_terms_only, frozen_metrics

    model = Tiny()
    assert isinstance(frozen_batchnorm([]), contextlib.nullcontext)
    assert isinstance(frozen_metrics(model), contextlib.nullcontext)  # Tiny has no metric
    assert isinstance(ascent_terms_only(model, None), contextlib.nullcontext)
    assert not isinstance(ascent_terms_only(model, ("cross_entropy",)), contextlib.nullcontext)


def test_zero_grad_hooks_once_and_backward_hooks_per_pass():
    """The perturbed pass re-runs `training_step` and the backward (hooks included), not the closure's zero_grad."""
    calls = {"optimizer_zero_grad": 0, "on_before_zero_grad": 0, "on_before_backward": 0, "on_after_backward": 0}

    class Counted(Tiny):
        def optimizer_zero_grad(self, epoch, batch_idx, optimizer):
            calls["optimizer_zero_grad"] += 1
            return super().optimizer_zero_grad(epoch, batch_idx, optimizer)

        def on_before_backward(self, loss):
            calls["on_before_backward"] += 1

        def on_after_backward(self):
            calls["on_after_backward"] += 1

    class ZeroGradCounter(Callback):
        def on_before_zero_grad(self, trainer, pl_module, optimizer):
            calls["on_before_zero_grad"] += 1

    model = Counted()
    trainer([ll.SAM(rho=0.05), ZeroGradCounter()], max_steps=3).fit(model, loader())
    assert calls["optimizer_zero_grad"] == calls["on_before_zero_grad"] == 3  # once per optimizer step
    assert calls["on_before_backward"] == calls["on_after_backward"] == 6  # once per backward pass
    assert model.training_step_calls == 6
