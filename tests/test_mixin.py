"""LossesMixin on a user's own LightningModule: logging, stages, plug-in slots, optimizer-step wrapping."""

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import lightning_losses as ll
from lightning_losses.demo import DictDataset


class UserModel(ll.LossesMixin, L.LightningModule):
    def __init__(self, objective=None):
        super().__init__()
        self.net = nn.Linear(4, 3)
        self.configure_objective(objective or {"cross_entropy": {}, "focal": {"gamma": 1.0, "coefficient": 0.5}})

    def training_step(self, batch, batch_idx):
        return self.compute_loss(logits=self.net(batch["x"]), target=batch["target"], index=batch["index"])

    def validation_step(self, batch, batch_idx):
        self.compute_loss(logits=self.net(batch["x"]), target=batch["target"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _loader(n=32, batch_size=8):
    g = torch.Generator().manual_seed(0)
    ds = DictDataset(x=torch.randn(n, 4, generator=g), target=torch.randint(0, 3, (n,), generator=g))
    return DataLoader(ds, batch_size=batch_size)


def _trainer(tmp_path, **kw):
    kw.setdefault("max_epochs", 1)
    return L.Trainer(
        default_root_dir=tmp_path,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


class StepCounter:
    def __init__(self):
        self.calls = 0

    def wrap_closure(self, module, optimizer, closure):
        self.calls += 1
        return closure


class Bonus:
    def extra_terms(self, module, tensors, step):
        return {"bonus": torch.full((tensors["logits"].shape[0],), -0.25)}


def test_fit_logs_terms_and_runs_plugins(tmp_path):
    model = UserModel()
    counter, weights_seen = StepCounter(), []

    def reweighter(losses, **tensors):
        weights_seen.append(tensors["index"].clone())
        return torch.ones_like(losses)

    model.attach("step", counter)
    model.attach("reweighter", reweighter)
    model.attach("terms", Bonus())
    trainer = _trainer(tmp_path, limit_val_batches=2)
    trainer.fit(model, _loader(), _loader())
    metrics = trainer.callback_metrics
    assert {"train/loss", "train/cross_entropy", "train/focal", "train/bonus", "val/loss"} <= set(metrics)
    assert "val/bonus" not in metrics  # extra terms and reweighting are training-only
    assert counter.calls == trainer.global_step == 4
    assert len(weights_seen) == 4  # reweighter called in training steps only
    torch.testing.assert_close(metrics["train/bonus"], torch.tensor(-0.25))
    assert model.objective_output.per_sample.shape == (8,)  # the last call (validation)
    assert "bonus" not in model.objective_output.terms


def test_logging_suppressed_during_perturbed_pass(tmp_path):
    class Twice(StepCounter):
        def wrap_closure(self, module, optimizer, closure):
            def wrapped():
                loss = closure()
                module.objective_logging_suppressed = True
                try:
                    closure()
                finally:
                    module.objective_logging_suppressed = False
                return loss

            return wrapped

    model = UserModel({"cross_entropy": {}})
    model.attach("step", Twice())
    trainer = _trainer(tmp_path, limit_train_batches=2)
    trainer.fit(model, _loader())
    assert trainer.global_step == 2 and "train/loss" in trainer.callback_metrics


def test_mixin_errors():
    class NoObjective(ll.LossesMixin, L.LightningModule):
        pass

    with pytest.raises(ll.ConfigurationError, match=r"NoObjective.compute_loss called before configure_objective"):
        NoObjective().compute_loss(logits=torch.zeros(2, 2), target=torch.zeros(2, dtype=torch.long))
    model = UserModel()
    with pytest.raises(
        ll.ConfigurationError, match=r"`slot` must be one of 'reweighter', 'terms', 'step', got 'weights'"
    ):
        model.attach("weights", object())
    first = object()
    model.attach("reweighter", first)
    model.attach("reweighter", first)  # idempotent
    with pytest.raises(ll.ConfigurationError, match=r"a reweighter plug-in is already attached"):
        model.attach("reweighter", object())
    model.detach("reweighter", first)
    model.attach("reweighter", object())


def test_compute_loss_without_trainer_and_bad_inputs():
    model = UserModel({"cross_entropy": {}})
    loss = model.compute_loss(logits=torch.zeros(4, 3), target=torch.tensor([0, 1, 2, 0]))
    assert loss.item() == pytest.approx(torch.log(torch.tensor(3.0)).item())
    with pytest.raises(ValueError, match=r"`target` must have shape \[N\] = \[4\]"):
        model.compute_loss(logits=torch.zeros(4, 3), target=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"term `cross_entropy` needs input `target`; compute_loss got: `logits`"):
        model.compute_loss(logits=torch.zeros(4, 3))


@pytest.mark.parametrize(
    ("logits", "target", "exc", "match"),
    [
        (
            torch.zeros(4, 3, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
            ValueError,
            r"`logits` must be a floating tensor of shape \[N, C\], got torch.int64 \[4, 3\]",
        ),
        (torch.zeros(4), torch.zeros(4, dtype=torch.long), ValueError, r"`logits` must be a floating tensor of shape"),
        (
            torch.zeros(4, 3),
            torch.zeros(4),  # labels as floats: the most common mistake
            ValueError,
            r"`target` of shape \[N\] must hold integer class labels \(int64\), got torch.float32; soft targets are "
            r"probabilities shaped like `logits` \[4, 3\]",
        ),
        (
            torch.zeros(4, 3),
            torch.zeros(4, dtype=torch.bool),
            ValueError,
            r"`target` must hold integer class labels \(int64\), got torch.bool",
        ),
        (torch.zeros(4, 3), [0, 1, 2, 0], TypeError, r"`target` must be a torch.Tensor, got list"),
        (
            torch.zeros(4, 3),
            torch.tensor([0, 1, 3, 0]),
            ValueError,
            r"`target` labels must be in \[0, 2\] \(or `ignore_index`\), got \[3\]",
        ),
    ],
)
def test_compute_loss_wrong_dtype_or_shape(logits, target, exc, match):
    model = UserModel()  # two terms: the first one to see the tensors reports
    with pytest.raises(exc, match=match):
        model.compute_loss(logits=logits, target=target)


def test_require_mixin_message():
    from lightning_losses.callbacks import require_mixin

    class Plain(L.LightningModule):
        pass

    with pytest.raises(
        ll.ConfigurationError,
        match=r"needs a LightningModule that uses `lightning_losses.LossesMixin`.*`Plain` does not",
    ):
        require_mixin(object(), Plain())
    require_mixin(object(), UserModel())


def test_coefficient_schedules_follow_the_trainer_step(tmp_path):
    """The step is read only when a schedule uses it; with a linear ramp each step sees its own coefficient."""
    ramp = {"name": "linear", "start": 0.0, "end": 1.0, "steps": 4}
    seen = []

    class Recorder(UserModel):
        def training_step(self, batch, batch_idx):
            loss = super().training_step(batch, batch_idx)
            seen.append(self.objective_output.coefficients["focal"])
            return loss

    model = Recorder({"cross_entropy": {}, "focal": {"coefficient": ramp}})
    assert model.objective.uses_step
    _trainer(tmp_path, max_steps=4).fit(model, _loader())
    assert seen == [0.0, 0.25, 0.5, 0.75]


def test_a_module_is_copied_and_pickled_without_its_last_objective_output():
    """The last output holds this step's graph (not deep-copyable): copies and pickles carry None instead."""
    import copy
    import pickle

    from lightning_losses.demo import DigitsClassifier

    model = DigitsClassifier()
    for spec in ({"cross_entropy": {}}, {"cross_entropy": {}, "focal": {"coefficient": 0.5}}):  # deferred and eager
        model.configure_objective(spec)
        model.compute_loss(logits=model(torch.randn(4, 64)), target=torch.tensor([0, 1, 2, 3]))
        assert model.objective_output is not None
        twin = copy.deepcopy(model)
        assert twin.objective_output is None and model.objective_output is not None
        model.train()
        assert pickle.loads(pickle.dumps(model.objective_output)) is None
        torch.testing.assert_close(twin.eval()(torch.ones(2, 64)), model.eval()(torch.ones(2, 64)))


@pytest.mark.parametrize(
    ("objective", "reweight", "expected"),
    [
        ({"cross_entropy": {}}, False, {"train/loss"}),  # the term is the loss: logged once
        ({"focal": {"coefficient": 0.5}}, False, {"train/loss", "train/focal"}),  # the loss is half the term
        ({"cross_entropy": {}}, True, {"train/loss", "train/cross_entropy"}),  # weighted loss, unweighted term
    ],
)
def test_a_single_term_is_logged_apart_unless_it_is_the_loss(tmp_path, objective, reweight, expected):
    model = UserModel(objective)
    if reweight:
        model.attach("reweighter", lambda losses, **_: 1.0 + losses)
    trainer = _trainer(tmp_path, limit_train_batches=2)
    trainer.fit(model, _loader())
    assert {k for k in trainer.callback_metrics if k.startswith("train/")} == expected


def test_validate_then_fit_and_predict_with_compute_loss(tmp_path):
    """`trainer.validate` first (inference mode) must not break `fit`; `compute_loss` in `predict_step` returns the
    loss without logging (Lightning forbids `self.log` in predict)."""

    class Predicting(UserModel):
        def predict_step(self, batch, batch_idx):
            return self.compute_loss(logits=self.net(batch["x"]), target=batch["target"])

    model = Predicting({"focal": {}})
    trainer = _trainer(tmp_path, limit_val_batches=1, limit_train_batches=2)
    trainer.validate(model, _loader())
    trainer.fit(model, _loader())
    losses = trainer.predict(model, _loader(n=16))
    assert len(losses) == 2 and all(loss.ndim == 0 and torch.isfinite(loss) for loss in losses)
