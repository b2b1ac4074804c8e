"""Every accessor of ``lightning_losses._compat`` on the installed Lightning / torchmetrics / torch, and its fallback.

Parametrised over ``_compat.ACCESSORS`` (a new accessor without a check here fails ``test_every_accessor_is_checked``)
with the installed versions in the test ids, so a CI matrix over ``lightning>=2.2,<3`` reports each version apart.
"""

import sys
from importlib.metadata import version
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torchmetrics
from torch import nn

from lightning_losses import _compat

VERSIONS = f"lightning{version('lightning')}-torchmetrics{version('torchmetrics')}"


class Probe(L.LightningModule):
    """A plain LightningModule that keeps the real objects the accessors read."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))
        self.mean = torchmetrics.MeanMetric()
        self.seen = {"closures": [], "logs_due": [], "results": [], "in_batch": [], "restarted": [], "batches": []}
        self.seen |= {"log_calls": [], "logged": []}

    def on_train_epoch_start(self):
        self.seen["restarted"].append(_compat.restart_train_iterator(self.trainer))

    def training_step(self, batch, batch_idx):
        self.seen["batches"].append(batch[0].clone())
        loss = self.net(batch[0]).pow(2).mean()
        self.mean(loss.detach())
        _compat.log_on_step(self, self.trainer, {"probe/loss": loss.detach(), "probe/twice": 2 * loss.detach()}, 4)
        self.seen["logged"].append(loss.detach().clone())
        self._logs_due()
        return loss

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
        self.seen["closures"].append(optimizer_closure)
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        self.seen["results"].append((_compat.closure_result(optimizer_closure), optimizer_closure._result))

    def on_train_batch_start(self, batch, batch_idx):
        connector = self.trainer._logger_connector
        self.seen["logs_due"].append((_compat.should_update_logs(self.trainer), connector.should_update_logs))
        self._in_batch = _compat.in_training_batch(self.trainer)

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.seen["in_batch"].append((self._in_batch, _compat.in_training_batch(self.trainer)))
        self._logs_due()

    def _logs_due(self):
        connector = self.trainer._logger_connector
        self.seen["logs_due"].append((_compat.should_update_logs(self.trainer), connector.should_update_logs))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


@pytest.fixture(scope="module")
def fitted():
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 3)), batch_size=4)
    trainer = L.Trainer(
        max_steps=4, log_every_n_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    module = Probe()
    lightning_log = L.LightningModule.log

    def counted(self, name, *args, **kwargs):  # Lightning's own `log`, counted where it is defined
        self.seen["log_calls"].append(name)
        lightning_log(self, name, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(L.LightningModule, "log", counted)
        trainer.fit(module, data)
    return trainer, module


def _closure_parts(trainer, module):
    closure = module.seen["closures"][-1]
    assert _compat.closure_parts(closure) == (closure._step_fn, closure._backward_fn)
    assert _compat.closure_parts(lambda: None) is None  # another closure: called whole


def _closure_result(trainer, module):
    closure = module.seen["closures"][-1]
    ours, theirs = module.seen["results"][-1]  # read inside the step (Lightning consumes it afterwards)
    assert ours is theirs and torch.is_tensor(ours.loss)
    result = _compat.closure_result(closure)
    _compat.set_closure_result(closure, "replaced")
    assert _compat.closure_result(closure) == "replaced"
    _compat.set_closure_result(closure, result)
    bare = lambda: None  # noqa: E731
    _compat.set_closure_result(bare, "x")
    assert _compat.closure_result(bare) is None and not hasattr(bare, "_result")


def _logger_connector(trainer, module):
    assert hasattr(_compat.logger_connector(trainer), "log_metrics")
    assert _compat.logger_connector(SimpleNamespace()) is None


def _should_update_logs(trainer, module):
    seen = module.seen["logs_due"]
    # batch start, training step and batch end of 4 steps (our rule on the counters equals the property)
    assert len(seen) == 12 and all(ours == theirs for ours, theirs in seen) and any(t for t, _ in seen)
    assert not all(t for t, _ in seen)
    assert _compat.should_update_logs(SimpleNamespace(global_step=4, log_every_n_steps=2))  # fallback rule
    assert not _compat.should_update_logs(SimpleNamespace(global_step=3, log_every_n_steps=2))


def _log_on_step(trainer, module):
    # the first call of each name goes through `LightningModule.log`, the three later ones straight to its result
    assert module.seen["log_calls"] == ["probe/loss", "probe/twice"]
    last = module.seen["logged"][-1]
    assert torch.equal(trainer.callback_metrics["probe/loss"], last)
    assert torch.equal(trainer.callback_metrics["probe/twice"], 2 * last)
    assert torch.equal(trainer.logged_metrics["probe/loss"], last)  # the logging step's row (step 4)
    calls = []
    bare = SimpleNamespace(log=lambda name, value, **options: calls.append((name, options)))
    for _ in range(2):  # fallback without a Trainer's result collection: `log` every time
        _compat.log_on_step(bare, SimpleNamespace(), {"a": torch.tensor(1.0)}, 3)
    expected = {"on_step": True, "on_epoch": False, "sync_dist": False, "batch_size": 3}
    assert calls == [("a", expected)] * 2


def _callback_metrics_store(trainer, module):
    store = _compat.callback_metrics_store(trainer)
    assert store is trainer._logger_connector._callback_metrics
    store["probe/put"] = torch.tensor(1.0)
    assert trainer.callback_metrics["probe/put"] == 1.0  # what the property returns next
    fallback = SimpleNamespace(callback_metrics={"a": 1})
    assert _compat.callback_metrics_store(fallback) is fallback.callback_metrics


def _forget_logged_metrics(trainer, module):
    trainer._logger_connector._logged_metrics["probe/media"] = object()
    _compat.forget_logged_metrics(trainer, ["probe/media", "probe/absent"])
    assert "probe/media" not in trainer.logged_metrics and "probe/loss" in trainer.logged_metrics
    _compat.forget_logged_metrics(SimpleNamespace(), ["a"])  # fallback: nothing


def _epoch_to_run(trainer, module):
    assert _compat.epoch_to_run(trainer) == trainer.fit_loop.epoch_progress.current.processed
    assert _compat.epoch_to_run(SimpleNamespace(current_epoch=3)) == 3  # fallback


def _attached_trainer(trainer, module):
    assert _compat.attached_trainer(module) is trainer
    assert _compat.attached_trainer(Probe()) is None

    class Detached:
        @property
        def trainer(self):
            raise RuntimeError("not attached")

    assert _compat.attached_trainer(Detached()) is None


def _state_key(trainer, module):
    callback = L.pytorch.callbacks.Callback()
    assert _compat.state_key(callback, a=1) == callback._generate_state_key(a=1) == "Callback{'a': 1}"
    assert _compat.state_key(object(), a=1) == "object{'a': 1}"  # fallback: Lightning's format


def _takes_batch_idx(trainer, module, monkeypatch=None):
    assert _compat.takes_batch_idx(module.training_step)
    assert not _compat.takes_batch_idx(lambda batch: None)
    assert _compat.takes_batch_idx(lambda *args: None)


def _metric_snapshot(trainer, module):
    for metric in (torchmetrics.MeanMetric(), torchmetrics.CatMetric()):
        metric.update(torch.tensor([1.0, 2.0]))
        snapshot = _compat.metric_snapshot(metric)
        assert "_update_count" in snapshot
        before = metric.compute().clone()
        metric.update(torch.tensor([10.0]))
        _compat.restore_metric(metric, snapshot)
        assert torch.equal(metric.compute(), before) and metric._update_count == 1
    with pytest.raises(RuntimeError, match=r"neither `Metric._defaults` nor `Metric.metric_state` exists"):
        _compat.metric_snapshot(object())


def _norm_layer_types(trainer, module):
    types = _compat.norm_layer_types()
    for layer in (nn.BatchNorm1d(2), nn.BatchNorm2d(2), nn.SyncBatchNorm(2), nn.InstanceNorm1d(2)):
        assert isinstance(layer, types)
    assert not isinstance(nn.LayerNorm(2), types)


def _log_step(trainer, module):
    assert _compat.log_step(trainer) == trainer.fit_loop.epoch_loop._batches_that_stepped == 4
    assert _compat.log_step(type("T", (), {"global_step": 7})()) == 7  # fallback without the loop


def _intercept_logger_rows(trainer, module):
    seen = []
    assert _compat.intercept_logger_rows(trainer, lambda metrics, step: seen.append((dict(metrics), step)) or metrics)
    connector = trainer._logger_connector
    connector.log_metrics({"a": 1.0}, step=3)
    connector.log_metrics({"b": 2.0})  # Lightning's own rows: the step it writes at
    assert seen == [({"a": 1.0}, 3), ({"b": 2.0}, trainer.fit_loop.epoch_loop._batches_that_stepped)]
    assert _compat.intercept_logger_rows(trainer, lambda metrics, step: metrics)  # installed once, `before` replaced
    connector.log_metrics({"c": 3.0}, step=1)
    assert len(seen) == 2
    written = []  # `after` gets the row once the loggers have it
    assert _compat.intercept_logger_rows(trainer, lambda metrics, step: {**metrics, "x": 0.0}, written.append)
    connector.log_metrics({"d": 4.0}, step=2)
    assert written == [{"d": 4.0, "x": 0.0}]
    assert not _compat.intercept_logger_rows(SimpleNamespace(), lambda metrics, step: metrics)  # fallback


def _in_training_batch(trainer, module):
    seen = module.seen["in_batch"]
    assert seen == [(True, True)] * 4  # in on_train_batch_start and in on_train_batch_end
    assert not _compat.in_training_batch(trainer)  # after the fit
    assert not _compat.in_training_batch(SimpleNamespace(training=True))  # fallback


def _restart_train_iterator(trainer, module):
    assert module.seen["restarted"] == [True]  # the fit's first iterator made anew in `on_train_epoch_start`
    data = trainer.train_dataloader.dataset.tensors[0]
    assert torch.equal(torch.cat(module.seen["batches"]), data)  # every batch once, in order
    assert not _compat.restart_train_iterator(SimpleNamespace())  # fallback


CHECKS = {f.__name__[1:]: f for f in (_closure_parts, _closure_result, _logger_connector, _should_update_logs)}
CHECKS |= {f.__name__[1:]: f for f in (_attached_trainer, _state_key, _takes_batch_idx, _metric_snapshot)}
CHECKS |= {f.__name__[1:]: f for f in (_norm_layer_types, _log_step, _intercept_logger_rows, _in_training_batch)}
CHECKS |= {f.__name__[1:]: f for f in (_restart_train_iterator, _log_on_step, _callback_metrics_store, _epoch_to_run)}
CHECKS |= {f.__name__[1:]: f for f in (_forget_logged_metrics,)}


def test_every_accessor_is_checked():
    assert set(CHECKS) == set(_compat.ACCESSORS)


@pytest.mark.parametrize("accessor", [pytest.param(n, id=f"{n}-{VERSIONS}") for n in sorted(_compat.ACCESSORS)])
def test_accessor_reads_the_installed_versions(fitted, accessor):
    CHECKS[accessor](*fitted)


def test_installed_lightning_is_in_the_supported_range():
    major, minor = (int(x) for x in version("lightning").split(".")[:2])
    assert (2, 2) <= (major, minor) < (3, 0)


def test_fallbacks_without_the_private_attributes(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning.pytorch.utilities.signature_utils", None)  # import fails
    assert _compat.takes_batch_idx(lambda batch, batch_idx: None)
    assert _compat.takes_batch_idx(lambda batch, idx: None)  # Lightning's rule: two arguments pass batch_idx
    assert not _compat.takes_batch_idx(lambda batch: None)
    monkeypatch.delattr(nn.modules.batchnorm, "_NormBase")
    types = _compat.norm_layer_types()
    assert isinstance(nn.BatchNorm1d(2), types) and isinstance(nn.InstanceNorm2d(2), types)
    metric = torchmetrics.MeanMetric()
    metric.update(torch.tensor([1.0]))
    monkeypatch.delattr(type(metric), "_defaults", raising=False)
    monkeypatch.delattr(metric, "_defaults")  # a release that renamed it but kept the public `metric_state`
    state = property(lambda self: {"mean_value": self.mean_value, "weight": self.weight})
    monkeypatch.setattr(type(metric), "metric_state", state)
    snapshot = _compat.metric_snapshot(metric)
    assert set(snapshot) >= {"mean_value", "weight"}


#: private names of Lightning / torchmetrics / torch (regular expressions) the package may use only in `_compat`
PRIVATE = (r"\b_step_fn\b", r"\b_backward_fn\b", r"\b_zero_grad_fn\b", r"\._result\b", r"\b_logger_connector\b")
PRIVATE += (r"\._defaults\b", r"\b_update_count\b", r"\b_computed\b", r"\b_forward_cache\b", r"\b_NormBase\b")
PRIVATE += (r"\b_BatchNorm\b", r"\b_InstanceNorm\b", r"\b_generate_state_key\b", r"\._trainer\b", r"[\"']_trainer[\"']")
PRIVATE += (r"\bis_param_in_hook_signature\b",)
#: uses outside the files this fence was built with, left to their owners (switch them to `_compat`, then drop them)
ELSEWHERE = {
    ("mixin.py", r"[\"']_trainer[\"']"),  # compute_loss's hot path reads the instance dict directly
}


def test_private_attributes_are_read_only_through_compat():
    import re
    from pathlib import Path

    import lightning_losses

    root = Path(lightning_losses.__file__).parent
    found = {
        (path.relative_to(root).as_posix(), pattern)
        for path in root.rglob("*.py")
        if path.relative_to(root).parts[0] != "_compat"
        for pattern in PRIVATE
        if re.search(pattern, path.read_text())
    }
    assert found <= ELSEWHERE, sorted(found - ELSEWHERE)
