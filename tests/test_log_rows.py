"""The diagnostics' scalars in the Trainer's own logger rows (``lightning_losses._log_rows``)."""

from types import SimpleNamespace

from lightning_losses._log_rows import host_values, log_scalars, write_row


class _Connector:
    def __init__(self):
        self.should_update_logs, self.rows, self._callback_metrics = True, [], {}

    def log_metrics(self, metrics, step=None):
        self.rows.append((dict(metrics), step))


def _trainer(step):
    current = SimpleNamespace(ready=1, completed=0)  # inside a training batch
    loop = SimpleNamespace(_batches_that_stepped=step, batch_progress=SimpleNamespace(current=current))
    return SimpleNamespace(training=True, global_step=step, fit_loop=SimpleNamespace(epoch_loop=loop),
                           _logger_connector=_Connector())  # fmt: skip


def test_values_of_a_logging_step_go_into_the_trainers_row_of_that_step():
    trainer = _trainer(3)
    connector = trainer._logger_connector
    write_row(trainer, {"a": 1.0})
    write_row(trainer, {"b": 2.0, "a": 3.0})  # a later value of the same step wins
    assert connector.rows == []
    connector.log_metrics({"train/loss": 0.5})  # the Trainer's own row, after the batch-end hooks
    assert connector.rows == [({"train/loss": 0.5, "a": 3.0, "b": 2.0}, None)]


def test_a_kept_row_the_trainer_does_not_write_goes_out_first_at_its_own_step():
    trainer = _trainer(4)
    connector = trainer._logger_connector
    write_row(trainer, {"c": 3.0})  # step 4: the Trainer writes no row (a micro-batch that accumulates)
    trainer.fit_loop.epoch_loop._batches_that_stepped = 5
    connector.log_metrics({"train/loss": 0.4})
    assert connector.rows == [({"c": 3.0}, 4), ({"train/loss": 0.4}, None)]
    trainer.fit_loop.epoch_loop._batches_that_stepped = 6
    write_row(trainer, {"d": 1.0})
    trainer.fit_loop.epoch_loop._batches_that_stepped = 7
    write_row(trainer, {"e": 1.0})  # the next value kept writes the earlier one out
    assert connector.rows[2:] == [({"d": 1.0}, 6)]


def test_values_outside_a_training_batch_or_off_the_logging_steps_are_written_at_once():
    trainer = _trainer(2)
    connector = trainer._logger_connector
    connector.should_update_logs = False  # a callback's own interval between the Trainer's logging steps
    write_row(trainer, {"a": 1.0})
    connector.should_update_logs = True
    trainer.fit_loop.epoch_loop.batch_progress.current.completed = 1  # e.g. `on_fit_end`
    write_row(trainer, {"b": 1.0})
    assert connector.rows == [({"a": 1.0}, 2), ({"b": 1.0}, 2)]


def test_a_value_of_a_step_whose_row_is_kept_joins_that_row_wherever_it_is_sent_from():
    trainer = _trainer(8)
    connector = trainer._logger_connector
    write_row(trainer, {"a": 1.0})  # kept for the Trainer's row of step 8
    trainer.fit_loop.epoch_loop.batch_progress.current.completed = 1  # outside the batch, the same step
    write_row(trainer, {"b": 2.0})
    assert connector.rows == []
    connector.log_metrics({"train/loss": 0.1})
    assert connector.rows == [({"train/loss": 0.1, "a": 1.0, "b": 2.0}, None)]


def test_host_values_read_tensors_exactly_in_one_read_and_keep_the_order():
    """Numbers and one-element tensors of any dtype (an int64 count beyond float32's integers, a tensor in a graph)
    become Python floats in the caller's order; a mix of dtypes is read in float64 (a stack would promote it to
    float32)."""
    import torch

    graph = torch.tensor(1.5, dtype=torch.float64, requires_grad=True) * 2
    metrics = {"b": 2, "a": torch.tensor(0.1), "c": torch.tensor([2**25 + 1]), "d": graph, "e": torch.tensor(True)}
    got = host_values(metrics)
    assert list(got) == ["b", "a", "c", "d", "e"]
    assert got == {"b": 2.0, "a": float(torch.tensor(0.1)), "c": 2.0**25 + 1, "d": 3.0, "e": 1.0}
    assert all(type(v) is float for v in got.values())
    assert host_values({"x": torch.tensor(0.25)}) == {"x": 0.25} and host_values({}) == {}


def test_log_scalars_puts_the_same_cpu_tensors_in_the_row_and_the_callback_metrics():
    """The row holds float64 CPU 0-d tensors (Lightning turns a row of tensors into numbers in one pass; a row that
    mixes its tensors with floats takes its slow path), the very ones ``trainer.callback_metrics`` gets."""
    import torch

    trainer = _trainer(5)
    connector = trainer._logger_connector
    log_scalars(trainer, None, {"a": 0.5, "n": torch.tensor(2**40 + 1), "x": torch.tensor(0.25, dtype=torch.float16)})
    connector.log_metrics({"train/loss": torch.tensor(1.0)})
    ((row, _),) = connector.rows
    assert list(row) == ["train/loss", "a", "n", "x"]
    for key, expected in (("a", 0.5), ("n", 2.0**40 + 1), ("x", 0.25)):
        value = row[key]
        assert isinstance(value, torch.Tensor) and value.dtype == torch.float64 and value.device.type == "cpu"
        assert value.ndim == 0 and value.item() == expected and connector._callback_metrics[key] is value
