"""Weight perturbation combined with reweighting, entropy terms, gradient accumulation, skipped batches, tied
weights, BatchNorm and mid-step checkpoints; and the errors when a plug-in's hook is not in effect."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from tests.helpers.ddp import lightning_env

from ._combo import GROUPS, Net, dataset, fit, params, weights

REWEIGHTING = {
    "loss_softmax": lambda: ll.SampleReweighting("loss_softmax", temperature=0.5),
    "group_dro": lambda: ll.SampleReweighting("group_dro", step_size=1.0, num_groups=GROUPS),
    "entropy": lambda: ll.EntropyControl(target=1.0, lr=0.5),
}
IDENTITY_PERTURBATIONS = {
    "sam": lambda: ll.SAM(rho=0.0),
    "sam_every_2": lambda: ll.SAM(rho=0.0, every_n_steps=2),
    "amp_inner_2": lambda: ll.AdversarialModelPerturbation(epsilon=0.0, inner_steps=2),
}


def _assert_equal(a, b, atol=1e-7):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


# ---------------------------------------------------------------------------------------------- defect 1
@pytest.mark.parametrize("plugin", sorted(REWEIGHTING))
@pytest.mark.parametrize("perturbation", sorted(IDENTITY_PERTURBATIONS))
def test_zero_radius_with_plugins_and_accumulation_equals_the_plain_run(plugin, perturbation):
    """A zero perturbation re-runs every micro-batch at w: each must get the weights (and terms) it had at w."""
    plain, _ = fit([REWEIGHTING[plugin]()], model=Net(bn=True, tied=True), k=2, max_steps=6)
    perturbed, _ = fit(
        [IDENTITY_PERTURBATIONS[perturbation](), REWEIGHTING[plugin]()], model=Net(bn=True, tied=True), k=2, max_steps=6
    )
    assert perturbed.calls > plain.calls  # the perturbed passes did run
    _assert_equal(params(perturbed), params(plain))


@pytest.mark.parametrize("strategy", ["loss_softmax", "group_dro"])
def test_perturbed_step_over_micro_batches_equals_one_on_the_concatenated_batch(strategy):
    """Micro-batch 2 holds micro-batch 1's samples in another order, so reweighting the concatenated batch gives
    every sample the weight it gets in its micro-batch: SAM at k=2 must equal SAM at k=1 on batches of 8."""
    data = dataset(paired=4)
    one, _ = fit([ll.SAM(rho=0.3), REWEIGHTING[strategy]()], batch_size=8, k=1, data=data)
    two, _ = fit([ll.SAM(rho=0.3), REWEIGHTING[strategy]()], batch_size=4, k=2, data=data)
    _assert_equal(params(two), params(one), atol=2e-6)


# ---------------------------------------------------------------------------------------------- defect 2
class _Watch(Callback):
    """The state before and after each training batch."""

    def __init__(self):
        self.before, self.after = {}, {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.before[batch_idx] = params(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after[batch_idx] = params(pl_module)


def test_skipped_batch_is_skipped_without_perturbation():
    """`training_step` returning None (Lightning's skipped batch): no crash, weights untouched, nothing counted."""
    watch, sam = _Watch(), ll.SAM(rho=0.5)
    model, trainer = fit([sam, watch], model=Net(bn=True, tied=True, skip=(1, 4)), max_steps=6)
    for skipped in (1, 4):
        # the forward at w still updates BatchNorm's running statistics, as without perturbation
        _assert_equal(weights(watch.after[skipped]), weights(watch.before[skipped]), atol=0)
    assert not torch.equal(watch.after[2]["inp.weight"], watch.before[2]["inp.weight"])
    assert sam.engine.perturbed_steps == 4 and sam.engine.skipped == 0


@pytest.mark.parametrize("skip", [(2,), (5,), (2, 3)], ids=["first_micro_batch", "last_micro_batch", "whole_step"])
def test_skipped_micro_batch_under_accumulation(skip):
    """A skipped micro-batch adds no gradient at w nor at w + eps: with a zero radius the run equals the plain one;
    a step whose micro-batches all returned None is not perturbed."""
    plain, _ = fit([], model=Net(bn=True, skip=skip), k=2, max_steps=4)
    sam = ll.SAM(rho=0.0)
    perturbed, _ = fit([sam, ll.SampleReweighting("loss_softmax")], model=Net(bn=True, skip=skip), k=2, max_steps=4)
    reweighted, _ = fit([ll.SampleReweighting("loss_softmax")], model=Net(bn=True, skip=skip), k=2, max_steps=4)
    _assert_equal(params(perturbed), params(reweighted))
    assert sam.engine.perturbed_steps == (3 if skip == (2, 3) else 4)
    real = ll.SAM(rho=0.3)
    fit([real], model=Net(bn=True, skip=skip), k=2, max_steps=4)
    assert real.engine.perturbed_steps == sam.engine.perturbed_steps
    assert plain.calls == 8


def test_skipped_last_micro_batch_under_a_grad_scaler_is_not_perturbed():
    """16-mixed with a GradScaler: Lightning skips the optimizer step when the closure returns None (the last
    micro-batch was skipped), so the earlier micro-batches' gradient is not perturbed either."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    sam, watch = ll.SAM(rho=0.3), _Watch()
    plugin = MixedPrecision("16-mixed", device="cpu", scaler=torch.amp.GradScaler("cpu"))
    fit([sam, watch], model=Net(skip=(3,)), k=2, max_steps=3, plugins=[plugin])
    assert sam.engine.perturbed_steps == 2
    _assert_equal(weights(watch.after[3]), weights(watch.before[2]), atol=0)  # the step was skipped


def test_engine_skip_on_none_and_no_gradient():
    lin = torch.nn.Linear(3, 1)
    engine = ll.build_perturbation("sam", rho=0.5)
    named = list(lin.named_parameters())
    x = torch.randn(4, 3)

    def with_grad_but_none(phase):
        lin(x).sum().backward()  # e.g. earlier micro-batches' gradient, the last one skipped
        return None

    before = params(lin)
    assert engine.step(with_grad_but_none, named, skip_on_none=True) is None
    assert engine.perturbed_steps == 0 and engine.last_stats == {}
    _assert_equal(params(lin), before, atol=0)
    lin.zero_grad(set_to_none=True)
    assert engine.step(lambda phase: None, named) is None  # no gradient at all: nothing to perturb
    assert engine.perturbed_steps == 0
    engine.step(with_grad_but_none, named)  # the caller steps on the gradient there is: perturbed
    assert engine.perturbed_steps == 1
    _assert_equal(params(lin), before, atol=0)


def test_manual_helper_skips_a_batch_whose_loss_fn_returns_none():
    lin = torch.nn.Linear(3, 1)
    sam = ll.build_perturbation("sam", rho=0.5)
    before = params(lin)
    assert ll.perturbed_backward(sam, lin, lambda: None) is None
    assert sam.perturbed_steps == 0 and all(p.grad is None for p in lin.parameters())
    _assert_equal(params(lin), before, atol=0)


# ---------------------------------------------------------------------------------------------- defect 4
class _SaveInPerturbedPass(Callback):
    def __init__(self, path):
        self.path, self.before = path, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.before is None:
            self.before = params(pl_module)

    def on_after_backward(self, trainer, pl_module):
        if pl_module.objective_logging_suppressed and not self.path.exists():
            trainer.save_checkpoint(self.path)  # written while the weights are perturbed


def _check_clean(saved, before, after):
    """Parameters as before the step (every key of a tied one); BatchNorm statistics as after the step (its one
    update at w, none from the perturbed passes)."""
    expected = {
        **weights(before),
        **{k: v for k, v in after.items() if k.startswith("bn.") and k not in weights(after)},
    }
    assert saved.keys() == expected.keys()
    assert [k for k in saved if not torch.equal(saved[k], expected[k])] == []


@pytest.mark.parametrize("k", [1, 2])
def test_checkpoint_in_perturbed_pass_is_clean_with_tied_weights_and_batchnorm(tmp_path, k):
    saver = _SaveInPerturbedPass(tmp_path / "mid.ckpt")
    model, _ = fit([ll.ASAM(rho=2.0), saver], model=Net(bn=True, tied=True), k=k, max_steps=1)
    saved = torch.load(saver.path, weights_only=False)["state_dict"]
    _check_clean(saved, saver.before, params(model))
    assert not torch.equal(saved["hidden2.weight"], model.hidden2.weight.detach())  # the step did happen afterwards


class _ManualNet(Net):
    def __init__(self, path):
        super().__init__(bn=True, tied=True)
        self.automatic_optimization = False
        self.engine = ll.build_perturbation("sam", rho=0.5)
        self.path, self.before = path, None

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        opt.zero_grad()
        x, y, g, _ = batch
        self.before = params(self)

        def loss_fn():
            loss = self.compute_loss(logits=self(x), target=y, group=g)
            if self.objective_logging_suppressed and not self.path.exists():
                self.trainer.save_checkpoint(self.path)
            return loss

        ll.perturbed_backward(self.engine, self, loss_fn, backward=self.manual_backward)
        opt.step()


def test_manual_helper_checkpoint_is_clean_with_tied_weights_and_batchnorm(tmp_path):
    model, _ = fit([], model=_ManualNet(tmp_path / "mid.ckpt"), max_steps=1)
    saved = torch.load(model.path, weights_only=False)["state_dict"]
    _check_clean(saved, model.before, params(model))


# ---------------------------------------------------------------------------------------------- same class
class _DeltaProbe(Callback):
    """In the first perturbed pass: ||w + eps - w|| of each parameter (unique tensors)."""

    def __init__(self, cb):
        self.cb, self.delta = cb, None

    def on_after_backward(self, trainer, pl_module):
        if pl_module.objective_logging_suppressed and self.delta is None:
            originals = self.cb.engine.original_weights()
            seen = {}
            for name, p in pl_module.named_parameters():
                if id(p) in originals:
                    seen[name] = float((p.detach() - originals[id(p)]).double().norm())
            self.delta = seen


def test_tied_weight_is_perturbed_once():
    sam = ll.SAM(rho=0.5)
    probe = _DeltaProbe(sam)
    fit([sam, probe], model=Net(tied=True), max_steps=1)
    names = [n for n, _ in sam._named]
    assert "hidden.weight" in names and "hidden2.weight" not in names
    assert abs(sum(v**2 for v in probe.delta.values()) ** 0.5 - 0.5) < 1e-5  # ||eps|| = rho over unique tensors
    awp = ll.AWP(gamma=0.1)
    probe = _DeltaProbe(awp)
    model = Net(tied=True)
    w = float(model.hidden.weight.detach().double().norm())
    fit([awp, probe], model=model, max_steps=1)
    assert abs(probe.delta["hidden.weight"] - 0.1 * w) < 1e-5  # gamma * ||w_l||, not twice that


def test_batchnorm_sees_each_micro_batch_once_under_accumulation():
    plain, _ = fit([], model=Net(bn=True, tied=True), k=2, max_steps=1)
    perturbed, _ = fit([ll.SAM(rho=0.5)], model=Net(bn=True, tied=True), k=2, max_steps=1)
    assert int(perturbed.bn.num_batches_tracked) == 2
    for key in ("running_mean", "running_var"):
        torch.testing.assert_close(getattr(perturbed.bn, key), getattr(plain.bn, key), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- defect 5
class _MixinLast(L.LightningModule, ll.LossesMixin):  # LightningModule.optimizer_step hides the mixin's
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(16, 4)
        self.configure_objective({"cross_entropy": {}})

    def training_step(self, batch, batch_idx):
        x, y, *_ = batch
        return self.compute_loss(logits=self.net(x), target=y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_perturbation_refuses_a_module_whose_mixin_is_not_first():
    with pytest.raises(
        ConfigurationError,
        match=r"SAM cannot run: in `_MixinLast\(LightningModule, LossesMixin\)`.*"
        r"put `LossesMixin` first in the bases: `class _MixinLast\(ll.LossesMixin, L.LightningModule\)`",
    ):
        fit([ll.SAM(rho=0.1)], model=_MixinLast(), max_steps=1)
    fit([ll.SampleReweighting("loss_softmax")], model=_MixinLast(), max_steps=1)  # compute_loss still works


class _NoSuper(Net):
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        optimizer.step(closure=optimizer_closure)  # bypasses LossesMixin.optimizer_step


class _WithSuper(Net):
    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)


def test_perturbation_raises_when_an_override_skips_the_mixins_optimizer_step():
    model = _NoSuper()
    before = weights(params(model))
    with pytest.raises(
        ConfigurationError,
        match=r"AdversarialModelPerturbation did not run: `_NoSuper.optimizer_step` "
        r"overrides `LossesMixin.optimizer_step` without calling it.*call `super\(\).optimizer_step",
    ):
        fit([ll.AdversarialModelPerturbation(epsilon=0.5)], model=model, max_steps=4)
    _assert_equal(weights(params(model)), before, atol=0)  # raised before the optimizer moved anything
    model = _WithSuper()
    fit([ll.SAM(rho=0.1)], model=model, max_steps=4)
    assert model.calls == 8  # 4 optimizer steps, 2 passes each


class _DetachEverySecondStep(Callback):
    """Takes the perturbation callback out of the mixin's slot on odd steps (as a schedule of plug-ins may)."""

    def __init__(self, sam):
        self.sam = sam

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % 2:
            pl_module.detach("step", self.sam)
        else:
            pl_module.attach("step", self.sam)


def test_the_hook_check_applies_only_while_the_callback_is_attached():
    sam = ll.SAM(rho=0.1)
    fit([sam, _DetachEverySecondStep(sam)], max_steps=4)  # no "did not run" error on the detached steps
    assert sam.engine.perturbed_steps == 2


@pytest.mark.parametrize(
    "make",
    [
        lambda: ll.SampleReweighting("loss_softmax"),
        lambda: ll.EntropyControl(beta=0.1),
        lambda: ll.SAF(epochs_ago=1, start_epoch=1),
    ],
    ids=["reweighter", "entropy", "saf"],
)
def test_plugins_raise_when_training_step_never_calls_compute_loss(make):
    model = Net(compute=False)
    before = weights(params(model))
    callback = make()
    name = "SampleReweighting" if isinstance(callback, ll.SampleReweighting) else type(callback).__name__
    with pytest.raises(
        ConfigurationError,
        match=rf"{name} did not run: `Net.training_step` returned a loss without "
        r"calling `self.compute_loss\(...\)`",
    ):
        fit([callback, ll.SAM(rho=0.1)], model=model, max_steps=2)
    _assert_equal(weights(params(model)), before, atol=0)
    model = Net(skip_early=(0,))  # a batch skipped (None) before compute_loss is not mistaken for a missing call
    fit([make()], model=model, max_steps=2)
    assert not model.__dict__.get("_ll_check_loss")  # teardown detached every plug-in: no check left behind


# ---------------------------------------------------------------------------------------------- units
def test_attached_reweighter_gives_each_call_its_weights_in_every_perturbed_pass():
    from types import SimpleNamespace

    from lightning_losses.reweighting.callback import _Attached

    trainer = SimpleNamespace(global_step=0)
    module = SimpleNamespace(objective_logging_suppressed=False, objective_suppressed_passes=0, _trainer=trainer)
    reweighter = ll.build_reweighter("group_dro", step_size=1.0, num_groups=2)
    attached = _Attached(reweighter, module)
    group = torch.tensor([0, 1, 1])
    first = attached(losses=torch.tensor([1.0, 0.0, 2.0]), group=group)
    second = attached(losses=torch.tensor([0.0, 3.0, 1.0]), group=group)
    assert not torch.equal(first, second)
    module.objective_logging_suppressed = True
    for _ in range(2):  # e.g. inner_steps=2: an ascent pass and the descent pass
        module.objective_suppressed_passes += 1
        assert attached(losses=torch.zeros(3), group=group) is first
        assert attached(losses=torch.zeros(3), group=group) is second
    with pytest.raises(
        ValueError, match=r"call 0 of `compute_loss` in a perturbed pass has losses of shape \[2\], but"
    ):
        module.objective_suppressed_passes += 1
        attached(losses=torch.zeros(2), group=group[:2])
    module.objective_logging_suppressed, trainer.global_step = False, 1  # the next optimizer step starts afresh
    third = attached(losses=torch.tensor([1.0, 1.0, 1.0]), group=group)
    assert attached.recorded == [third]


def test_replayed_micro_batch_returning_none_under_ddp_raises_as_lightning_does():
    from contextlib import nullcontext
    from types import SimpleNamespace

    cb = ll.SAM(rho=0.1)
    cb._batches = [((None,), 0), ((None,), 1)]
    strategy = SimpleNamespace(training_step=lambda *a: None, block_backward_sync=nullcontext, backward=None)
    trainer = SimpleNamespace(strategy=strategy, world_size=2, accumulate_grad_batches=2)
    with pytest.raises(RuntimeError, match=r"returning None in distributed training is not supported \(micro-batch 0"):
        cb._replay(trainer, Net(), None)
    trainer.world_size = 1
    cb._replay(trainer, Net(), None)  # one process: the micro-batch adds no gradient


# ---------------------------------------------------------------------------------------------- DDP
def _ddp_fit(perturb):
    """A real 2-process Lightning DDP run (inside the session's gloo group): group_dro, k=2, BatchNorm, tied."""

    with lightning_env():
        callbacks = [REWEIGHTING["group_dro"]()] + ([IDENTITY_PERTURBATIONS["amp_inner_2"]()] if perturb else [])
        model, _ = fit(callbacks, model=Net(bn=True, tied=True), k=2, max_steps=3, strategy="ddp", devices=2)
        return params(model), model.calls


@pytest.mark.ddp
def test_zero_radius_with_reweighting_and_accumulation_under_ddp(ddp):
    (plain0, calls), (plain1, _) = ddp.run(_ddp_fit, False)
    (pert0, pert_calls), (pert1, _) = ddp.run(_ddp_fit, True)
    assert pert_calls == 3 * calls  # every micro-batch at w, then in an ascent and in the descent pass
    _assert_equal(weights(plain0), weights(plain1), atol=0)  # BatchNorm statistics are each rank's own
    _assert_equal(weights(pert0), weights(pert1), atol=0)
    _assert_equal(pert0, plain0)
    _assert_equal(pert1, plain1)
