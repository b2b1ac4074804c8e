"""The demo data: each corruption (symmetric label noise, long-tail imbalance, spurious groups) against what it
promises, measured on the produced tensors; batches are dicts with `index` = dataset position and `group`."""

import math

import pytest
import torch

from lightning_losses.demo import DigitsClassifier, DigitsDataModule, make_digits_splits
from lightning_losses.errors import ConfigurationError
from tests.helpers.trainers import quiet_trainer

CLEAN = make_digits_splits()


def test_clean_splits_are_stratified_disjoint_and_deterministic():
    sizes = {k: len(v["target"]) for k, v in CLEAN.items()}
    assert sum(sizes.values()) == 1797  # every bundled digit, once
    assert sizes["val"] == pytest.approx(0.1 * 1797, abs=10) and sizes["test"] == pytest.approx(0.2 * 1797, abs=10)
    for split in ("train", "val", "test"):  # stratified: every class ~ 1/10 of each split
        freq = torch.bincount(CLEAN[split]["target"], minlength=10).double() / sizes[split]
        assert float((freq - 0.1).abs().max()) < 0.01
    # the three splits partition the bundled set: the same multiset of (image, label) rows as sklearn's digits
    from sklearn.datasets import load_digits

    digits = load_digits()
    ours = torch.cat([torch.cat([CLEAN[s]["x"], CLEAN[s]["target"][:, None].float()], 1) for s in CLEAN])
    ref = torch.cat([torch.tensor(digits.data / 16.0, dtype=torch.float32), torch.tensor(digits.target)[:, None]], 1)
    for a, b in zip(
        torch.unique(ours, dim=0, return_counts=True), torch.unique(ref.float(), dim=0, return_counts=True)
    ):
        assert torch.equal(a, b)
    again = make_digits_splits()
    assert all(torch.equal(again[s][k], CLEAN[s][k]) for s in CLEAN for k in CLEAN[s])
    other = make_digits_splits(seed=1)
    assert not torch.equal(other["train"]["x"], CLEAN["train"]["x"])
    assert CLEAN["train"]["x"].dtype == torch.float32 and CLEAN["train"]["target"].dtype == torch.int64
    assert 0.0 <= float(CLEAN["train"]["x"].min()) and float(CLEAN["train"]["x"].max()) <= 1.0


@pytest.mark.parametrize("eta", [0.2, 0.4])
def test_symmetric_label_noise(eta):
    noisy = make_digits_splits(label_noise=eta)
    clean_y, noisy_y = CLEAN["train"]["target"], noisy["train"]["target"]
    assert torch.equal(noisy["train"]["x"], CLEAN["train"]["x"])  # same samples, only labels change
    flipped = noisy_y != clean_y
    assert torch.equal(flipped, noisy["train"]["noisy"])  # a corrupted label is never the true class
    n = len(clean_y)
    assert abs(flipped.double().mean().item() - eta) < 4 * math.sqrt(eta * (1 - eta) / n)
    # symmetric: the wrong class is uniform over the other 9 (shift (noisy - clean) mod 10 in 1..9, equally often)
    shift = (noisy_y[flipped] - clean_y[flipped]) % 10
    counts = torch.bincount(shift, minlength=10)
    assert counts[0] == 0
    expected = flipped.sum().item() / 9
    chi2 = float(((counts[1:].double() - expected) ** 2 / expected).sum())
    assert chi2 < 26.1  # chi-square, 8 degrees of freedom, p = 0.001
    for split in ("val", "test"):  # evaluation labels stay clean
        assert torch.equal(noisy[split]["target"], CLEAN[split]["target"])


def test_long_tail_imbalance_profile():
    rho = 10.0
    imb = make_digits_splits(imbalance=rho)
    counts = torch.bincount(imb["train"]["target"], minlength=10)
    n_max = int(torch.bincount(CLEAN["train"]["target"], minlength=10).min())
    expected = [max(1, round(n_max * rho ** (-c / 9))) for c in range(10)]  # n_c = n_max * rho^(-c/(C-1))
    assert counts.tolist() == expected
    assert counts[0] / counts[9] == pytest.approx(rho, rel=0.05)
    clean_rows = {tuple(r.tolist()) for r in CLEAN["train"]["x"]}
    assert all(tuple(r.tolist()) in clean_rows for r in imb["train"]["x"])  # a subset of the training split
    for split in ("val", "test"):  # balanced evaluation
        assert torch.equal(imb[split]["target"], CLEAN[split]["target"])


def test_spurious_attribute_and_groups():
    p = 0.9
    sp = make_digits_splits(spurious=p)
    for split in ("train", "val", "test"):
        x, y, group = sp[split]["x"], sp[split]["target"], sp[split]["group"]
        assert x.shape[1] == 74
        assert torch.equal(x[:, :64], CLEAN[split]["x"])  # the image features are untouched
        code = x[:, 64:]
        assert torch.equal(code.sum(1), torch.ones(len(y)))  # one-hot attribute
        s = code.argmax(1)
        assert torch.equal(group, (s != y).long())  # group 1 = attribute conflicts with the label
        agree = (s == y).double().mean().item()
        # train: s = y with prob. p, else uniform (which hits y with prob. 1/10); val/test: uniform
        target_rate = p + (1 - p) / 10 if split == "train" else 0.1
        assert abs(agree - target_rate) < 4 * math.sqrt(target_rate * (1 - target_rate) / len(y))
    assert "group" not in CLEAN["train"]


def test_batches_are_dicts_with_dataset_positions():
    dm = DigitsDataModule(batch_size=50, spurious=0.5, label_noise=0.2)
    dm.setup("fit")
    assert dm.num_features == 74
    train = dm.datasets["train"].tensors
    seen = []
    for batch in dm.train_dataloader():  # shuffled
        assert set(batch) == {"x", "target", "index", "group", "noisy"}
        assert batch["index"].dtype == torch.int64
        for key in ("x", "target", "group"):
            assert torch.equal(batch[key], train[key][batch["index"]])
        seen.append(batch["index"])
    seen = torch.cat(seen)
    assert torch.equal(seen.sort().values, torch.arange(len(train["target"])))  # every position once per epoch
    assert not torch.equal(seen, torch.arange(len(seen)))  # and shuffled
    val = next(iter(DigitsDataModule(batch_size=8).val_dataloader()))
    assert set(val) == {"x", "target", "index"}  # no `group` without spurious features
    assert val["index"].tolist() == list(range(8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"label_noise": 1.0}, r"`label_noise` must be in \[0.0, 1.0\), got 1.0"),
        ({"imbalance": 0.5}, r"`imbalance` must be >= 1.0, got 0.5"),
        ({"spurious": 1.5}, r"`spurious` must be in \[0.0, 1.0\], got 1.5"),
        ({"batch_size": 0}, r"`batch_size` must be an integer >= 1, got 0"),
        ({"shuffle": "no"}, r"`shuffle` must be a bool \(True or False\), got 'no'"),
        (
            {"val_fraction": 0.5, "test_fraction": 0.5},
            r"^`val_fraction` must be < 1 - `test_fraction` = 0.5 \(the rest is the training split\), got 0.5$",
        ),
    ],
)
def test_datamodule_argument_errors(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        DigitsDataModule(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cosine_schedule": "maybe"}, r"`cosine_schedule` must be a bool \(True or False\), got 'maybe'"),
        ({"batch_norm": 1}, r"`batch_norm` must be a bool \(True or False\), got 1"),
        ({"dropout": 1.0}, r"`dropout` must be in \[0.0, 1.0\), got 1.0"),
        (
            {"optimizer": "adam"},
            r"`optimizer` must be one of `adamw`, `sgd`, `bsam`, got 'adam'; did you mean `adamw`\?",
        ),
        (  # before allocating: 4 * 10^22 bytes
            {"hidden_dim": 10**11},
            r"^`hidden_dim` = 100000000000 with `depth` = 2 makes a model of 10,000,000,007,600,000,000,010 "
            r"parameters; the demo model allows at most 268,435,456, got hidden_dim=100000000000$",
        ),
        ({"hidden_dim": 2**13, "depth": 5}, r"^`hidden_dim` = 8192 with `depth` = 5 makes a model of 269,"),
    ],
)
def test_model_argument_errors(kwargs, match):
    with pytest.raises(ConfigurationError, match=match):
        DigitsClassifier(**kwargs)


def test_model_uses_the_mixin_and_feeds_its_objective():
    model = DigitsClassifier(num_features=64, objective={"cross_entropy": {}, "focal": {"coefficient": 0.5}})
    batch = {k: v[:5] for k, v in CLEAN["train"].items()}
    logits = model(batch["x"])
    assert logits.shape == (5, 10)
    tensors = model.objective_tensors(logits, batch)
    # `noisy` is not an objective input; no `index` in the raw split; `inputs` (the model input) feeds MESA's teacher
    assert set(tensors) == {"logits", "target", "inputs"} and tensors["inputs"] is batch["x"]
    loss = model.loss_from_batch(logits, batch)
    ce = torch.nn.functional.cross_entropy(logits, batch["target"], reduction="none")
    p_t = torch.softmax(logits, -1).gather(1, batch["target"][:, None]).squeeze(1)
    torch.testing.assert_close(loss, (ce + 0.5 * (1 - p_t) ** 2 * ce).mean())


def test_training_order_is_a_function_of_seed_and_epoch():
    """The shuffled order comes from (seed, epoch), not the global generator: a resumed run sees the same batches."""

    def order(epoch, seed=0, noise=False):
        dm = DigitsDataModule(batch_size=64, seed=seed)
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)  # what Lightning calls at each epoch start
        if noise:
            torch.rand(100)  # the global generator moves: the order must not
        return torch.cat([b["index"] for b in loader])

    assert torch.equal(order(3), order(3, noise=True))
    assert not torch.equal(order(3), order(4)) and not torch.equal(order(3), order(3, seed=1))
    assert torch.equal(order(2).sort().values, torch.arange(len(order(2))))


def test_demo_fit_resumed_from_a_checkpoint_equals_an_uninterrupted_fit(tmp_path):
    """Crash at the start of epoch 2, resume from the last checkpoint: the same weights as an uninterrupted fit."""
    import lightning as L
    import pytest

    from lightning_losses.demo import DigitsClassifier

    class Crash(L.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise RuntimeError("crash")

    def fit(callbacks=(), ckpt_path=None):
        L.seed_everything(0, verbose=False)
        model = DigitsClassifier(dropout=0.0)
        trainer = quiet_trainer(
            list(callbacks), max_epochs=4, limit_train_batches=3, limit_val_batches=0, deterministic=True,
            default_root_dir=tmp_path, enable_checkpointing=bool(callbacks),
        )  # fmt: skip
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=32), ckpt_path=ckpt_path)
        return model

    straight = fit()
    saving = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
    with pytest.raises(RuntimeError, match="crash"):
        fit([saving, Crash()])
    resumed = fit(ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


def _group_batches():
    """Two spurious-digit validation batches; the second has no sample of group 1."""
    split = make_digits_splits(spurious=0.9)["val"]
    g0, g1 = (split["group"] == 0).nonzero().squeeze(1), (split["group"] == 1).nonzero().squeeze(1)
    first = torch.cat([g0[:6], g1[:5]])
    second = g0[6:14]  # group 1 absent
    return [{k: v[idx] for k, v in split.items() if k in ("x", "target", "group")} for idx in (first, second)]


def _hand_group_accuracy(model, batches):
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(b["x"]).argmax(-1) for b in batches])
    target, group = torch.cat([b["target"] for b in batches]), torch.cat([b["group"] for b in batches])
    acc = {}
    for g in (0, 1):
        hits = [float(p == t) for p, t, gg in zip(pred.tolist(), target.tolist(), group.tolist()) if gg == g]
        if hits:
            acc[g] = sum(hits) / len(hits)
    return acc


@pytest.mark.parametrize("drop_group_1", [False, True])
def test_group_accuracy_with_a_batch_missing_a_group(drop_group_1):
    """A validation batch (or a whole epoch) without some group is normal: per-group accuracy over the groups seen."""
    import lightning as L

    torch.manual_seed(0)
    model = DigitsClassifier(num_features=74, dropout=0.0)
    batches = _group_batches()
    if drop_group_1:  # the whole epoch misses group 1: it is not logged (undefined, not 0)
        batches = [{k: v[b["group"] == 0] for k, v in b.items()} for b in batches]
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    loader = torch.utils.data.DataLoader(batches, batch_size=None)  # the dict batches as they are, one per step
    trainer.validate(model, dataloaders=loader, verbose=False)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    expected = _hand_group_accuracy(model, batches)
    assert {k for k in logged if "group" in k} == {f"val/acc_group{g}" for g in expected} | {"val/worst_group_acc"}
    for g, acc in expected.items():
        assert logged[f"val/acc_group{g}"] == pytest.approx(acc, abs=1e-6)
    assert logged["val/worst_group_acc"] == pytest.approx(min(expected.values()), abs=1e-6)


def _group_metrics_on_rank(state):
    import torch.distributed as dist

    model = DigitsClassifier(num_features=74, dropout=0.0)
    model.load_state_dict(state)
    batches = _group_batches()
    mine = batches[dist.get_rank()]  # rank 1's whole epoch has no sample of group 1
    with torch.no_grad():
        model.group_accuracy["val"].update(model(mine["x"]), mine["target"], mine["group"])
    return {k: float(v) for k, v in model.group_metrics("val").items()}


def test_group_accuracy_under_ddp_with_a_rank_missing_a_group(ddp):
    torch.manual_seed(0)
    model = DigitsClassifier(num_features=74, dropout=0.0)
    out0, out1 = ddp.run(_group_metrics_on_rank, model.state_dict())
    expected = _hand_group_accuracy(model, _group_batches())
    assert set(expected) == {0, 1}
    want = {**{f"val/acc_group{g}": a for g, a in expected.items()}, "val/worst_group_acc": min(expected.values())}
    assert out0 == pytest.approx(want, abs=1e-6) and out1 == pytest.approx(want, abs=1e-6)


def test_batch_size_above_the_training_split_fails_in_setup():
    dm = DigitsDataModule(batch_size=10**20)  # the split size is known once the splits exist
    with pytest.raises(
        ConfigurationError,
        match=r"^`batch_size` must be an integer in \[1, 1259\] \(the size of the training split\), got 10{20}$",
    ):
        dm.setup("fit")
    assert dm.datasets == {}
    full = DigitsDataModule(batch_size=1259)  # the whole training split in one batch is fine
    full.setup("fit")
    assert len(next(iter(full.train_dataloader()))["target"]) == 1259


def test_bsam_optimizer_reads_the_training_split_and_runs_with_the_bsam_preset():
    import lightning as L

    from lightning_losses.perturbation import BSAM, WeightPerturbation

    model = DigitsClassifier(optimizer="bsam", lr=0.5, weight_decay=1e-3)
    data = DigitsDataModule(batch_size=64)
    trainer = L.Trainer(
        max_steps=3,
        callbacks=[WeightPerturbation("bsam", rho=0.01)],
        logger=False,
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
    )
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit(model, data)
    opt = trainer.optimizers[0]
    assert isinstance(opt, BSAM)
    group = opt.param_groups[0]
    assert group["num_data"] == len(data.datasets["train"])
    assert group["prior_precision"] == pytest.approx(1e-3 * len(data.datasets["train"]))
    assert all(int(opt.state[p]["step"]) == 3 for p in model.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_bsam_optimizer_without_a_training_split_is_refused():
    model = DigitsClassifier(optimizer="bsam")
    with pytest.raises(ConfigurationError, match=r"`optimizer` = 'bsam' needs the training-set size: fit with a"):
        model.configure_optimizers()


@pytest.mark.parametrize("sampler", ["none", "upsample", "balanced_groups"])
def test_training_samplers_shard_over_the_data_parallel_ranks(sampler):
    # under ModelParallelStrategy the tensor-parallel ranks of one replica must read the same batches: the strategy's
    # `distributed_sampler_kwargs` (data-parallel size and rank) decides the shard, not the world size
    from types import SimpleNamespace

    dm = DigitsDataModule(sampler=sampler, spurious=0.9 if sampler == "balanced_groups" else 0.0)
    strategy = SimpleNamespace(distributed_sampler_kwargs={"num_replicas": 2, "rank": 1})
    dm.trainer = SimpleNamespace(strategy=strategy, world_size=4, global_rank=3)
    loader = dm.train_dataloader()
    assert (loader.sampler.num_replicas, loader.sampler.rank) == (2, 1)
    dm.trainer = SimpleNamespace(strategy=SimpleNamespace(), world_size=4, global_rank=3)  # no kwargs: the world
    loader = dm.train_dataloader()
    assert (loader.sampler.num_replicas, loader.sampler.rank) == (4, 3)
