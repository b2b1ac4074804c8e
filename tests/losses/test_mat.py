"""mat (memorization-aware training): a float64 loop of the authors' shift, the per-sample store (table, batch
writes, duplicates, non-finite rows), evaluation without shift, state_dict round trip and resume, argument checks, and
2 processes equal to 1 process on the global batch."""

from __future__ import annotations

import math

import pytest
import torch

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from tests.helpers.trainers import quiet_trainer


def _data(n=11, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    target = torch.randint(0, c, (n,), generator=g)
    held_out = 2.0 * torch.randn(n, c, generator=g, dtype=torch.float64)
    return logits, target, held_out


def _loop(logits, target, held_out, temperature, eps=1e-6, rows=None):
    """The authors' formula, one sample and one class at a time: calibrate P(y | y_ho) on the batch (the samples in
    ``rows``, default all), shift, cross entropy."""
    n, c = logits.shape
    rows = range(n) if rows is None else rows
    q = [[0.0] * c for _ in range(n)]
    for i in range(n):
        z = [float(held_out[i, k]) / temperature for k in range(c)]
        m = max(z)
        e = [math.exp(v - m) for v in z]
        q[i] = [v / sum(e) for v in e]
    joint = [[0.0] * c for _ in range(c)]  # [held-out class k][label y]
    for i in rows:
        for k in range(c):
            joint[k][int(target[i])] += q[i][k]
    cond = [[joint[k][y] / sum(joint[k]) if sum(joint[k]) > 0 else 0.0 for y in range(c)] for k in range(c)]
    out = []
    for i in range(n):
        shifted = []
        for y in range(c):
            s = math.log(sum(q[i][k] * cond[k][y] for k in range(c)) + eps) if i in rows else 0.0
            shifted.append(float(logits[i, y]) + s)
        m = max(shifted)
        lse = m + math.log(sum(math.exp(v - m) for v in shifted))
        out.append(lse - shifted[int(target[i])])
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("temperature", [1.0, 0.1, 0.01])
def test_matches_a_float64_loop_of_the_authors_formula(temperature):
    logits, target, held_out = _data()
    loss = ll.build_loss("mat", num_classes=3, temperature=temperature)
    loss.load_held_out(held_out)
    got = loss(logits=logits, target=target, index=torch.arange(11))
    torch.testing.assert_close(got, _loop(logits, target, held_out, temperature), rtol=1e-6, atol=1e-6)
    functional = ll.functional.mat_loss(logits, target, held_out, temperature=temperature)
    torch.testing.assert_close(functional, got, rtol=1e-6, atol=1e-6)


def test_gradient_flows_through_the_logits_only():
    logits, target, held_out = _data()
    logits.requires_grad_(True)
    held_out.requires_grad_(True)
    loss = ll.build_loss("mat", num_classes=3, temperature=0.5)
    value = loss(logits=logits, target=target, index=torch.arange(11), held_out_logits=held_out).sum()
    value.backward()
    assert held_out.grad is None
    ref = logits.detach().clone().requires_grad_(True)
    _shifted_ce(ref, target, held_out.detach(), 0.5).sum().backward()
    torch.testing.assert_close(logits.grad, ref.grad)


def _shifted_ce(logits, target, held_out, temperature):
    joint = ll.functional.mat_joint(held_out, target, logits.shape[1], temperature)
    shift = ll.functional.mat_shift(held_out, joint, temperature)
    return torch.nn.functional.cross_entropy(logits + shift, target, reduction="none")


def test_batch_rows_are_stored_by_index_and_reused():
    logits, target, held_out = _data()
    index = torch.arange(100, 111)
    loss = ll.build_loss("mat", num_classes=3, temperature=0.5)
    first = loss(logits=logits, target=target, index=index, held_out_logits=held_out)
    rows, seen = loss.held_out_logits(index)
    torch.testing.assert_close(rows, held_out.float())
    assert seen.all() and not loss.held_out_logits(torch.tensor([0, 99]))[1].any()
    again = loss(logits=logits, target=target, index=index)  # read back from the store
    torch.testing.assert_close(again, first, rtol=1e-6, atol=1e-6)


def test_samples_without_a_row_get_no_shift_and_no_part_in_the_calibration():
    logits, target, held_out = _data()
    loss = ll.build_loss("mat", num_classes=3, temperature=0.5)
    loss.load_held_out(held_out[:6])  # samples 6..10 have no held-out row
    got = loss(logits=logits, target=target, index=torch.arange(11))
    torch.testing.assert_close(got, _loop(logits, target, held_out, 0.5, rows=range(6)), rtol=1e-6, atol=1e-6)


def test_duplicate_index_in_a_batch_writes_the_first_copy():
    loss = ll.build_loss("mat", num_classes=2)
    rows = torch.tensor([[1.0, 0.0], [5.0, 5.0], [2.0, 3.0]])
    loss(logits=torch.zeros(3, 2), target=torch.tensor([0, 1, 0]), index=torch.tensor([4, 4, 1]), held_out_logits=rows)
    stored, _ = loss.held_out_logits(torch.tensor([4, 1]))
    torch.testing.assert_close(stored, torch.tensor([[1.0, 0.0], [2.0, 3.0]]))


def test_nonfinite_held_out_rows_are_left_out_and_counted():
    loss = ll.build_loss("mat", num_classes=2)
    rows = torch.tensor([[float("nan"), 0.0], [1.0, 2.0]])
    out = loss(logits=torch.zeros(2, 2), target=torch.tensor([0, 1]), index=torch.tensor([0, 1]), held_out_logits=rows)
    assert torch.isfinite(out).all()
    assert int(loss.nonfinite) == 1
    assert loss.held_out_logits(torch.tensor([0, 1]))[1].tolist() == [False, True]


def test_ignored_labels_count_nowhere():
    logits, target, held_out = _data()
    masked = target.clone()
    masked[[2, 5]] = -100
    loss = ll.build_loss("mat", num_classes=3, temperature=0.5)
    loss.load_held_out(held_out)
    got = loss(logits=logits, target=masked, index=torch.arange(11))
    keep = [i for i in range(11) if i not in (2, 5)]
    ref = _loop(logits[keep], target[keep], held_out[keep], 0.5)
    torch.testing.assert_close(got[keep], ref, rtol=1e-6, atol=1e-6)
    assert got[[2, 5]].tolist() == [0.0, 0.0]


def test_rows_of_ignored_labels_are_not_written():
    loss = ll.build_loss("mat", num_classes=2)
    rows = torch.tensor([[1.0, 0.0], [float("nan"), 2.0]])
    loss(logits=torch.zeros(2, 2), target=torch.tensor([-100, -100]), index=torch.tensor([0, 1]), held_out_logits=rows)
    assert not loss.held_out_logits(torch.tensor([0, 1]))[1].any()
    assert int(loss.nonfinite) == 0


def test_evaluation_is_the_plain_cross_entropy():
    logits, target, held_out = _data()
    loss = ll.build_loss("mat", num_classes=3).eval()
    loss.load_held_out(held_out)
    got = loss(logits=logits, target=target, index=torch.arange(11))
    torch.testing.assert_close(got, torch.nn.functional.cross_entropy(logits, target, reduction="none"))


def test_table_from_a_file(tmp_path):
    _, _, held_out = _data()
    path = tmp_path / "held_out.pt"
    torch.save(held_out.float(), path)
    loss = ll.build_loss("mat", num_classes=3, held_out=str(path))
    torch.testing.assert_close(loss.held_out_logits(torch.arange(11))[0], held_out.float())


def test_state_dict_round_trip_and_resume_continue_exactly():
    logits, target, held_out = _data(n=12)
    steps = [(torch.arange(0, 6), held_out[:6]), (torch.arange(6, 12), held_out[6:]), (torch.arange(12), None)]

    def run(loss, chunks):
        outs = []
        for index, rows in chunks:
            outs.append(loss(logits=logits[index], target=target[index], index=index, held_out_logits=rows))
        return outs

    straight = ll.build_loss("mat", num_classes=3, temperature=0.2)
    expected = run(straight, steps)
    first = ll.build_loss("mat", num_classes=3, temperature=0.2)
    run(first, steps[:2])
    state = first.state_dict()
    assert "_extra_state" in state
    resumed = ll.build_loss("mat", num_classes=3, temperature=0.2)  # a fresh process after the crash
    resumed.load_state_dict(state)
    torch.testing.assert_close(run(resumed, steps[2:])[0], expected[2])
    torch.testing.assert_close(resumed.held_out_logits(torch.arange(12))[0], held_out.float())


def test_state_of_another_width_is_refused():
    state = ll.build_loss("mat", num_classes=3).state_dict()
    with pytest.raises(ValueError, match=r"checkpointed held-out table has 3 classes but `num_classes` is 4"):
        ll.build_loss("mat", num_classes=4).load_state_dict(state)


def test_argument_and_input_checks(tmp_path):
    with pytest.raises(ConfigurationError, match="num_classes"):
        ll.build_loss("mat", num_classes=1)
    with pytest.raises(ConfigurationError, match="temperature"):
        ll.build_loss("mat", num_classes=2, temperature=0.0)
    with pytest.raises(ConfigurationError, match=r"`held_out` must be the path of a \.pt file"):
        ll.build_loss("mat", num_classes=2, held_out=str(tmp_path / "missing.pt"))
    torch.save({"a": 1}, tmp_path / "bad.pt")
    with pytest.raises(ConfigurationError, match=r"`held_out` file .* must hold a tensor, got dict"):
        ll.build_loss("mat", num_classes=2, held_out=str(tmp_path / "bad.pt"))
    loss = ll.build_loss("mat", num_classes=2)
    with pytest.raises(ValueError, match=r"held-out logits must be a tensor \[num_samples, 2\], got \[4, 3\]"):
        loss.load_held_out(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="held-out logits must be finite"):
        loss.load_held_out(torch.tensor([[0.0, float("inf")]]))
    with pytest.raises(ValueError, match=r"held-out logits have 5 rows but `num_samples` is 4"):
        ll.build_loss("mat", num_classes=2, num_samples=4).load_held_out(torch.zeros(5, 2))
    z, y, i = torch.zeros(3, 2), torch.tensor([0, 1, 0]), torch.arange(3)
    with pytest.raises(ValueError, match=r"`logits` must have shape \[N, 2\] \(`num_classes`\), got \[3, 3\]"):
        loss(logits=torch.zeros(3, 3), target=y, index=i)
    with pytest.raises(ValueError, match=r"`index` must be integer dataset positions of shape \[3\]"):
        loss(logits=z, target=y, index=i.float())
    with pytest.raises(ValueError, match=r"`held_out_logits` must have the shape of `logits` \[3, 2\], got \[3, 1\]"):
        loss(logits=z, target=y, index=i, held_out_logits=torch.zeros(3, 1))


def test_objective_routes_held_out_logits_from_a_batch_column():
    logits, target, held_out = _data()
    objective = ll.Objective({"mat": {"num_classes": 3, "temperature": 0.5, "inputs": {"held_out_logits": "ho"}}})
    out = objective({"logits": logits, "target": target, "index": torch.arange(11), "ho": held_out})
    torch.testing.assert_close(out.value, _loop(logits, target, held_out, 0.5).mean(), rtol=1e-6, atol=1e-6)


def _ddp_mat(shards):
    import torch.distributed as dist

    rank = dist.get_rank()
    logits, target, index, held_out = (t.clone() for t in shards[rank])
    logits.requires_grad_(True)
    loss = ll.build_loss("mat", num_classes=3, temperature=0.3)
    first = loss(logits=logits, target=target, index=index, held_out_logits=held_out)
    (grad,) = torch.autograd.grad(first.sum(), [logits])
    second = loss(logits=logits.detach(), target=target, index=index)  # from the synced store
    table = loss.held_out_logits(torch.arange(15))[0]
    return first.detach(), grad, second, table


@pytest.mark.ddp
def test_two_processes_equal_one_process_on_the_global_batch(ddp):
    logits, target, held_out = _data(n=15)
    index = torch.arange(15).flip(0)
    cut = 6  # uneven shards
    full = (logits, target, index, held_out)
    shards = [tuple(t[:cut] for t in full), tuple(t[cut:] for t in full)]
    per_rank = ddp.run(_ddp_mat, shards)
    ref_logits = logits.clone().requires_grad_(True)
    loss = ll.build_loss("mat", num_classes=3, temperature=0.3)
    value = loss(logits=ref_logits, target=target, index=index, held_out_logits=held_out)
    (grad,) = torch.autograd.grad(value.sum(), [ref_logits])
    for rank, (first, g, second, table) in enumerate(per_rank):
        rows = slice(0, cut) if rank == 0 else slice(cut, None)
        torch.testing.assert_close(first, value.detach()[rows])
        torch.testing.assert_close(g, grad[rows])
        torch.testing.assert_close(second, value.detach()[rows])
        torch.testing.assert_close(table, loss.held_out_logits(torch.arange(15))[0])  # every rank: the whole table


_PROJECTION = torch.randn(64, 10, generator=torch.Generator().manual_seed(3))


def test_trainer_crash_and_resume_keeps_the_table_written_from_batches(tmp_path):
    """The table is written from the batches of epoch 0 only; a crash at epoch 2 and a resume from the last
    checkpoint give the weights of an uninterrupted fit (the checkpoint carries the table)."""
    import lightning as L

    from lightning_losses.demo import DigitsClassifier, DigitsDataModule

    class HeldOutInEpochZero(DigitsClassifier):
        def objective_tensors(self, logits, batch, embeddings=None):
            out = super().objective_tensors(logits, batch, embeddings)
            if self.training and self.current_epoch == 0:
                out["held_out_logits"] = batch["x"] @ _PROJECTION
            return out

    class Crash(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise RuntimeError("crash")

    def fit(callbacks=(), ckpt_path=None):
        L.seed_everything(0, verbose=False)
        model = HeldOutInEpochZero(dropout=0.0, objective={"mat": {"num_classes": 10, "temperature": 2.0}})
        trainer = quiet_trainer(
            list(callbacks), max_epochs=4, limit_train_batches=3, limit_val_batches=0, deterministic=True,
            default_root_dir=tmp_path, enable_checkpointing=bool(callbacks),
        )  # fmt: skip
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32, shuffle=False), ckpt_path=ckpt_path)
        return model

    straight = fit()
    assert int(straight.objective.losses["mat"].held_out_logits(torch.arange(96))[1].sum()) == 96
    saving = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.raises(RuntimeError, match="crash"):
        fit([saving, Crash()])
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    assert int((state["objective.losses.mat._extra_state"]["store"]["stamp"] >= 0).sum()) == 96
    resumed = fit(ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_cpu():
    logits, target, held_out = _data()
    cpu = ll.build_loss("mat", num_classes=3, temperature=0.3)
    expected = cpu(logits=logits, target=target, index=torch.arange(11), held_out_logits=held_out)
    gpu = ll.build_loss("mat", num_classes=3, temperature=0.3)
    got = gpu(
        logits=logits.cuda(), target=target.cuda(), index=torch.arange(11).cuda(), held_out_logits=held_out.cuda()
    )
    torch.testing.assert_close(got.cpu(), expected)
    torch.testing.assert_close(
        gpu(logits=logits.cuda(), target=target.cuda(), index=torch.arange(11).cuda()).cpu(), expected
    )
