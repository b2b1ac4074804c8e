"""USEFUL (issue 20): per-class two-means against an explicit float64 loop, the upsampling sampler (distribution,
DDP shards), the callback's recording / decision under DDP (rank 0's split everywhere), state round trip and a
crash-and-resume run that matches an uninterrupted one, pinned validation messages."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import lightning_losses as ll
from lightning_losses.demo import DigitsClassifier, DigitsDataModule
from lightning_losses.errors import ConfigurationError
from lightning_losses.functional.clustering import slow_cluster
from tests.helpers.ddp import lightning_env
from tests.helpers.resume import BatchSpy


# ---------------------------------------------------------------- the split, against an explicit loop
def _reference_split(outputs, target, losses, iterations=100):
    """Explicit float64 per-point loops: per class, Lloyd from the lowest- and highest-loss points, slow = higher
    mean loss."""
    n = outputs.shape[0]
    pts = [[float(v) for v in row] for row in outputs]
    slow = [False] * n
    for cls in sorted(set(int(t) for t in target)):
        members = [i for i in range(n) if int(target[i]) == cls]
        if len(members) < 2:
            continue
        ls = [float(losses[i]) for i in members]
        lo = min(range(len(members)), key=lambda j: (ls[j], j))
        hi = max(range(len(members)), key=lambda j: (ls[j], -j))
        cents = [list(pts[members[lo]]), list(pts[members[hi]])]
        assign = None
        for _ in range(iterations):
            new = []
            for i in members:
                d = [math.sqrt(sum((a - b) ** 2 for a, b in zip(pts[i], c))) for c in cents]
                new.append(d[1] < d[0])
            if new == assign:
                break
            assign = new
            for c, flag in enumerate((False, True)):
                group = [pts[i] for i, a in zip(members, assign) if a == flag]
                if group:
                    cents[c] = [sum(col) / len(group) for col in zip(*group)]
        first = [ls[j] for j, a in enumerate(assign) if not a]
        second = [ls[j] for j, a in enumerate(assign) if a]
        if not first or not second:
            continue
        slow_second = sum(second) / len(second) > sum(first) / len(first)
        for j, i in enumerate(members):
            slow[i] = assign[j] == slow_second
    return torch.tensor(slow)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_split_matches_an_explicit_float64_loop(seed):
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, 3, (40,), generator=g)
    outputs = torch.randn(40, 3, generator=g, dtype=torch.float64) + 2 * torch.nn.functional.one_hot(target, 3)
    losses = torch.rand(40, generator=g, dtype=torch.float64)
    got = slow_cluster(outputs, target, losses, torch.ones(40, dtype=torch.bool))
    assert torch.equal(got, _reference_split(outputs, target, losses))
    assert 0 < int(got.sum()) < 40


def test_the_higher_loss_cluster_of_every_class_is_chosen_and_invalid_samples_never():
    outputs = torch.tensor([[5.0], [4.9], [0.0], [0.1], [3.0], [-3.0], [-2.9], [9.0]])
    target = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    losses = torch.tensor([0.1, 0.2, 2.0, 2.2, 3.0, 0.1, 0.2, 5.0])
    valid = torch.tensor([True, True, True, True, True, True, True, False])
    got = slow_cluster(outputs, target, losses, valid)
    assert got.tolist() == [False, False, True, True, True, False, False, False]


# ---------------------------------------------------------------- the sampler
def test_the_sampler_draws_the_upsampled_multiset_and_keeps_the_epoch_length():
    sampler = ll.UpsampleSampler(10, num_replicas=1, rank=0, seed=3)
    assert sorted(sampler.epoch_indices().tolist()) == list(range(10))  # before the split: a permutation
    chosen = torch.zeros(10, dtype=torch.bool)
    chosen[[2, 7]] = True
    sampler.set_upsampled(chosen, factor=3)
    total = torch.zeros(10)
    for epoch in range(400):
        sampler.set_epoch(epoch)
        idx = sampler.epoch_indices()
        assert idx.numel() == 10
        counts = torch.bincount(idx, minlength=10)
        assert bool((counts <= torch.where(chosen, 3, 1)).all())
        total += counts
    # each of the 14 multiset entries is kept with probability 10 / 14
    torch.testing.assert_close(total / 400, torch.where(chosen, 30 / 14, 10 / 14).float(), atol=0.12, rtol=0)


def test_two_ranks_take_disjoint_shards_of_the_same_epoch():
    chosen = torch.tensor([True, False, False, True, False, False, False])
    full = ll.UpsampleSampler(7, num_replicas=1, rank=0, seed=1)
    shards = [ll.UpsampleSampler(7, num_replicas=2, rank=r, seed=1) for r in range(2)]
    for s in [full, *shards]:
        s.set_upsampled(chosen, 2)
        s.set_epoch(4)
    padded = full.epoch_indices().tolist()
    padded += padded[:1]  # 7 -> 8: DistributedSampler's padding
    assert [list(s) for s in shards] == [padded[0::2], padded[1::2]]
    assert len(shards[0]) == 4


def test_sampler_validation_messages():
    sampler = ll.UpsampleSampler(3)
    with pytest.raises(
        ValueError, match=r"`upsampled` must be a boolean tensor of shape \[3\].*got torch.int64 of shape \[2\]"
    ):
        sampler.set_upsampled(torch.tensor([1, 0]), 2)
    with pytest.raises(ConfigurationError, match=r"`num_samples` must be .*got 0"):
        ll.UpsampleSampler(0)


# ---------------------------------------------------------------- the callback
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"separating_epoch": 0}, r"`separating_epoch` must be .*1.*got 0"),
        ({"factor": 1}, r"`factor` must be .*2.*got 1"),
        ({"input": ""}, r"`input` must be a non-empty string, got ''"),
        ({"iterations": 0}, r"`iterations` must be .*got 0"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        ll.USEFUL(**kwargs)


def test_recipe_builds_it():
    (cb,) = ll.build_callbacks({"useful": {"separating_epoch": 3, "factor": 2}})
    assert isinstance(cb, ll.USEFUL) and cb.separating_epoch == 3


def test_a_loader_without_the_upsample_sampler_is_refused():
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        callbacks=[ll.USEFUL()],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with pytest.raises(
        ConfigurationError,
        match=r"USEFUL needs a training DataLoader whose `sampler` is .*UpsampleSampler.*got DistributedSampler",
    ):
        trainer.fit(DigitsClassifier(), DigitsDataModule())


def _record(cb, index, logits, target):
    cb.record(index, logits, logits, target)


def test_records_skip_non_finite_rows_and_a_skipped_step_is_undone():
    cb = ll.USEFUL(num_samples=4)
    logits = torch.tensor([[1.0, 0.0], [float("nan"), 0.0], [0.0, 1.0]])
    _record(cb, torch.tensor([0, 1, 2]), logits, torch.tensor([0, 1, 1]))
    assert cb.stamp.tolist() == [True, False, True, False] and int(cb.nonfinite) == 1
    cb.on_train_batch_start(None, None, None, 0)
    _record(cb, torch.tensor([3, 0]), torch.tensor([[2.0, 2.0], [5.0, 5.0]]), torch.tensor([0, 0]))
    cb.on_train_batch_end(None, DigitsClassifier(), None, None, 0)  # training_step returned None
    assert cb.stamp.tolist() == [True, False, True, False]
    torch.testing.assert_close(cb.outputs[0], torch.tensor([1.0, 0.0]))


def test_state_dict_round_trip():
    cb = ll.USEFUL(num_samples=6)
    g = torch.Generator().manual_seed(0)
    _record(cb, torch.arange(6), torch.randn(6, 3, generator=g), torch.tensor([0, 0, 0, 1, 1, 1]))
    other = ll.USEFUL(num_samples=6)
    other.load_state_dict(cb.state_dict())
    assert torch.equal(other.decide(), cb.decide())
    again = ll.USEFUL(num_samples=6)
    again.load_state_dict(cb.state_dict())
    assert again.decided and torch.equal(again.upsampled, cb.upsampled) and again.outputs is None


def _ddp_record_and_decide(index, logits, target, corrupt_rank1):
    import torch.distributed as dist

    rank = dist.get_rank()
    cb = ll.USEFUL(num_samples=int(index.max()) + 1)
    for i, z, t in zip(index.chunk(4), logits.chunk(4), target.chunk(4)):  # 2 steps, 2 ranks
        own = slice(rank * (i.numel() // 2), (rank + 1) * (i.numel() // 2))
        _record(cb, i[own], z[own], t[own])
    if corrupt_rank1 and rank == 1:  # a rank whose table differs must still take rank 0's split
        cb.losses = -cb.losses
    return cb.decide()


@pytest.mark.ddp
def test_two_processes_decide_like_one_process_on_the_global_batch(ddp):
    g = torch.Generator().manual_seed(5)
    n = 32
    index = torch.randperm(n, generator=g)
    target = torch.randint(0, 3, (n,), generator=g)
    logits = torch.randn(n, 3, generator=g) + 2 * torch.nn.functional.one_hot(target, 3)
    single = ll.USEFUL(num_samples=n)
    _record(single, index, logits, target)
    want = single.decide()
    for corrupt in (False, True):
        per_rank = ddp.run(_ddp_record_and_decide, index, logits, target, corrupt)
        assert torch.equal(per_rank[0], want) and torch.equal(per_rank[1], want)


# ---------------------------------------------------------------- crash and resume
def _fit(tmp_path, spy, ckpt_path=None, epochs=3, num_workers=0):
    cb = ll.USEFUL(separating_epoch=1)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        limit_train_batches=6,
        default_root_dir=tmp_path,
        deterministic=True,
        callbacks=[cb, spy, ModelCheckpoint(dirpath=tmp_path, save_last=True, every_n_epochs=1, save_top_k=-1)],
    )
    L.seed_everything(0)
    model = DigitsClassifier(dropout=0.0)  # dropout draws from the global RNG, which checkpoints do not hold
    data = DigitsDataModule(label_noise=0.4, sampler="upsample", batch_size=32, num_workers=num_workers)
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return cb, model


@pytest.mark.parametrize(
    ("crash_at", "num_workers"),
    # with workers, Lightning creates the resumed fit's first iterator before `on_train_epoch_start` (the sampler
    # still at epoch 0, nothing upsampled): USEFUL has it created anew
    [((1, 2), 0), ((2, 1), 0), ((2, 1), 1)],
    ids=["table-in-ckpt", "split-in-ckpt", "split-in-ckpt-workers"],
)
def test_a_run_resumed_after_a_crash_matches_an_uninterrupted_one(tmp_path, crash_at, num_workers):
    # (1, 2): the checkpoint of epoch 0 holds the recorded table, not the split; (2, 1): it holds the split
    clean_spy = BatchSpy()
    clean, clean_model = _fit(tmp_path / "clean", clean_spy, num_workers=num_workers)
    crash_spy = BatchSpy(crash_at=crash_at)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "crash", crash_spy, num_workers=num_workers)
    resumed_spy = BatchSpy()
    last = str(tmp_path / "crash" / "last.ckpt")
    resumed, resumed_model = _fit(tmp_path / "crash", resumed_spy, ckpt_path=last, num_workers=num_workers)
    assert clean.decided and resumed.decided and torch.equal(clean.upsampled, resumed.upsampled)
    assert sorted(resumed_spy.seen) == list(range(crash_at[0], 3))
    for epoch in resumed_spy.seen:
        assert torch.equal(torch.cat(resumed_spy.seen[epoch]), torch.cat(clean_spy.seen[epoch]))
    up = clean.upsampled[torch.cat(clean_spy.seen[2])].float().mean()
    assert up > clean.upsampled.float().mean()  # the slow clusters are over-represented after the split
    for a, b in zip(clean_model.parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------- a DDP Trainer run
def _ddp_trainer_useful():

    with lightning_env():
        L.seed_everything(0, verbose=False)
        cb, spy = ll.USEFUL(separating_epoch=1), BatchSpy()
        trainer = L.Trainer(
            accelerator="cpu",
            devices=2,
            strategy="ddp",
            max_epochs=2,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            limit_val_batches=0,
            callbacks=[cb, spy],
        )
        dm = DigitsDataModule(label_noise=0.4, sampler="upsample", batch_size=64)
        trainer.fit(DigitsClassifier(dropout=0.0), dm)
        return cb.upsampled, {e: torch.cat(v) for e, v in spy.seen.items()}, len(dm.datasets["train"])


@pytest.mark.ddp
def test_a_ddp_trainer_takes_one_split_and_shards_the_upsampled_epoch(ddp):
    (mask0, seen0, n), (mask1, seen1, _) = ddp.run(_ddp_trainer_useful)
    assert torch.equal(mask0, mask1) and 0 < int(mask0.sum()) < n
    full = ll.UpsampleSampler(n, num_replicas=1, rank=0, seed=0)
    full.set_upsampled(mask0, 2)
    full.set_epoch(1)
    want = full.epoch_indices()
    want = torch.cat([want, want[: 2 * len(seen0[1]) - n]])  # DistributedSampler's padding
    assert torch.equal(torch.stack([seen0[1], seen1[1]], dim=1).reshape(-1), want)
