"""A ``training_step`` that returns ``None`` (for a non-finite loss) skips the step for every mechanism: with
``SampleReweighting(group_dro)`` + ``EntropyControl`` (+ ``SAF``) the states equal a run where that batch was absent."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

import lightning_losses as ll

FEATURES, CLASSES, BATCH = 6, 3, 8


def _batches(poisoned: bool) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    out = []
    for b in range(4):
        x = torch.randn(BATCH, FEATURES, generator=g)
        out.append(
            {
                "x": x,
                "target": torch.randint(0, CLASSES, (BATCH,), generator=g),
                "group": torch.randint(0, 2, (BATCH,), generator=g),
                "index": torch.arange(b * BATCH, (b + 1) * BATCH),
            }
        )
    bad = {k: v.clone() for k, v in out[0].items()}
    bad["x"][2] = float("nan")  # one corrupted sample: its loss (and entropy) is NaN
    bad["index"] = bad["index"] + 4 * BATCH
    return [out[0], bad, *out[1:]] if poisoned else out


class _Net(ll.LossesMixin, L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(torch.nn.Linear(FEATURES, 16), torch.nn.Tanh(), torch.nn.Linear(16, CLASSES))
        self.configure_objective({"cross_entropy": {}})
        self.skipped = 0

    def training_step(self, batch, batch_idx):
        loss = self.compute_loss(logits=self.net(batch["x"]), **{k: batch[k] for k in ("target", "group", "index")})
        if not torch.isfinite(loss):
            self.skipped += 1
            return None  # skip the step
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(tmp_path, poisoned: bool):
    model = _Net()
    callbacks = [
        ll.SampleReweighting("group_dro", step_size=0.5, num_groups=2, log_every_n_steps=1),
        ll.EntropyControl(target=0.5, lr=0.5, log_every_n_steps=1),
        ll.SAF(epochs_ago=1, start_epoch=1, num_samples=5 * BATCH),
    ]
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=str(tmp_path), callbacks=callbacks,
    )  # fmt: skip
    batches = _batches(poisoned)
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    return model, callbacks


def test_skipped_step_leaves_every_state_as_it_was(tmp_path):
    model, (reweighting, entropy, saf) = _fit(tmp_path / "a", poisoned=True)
    clean, (reweighting_ref, entropy_ref, saf_ref) = _fit(tmp_path / "b", poisoned=False)
    assert model.skipped == 2 and clean.skipped == 0  # the poisoned batch, once per epoch
    state, reference = reweighting.reweighter.state_dict(), reweighting_ref.reweighter.state_dict()
    assert int(state["step"]) == 8 and bool(torch.isfinite(state["q"]).all())
    for key in reference:
        torch.testing.assert_close(state[key], reference[key], msg=key)
    for key in ("beta", "dual", "sum", "count"):
        torch.testing.assert_close(entropy.controller.state_dict()[key], entropy_ref.controller.state_dict()[key])
    assert bool(torch.isfinite(entropy.controller.beta)) and float(entropy.controller.beta) != 0.0
    torch.testing.assert_close(saf.logits[: 4 * BATCH], saf_ref.logits[: 4 * BATCH])
    assert bool((saf.stamp[4 * BATCH :] == -1).all())  # the skipped batch's rows were put back
    for p, q in zip(model.parameters(), clean.parameters()):
        torch.testing.assert_close(p, q)


class _Rows(L.pytorch.loggers.Logger):
    """The rows the Trainer writes, by step."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[int, dict[str, float]] = {}

    name, version = "rows", 0

    def log_metrics(self, metrics, step=None):
        self.rows.setdefault(step, {}).update(metrics)

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def _logged_fit(tmp_path, batches, accumulate):
    logger = _Rows()
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", devices=1, logger=logger, log_every_n_steps=1, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=0,
        default_root_dir=str(tmp_path), accumulate_grad_batches=accumulate,
        callbacks=[ll.SampleReweighting("group_dro", step_size=0.5, num_groups=2)],
    )  # fmt: skip
    trainer.fit(_Net(), train_dataloaders=DataLoader(batches, batch_size=None))
    return logger.rows


def test_a_skipped_last_micro_batch_still_logs_its_steps_interval(tmp_path):
    """Gradient accumulation over 2 micro-batches, the second of the first step skipped (non-finite loss): the step is
    taken on the first one, and its row has the reweighting values of that micro-batch alone (as one step on it
    alone logs), not the skipped batch's: no weight statistics (its weights are the skipped batch's)."""
    good, bad, *rest = _batches(poisoned=True)
    skipped = _logged_fit(tmp_path / "skip", [good, bad, *rest], accumulate=2)
    alone = _logged_fit(tmp_path / "alone", [good], accumulate=1)
    keys = [k for k in alone[0] if k.startswith(("reweight/group_", "reweight/worst", "reweight/q/", "reweight/batch"))]
    assert len(keys) >= 7 and "reweight/ess" in alone[0]
    for key in keys:
        assert skipped[0][key] == pytest.approx(alone[0][key], rel=1e-12), key
    assert "reweight/ess" not in skipped[0] and "reweight/ess" in skipped[1]  # the next step's batch is its own
