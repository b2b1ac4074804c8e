"""The demo's training samplers after a resume with loader workers: the first resumed epoch draws the order an
uninterrupted run draws (Lightning creates that epoch's iterator before it calls ``set_epoch``: Lightning issue
#21938), for the default shuffling sampler and the balanced ones."""

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_losses.demo import DigitsClassifier, DigitsDataModule
from tests.helpers.resume import BatchSpy


def _fit(root, spy, data_kwargs, ckpt_path=None):
    trainer = L.Trainer(
        max_epochs=3, logger=False, enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
        limit_train_batches=4, default_root_dir=root, accelerator="cpu",
        callbacks=[spy, ModelCheckpoint(dirpath=root, save_last=True, every_n_epochs=1, save_top_k=-1)],
    )  # fmt: skip
    L.seed_everything(0, verbose=False)
    data = DigitsDataModule(batch_size=32, num_workers=1, **data_kwargs)
    trainer.fit(DigitsClassifier(num_features=data.num_features, dropout=0.0), data, ckpt_path=ckpt_path)


@pytest.mark.parametrize(
    "data_kwargs",
    [{}, {"spurious": 0.9, "sampler": "balanced_groups"}, {"imbalance": 10.0, "sampler": "balanced_classes"}],
    ids=["default-shuffle", "balanced-groups", "balanced-classes"],
)
def test_resumed_epochs_draw_the_uninterrupted_order_with_workers(tmp_path, data_kwargs):
    clean = BatchSpy()
    _fit(tmp_path / "clean", clean, data_kwargs)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _fit(tmp_path / "crash", BatchSpy(crash_at=(2, 1)), data_kwargs)
    resumed = BatchSpy()
    _fit(tmp_path / "crash", resumed, data_kwargs, ckpt_path=str(tmp_path / "crash" / "last.ckpt"))
    assert sorted(resumed.seen) == [2]
    assert torch.equal(torch.cat(resumed.seen[2]), torch.cat(clean.seen[2]))
    assert not torch.equal(torch.cat(clean.seen[2]), torch.cat(clean.seen[0]))  # the epochs' orders differ
