"""Masked samples change nothing; gradient accumulation updates the state once per optimizer step; sized stores
need no host sync."""

import copy

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

import lightning_losses as ll
from lightning_losses.demo import DigitsClassifier, DigitsDataModule
from lightning_losses.functional import reweighting as F
from lightning_losses.objective import Objective
from lightning_losses.reweighting import PerSampleStore
from tests.reweighting.helpers import BATCH, NUM_CLASSES, NUM_GROUPS, SIZED, STATEFUL, STRATEGIES, make_steps


def _with_masked_sample(inputs, at):
    """The batch with one extra masked sample at position ``at``: a copy of the index of sample 3 (so it sits before
    or after that index's real occurrence), a huge loss, target ``ignore_index`` and an out-of-range group."""
    g = torch.Generator().manual_seed(at)
    extra = {
        "losses": torch.tensor([50.0], dtype=torch.float64),
        "logits": torch.randn(1, NUM_CLASSES, generator=g, dtype=torch.float64),
        "target": torch.tensor([-100]),
        "group": torch.tensor([99]),
        "index": inputs["index"][3:4],
    }
    out = {k: torch.cat([v[:at], extra[k], v[at:]]) for k, v in inputs.items()}
    out["sample_mask"] = torch.ones(BATCH + 1, dtype=torch.bool)
    out["sample_mask"][at] = False
    return out


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_masked_sample_changes_nothing(name):
    """Every strategy family: loss-based (softmax, min-max, sorted), group, class and per-sample-store strategies."""
    steps = make_steps(7, seed=1)  # crosses two epochs (JTT switches stage, stores see every index again)
    plain = ll.build_reweighter(name, **STRATEGIES[name])
    masked = ll.build_reweighter(name, **STRATEGIES[name])
    for s, (epoch, inputs) in enumerate(steps):
        at = (0, 5, BATCH)[s % 3]  # before, after and at the end relative to the duplicated index (position 3)
        plain.set_epoch(epoch)
        masked.set_epoch(epoch)
        expected = plain(**inputs)
        got = masked(**_with_masked_sample(inputs, at))
        assert got[at] == 0
        torch.testing.assert_close(torch.cat([got[:at], got[at + 1 :]]), expected, msg=f"step {s}")
    state, reference = masked.state_dict(), plain.state_dict()
    assert state.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(state[key], reference[key], msg=key)


def test_objective_leaves_ignored_samples_out_of_the_normalisation():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(6, 3, generator=g, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    target[2] = -100
    keep = target != -100
    objective = Objective({"cross_entropy": {}})
    out = objective({"logits": logits, "target": target}, reweighter=ll.build_reweighter("lin_upper"))
    ref = objective({"logits": logits[keep], "target": target[keep]}, reweighter=ll.build_reweighter("lin_upper"))
    assert out.weights[2] == 0
    torch.testing.assert_close(out.weights[keep], ref.weights)
    torch.testing.assert_close(out.value, ref.value)


def test_mask_shape_error():
    match = r"`sample_mask` must be a boolean tensor of shape \[3\], got torch.bool \[2\]"
    with pytest.raises(ValueError, match=match):
        ll.build_reweighter("cvar", alpha=0.5)(losses=torch.zeros(3), sample_mask=torch.ones(2, dtype=torch.bool))


# ---------------------------------------------------------------- gradient accumulation


@pytest.mark.parametrize("name", STATEFUL)
def test_two_micro_batches_equal_one_batch(name):
    steps = make_steps(7, seed=2)
    full = ll.build_reweighter(name, **STRATEGIES[name])
    micro = ll.build_reweighter(name, **STRATEGIES[name])
    micro.accumulating = True  # as under SampleReweighting: the state advances at commit()
    half = BATCH // 2
    for epoch, inputs in steps:
        full.set_epoch(epoch)
        micro.set_epoch(epoch)
        expected = full(**inputs)
        micro(**{k: v[:half] for k, v in inputs.items()})
        last = micro(**{k: v[half:] for k, v in inputs.items()})
        micro.commit()
        if name == "ema_class_loss":  # class weights of the step's final state, same as the full batch
            torch.testing.assert_close(last, expected[half:])
        if name == "group_dro":  # the last micro-batch uses the step's final q (with its own group counts)
            counts = torch.bincount(inputs["group"][half:], minlength=NUM_GROUPS).double()
            torch.testing.assert_close(last, F.group_dro_weights(inputs["group"][half:], full.q, counts))
    state, reference = micro.state_dict(), full.state_dict()
    for key in reference:
        torch.testing.assert_close(state[key], reference[key], msg=key)
    assert int(micro.step) == len(steps)


def test_group_dro_updates_once_per_optimizer_step_in_the_trainer(tmp_path):
    torch.manual_seed(0)
    dm = DigitsDataModule(spurious=0.9, batch_size=16, shuffle=False)
    dm.setup()
    model = DigitsClassifier(num_features=dm.num_features, dropout=0.0, cosine_schedule=False)
    first = dm.datasets["train"][list(range(32))]  # the two micro-batches of the first optimizer step
    with torch.no_grad():
        losses = torch.nn.functional.cross_entropy(copy.deepcopy(model)(first["x"]), first["target"], reduction="none")
    reference = ll.build_reweighter("group_dro", step_size=0.5)
    reference(losses=losses, group=first["group"])
    cb = ll.SampleReweighting("group_dro", step_size=0.5, num_groups=2)
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=2, accumulate_grad_batches=2, accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
        default_root_dir=str(tmp_path), callbacks=[cb],
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=DataLoader(dm.datasets["train"], batch_size=16, shuffle=False))
    assert trainer.global_step == 1 and int(cb.reweighter.step) == 1
    torch.testing.assert_close(cb.reweighter.q, reference.q)
    assert not bool(cb.reweighter.pending_count.any())


# ---------------------------------------------------------------- sized stores: no host sync


def _no_host_reads(monkeypatch):
    def boom(*_, **__):
        raise AssertionError("host read of a tensor on the hot path")

    for attr in ("item", "tolist", "__int__", "__bool__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, attr, boom)


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_sized_strategies_need_no_host_sync(monkeypatch, name, masked):
    steps = make_steps(4, seed=4)
    r = ll.build_reweighter(name, **STRATEGIES[name], **SIZED.get(name, {}))
    r(**steps[0][1])  # first call may size lazily-sized state (e.g. from logits)
    batches = [(e, _with_masked_sample(i, 0) if masked else i) for e, i in steps[1:]]
    with monkeypatch.context() as m:
        _no_host_reads(m)
        for epoch, inputs in batches:
            r.set_epoch(epoch)
            r(**inputs)


def test_sized_store_checks_indices_on_device_and_growth_still_works():
    sized = PerSampleStore({"v": (torch.float32, 0.0)}, num_samples=4)
    with pytest.raises(RuntimeError, match=r"`index` values must be dataset positions in \[0, num_samples=4\)"):
        sized.read("v", torch.tensor([1, 4]))
    grown = PerSampleStore({"v": (torch.float32, 0.0)})
    index = torch.tensor([6, 2, 6])
    grown.write(index, grown.fresh(index, 0), 0, v=torch.tensor([1.0, 2.0, 3.0]))
    assert len(grown) == 7 and grown.read("v", torch.tensor([6, 2])).tolist() == [1.0, 2.0]
    grown.set_size(5)  # never shrinks; fixed from now on
    assert len(grown) == 7 and grown.fixed


def test_callback_sizes_stores_from_the_training_set(tmp_path):
    dm = DigitsDataModule(batch_size=64)
    model = DigitsClassifier()
    auto = ll.SampleReweighting("per_sample_ema")
    explicit = ll.SampleReweighting("jtt", upweight=2.0, stage_epochs=1, num_samples=5000)
    for cb in (auto, explicit):
        L.Trainer(
            max_epochs=1, limit_train_batches=2, accelerator="cpu", logger=False, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, limit_val_batches=0,
            default_root_dir=str(tmp_path), callbacks=[cb],
        ).fit(model, datamodule=dm)  # fmt: skip
    assert auto.reweighter.store.fixed and len(auto.reweighter.store) == len(dm.datasets["train"])
    assert len(explicit.reweighter.store) == 5000
