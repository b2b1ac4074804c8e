"""SAF (trajectory loss): the term against an explicit per-element KL loop, recording rules, one pass per step in a
Trainer, crash-and-resume, DDP (every rank records the global batch), errors."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

import lightning_losses as ll
from lightning_losses.errors import ConfigurationError
from lightning_losses.perturbation import SAF

from ._lightning import Tiny, data, trainer


def _module(epoch, suppressed=False):
    return SimpleNamespace(current_epoch=epoch, objective_logging_suppressed=suppressed)


def _logits(seed, n=6, c=4):
    return torch.randn(n, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _reference_kl(past, now, tau):
    """tau^2 * sum_c p_c (log p_c - log q_c) with p = softmax(past / tau), q = softmax(now / tau), by hand."""
    out = []
    for a, b in zip(past.tolist(), now.tolist()):
        za = [math.exp(v / tau) for v in a]
        zb = [math.exp(v / tau) for v in b]
        p = [v / sum(za) for v in za]
        q = [v / sum(zb) for v in zb]
        out.append(tau**2 * sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q)))
    return torch.tensor(out, dtype=torch.float64)


def test_term_is_the_kl_to_the_outputs_recorded_epochs_ago():
    saf = SAF(coefficient=0.3, temperature=5.0, epochs_ago=2, start_epoch=2, num_samples=6)
    idx = torch.arange(6)
    recorded = {}
    for epoch in range(4):
        now = _logits(epoch)
        sub = idx if epoch != 0 else idx[:4]  # samples 4, 5 are not seen in epoch 0
        term = saf.extra_terms(_module(epoch), {"logits": now[sub], "index": sub}, step=epoch)["saf"]
        if epoch < 2:
            assert torch.equal(term, torch.zeros(len(sub), dtype=term.dtype))
        else:
            past = recorded[epoch - 2]
            expected = 0.3 * _reference_kl(past, now, 5.0)
            if epoch == 2:
                expected[4:] = 0.0  # nothing recorded for them two epochs ago: no term
            torch.testing.assert_close(term.double(), expected, rtol=1e-6, atol=1e-9)
            assert float(term[:4].abs().min()) > 0
        recorded[epoch] = now.float().double()  # the table keeps float32
        if epoch == 0:
            recorded[epoch][4:] = float("nan")


def test_perturbed_passes_do_not_record_and_teacher_gets_no_gradient():
    saf = SAF(epochs_ago=1, start_epoch=1, num_samples=3)
    idx = torch.arange(3)
    first = _logits(0, n=3)
    saf.extra_terms(_module(0), {"logits": first, "index": idx}, step=0)
    saf.extra_terms(_module(0, suppressed=True), {"logits": _logits(9, n=3), "index": idx}, step=0)
    torch.testing.assert_close(saf.logits[:, 0].double(), first)
    now = _logits(1, n=3).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: saf.extra_terms(_module(1, suppressed=True), {"logits": z, "index": idx}, step=1)["saf"], (now,)
    )


def test_duplicate_indices_write_one_row():
    saf = SAF(epochs_ago=1, num_samples=4)
    logits = _logits(0, n=3)
    saf.record(torch.tensor([2, 0, 2]), logits, epoch=0)
    torch.testing.assert_close(saf.logits[2, 0].double(), logits[0])
    assert saf.stamp[:, 0].tolist() == [0, -1, 0, -1]


class _Indexed(Dataset):
    def __init__(self, n=16):
        self.x, self.y = data(n).tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i], i


class _TinyIndexed(Tiny):
    def training_step(self, batch, batch_idx):
        self.training_step_calls += 1
        x, y, i = batch
        return self.compute_loss(logits=self.net(x), target=y, index=i)


def _fit(max_epochs, ckpt_in=None, ckpt_out=None):
    model = _TinyIndexed()
    cb = ll.SAF(coefficient=0.5, epochs_ago=1, start_epoch=1)
    t = trainer([cb], max_epochs=max_epochs)
    t.fit(model, DataLoader(_Indexed(), batch_size=8), ckpt_path=ckpt_in)
    if ckpt_out is not None:
        t.save_checkpoint(ckpt_out)
    return model, cb, t


def test_trainer_one_pass_per_step_logs_the_term_and_resumes_exactly(tmp_path):
    model, cb, t = _fit(3)
    assert t.global_step == 6 and model.training_step_calls == 6  # the cost of a plain step: one pass
    assert cb.num_samples == 16 and int(cb.stamp.max()) == 2
    assert float(t.callback_metrics["train/saf"]) > 0
    _fit(2, ckpt_out=tmp_path / "e2.ckpt")
    resumed, _, _ = _fit(3, ckpt_in=tmp_path / "e2.ckpt")
    for (k, a), b in zip(model.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=k)
    ckpt = torch.load(tmp_path / "e2.ckpt", weights_only=False)
    ckpt["callbacks"] = {}
    torch.save(ckpt, tmp_path / "no_state.ckpt")
    stateless, _, _ = _fit(3, ckpt_in=tmp_path / "no_state.ckpt")
    assert not torch.equal(stateless.net[0].weight, model.net[0].weight)  # the stored outputs matter


def _ddp_record():
    from lightning_losses.distributed import rank

    saf = SAF(epochs_ago=1, num_samples=8)
    r = rank()
    idx = torch.arange(8)[r::2]
    saf.extra_terms(_module(0), {"logits": _logits(0, n=8)[idx], "index": idx}, step=0)
    return saf.logits.clone(), saf.stamp.clone()


def test_ddp_every_rank_records_the_global_batch(ddp):
    results = ddp.run(_ddp_record)
    single = SAF(epochs_ago=1, num_samples=8)
    single.extra_terms(_module(0), {"logits": _logits(0, n=8), "index": torch.arange(8)}, step=0)
    for table, stamp in results:
        torch.testing.assert_close(table, single.logits, rtol=0, atol=0)
        assert torch.equal(stamp, single.stamp)


def test_errors():
    with pytest.raises(ConfigurationError, match="`temperature` must be > 0.0, got 0.0"):
        SAF(temperature=0.0)
    with pytest.raises(ConfigurationError, match="`epochs_ago` must be an integer >= 1, got 0"):
        SAF(epochs_ago=0)
    with pytest.raises(ConfigurationError, match="`coefficient` must be >= 0.0, got -1.0"):
        SAF(coefficient=-1.0)
    with pytest.raises(ConfigurationError, match="`index` must be a non-empty string, got ''"):
        SAF(index="")
    with pytest.raises(ValueError, match="SAF needs `index` in compute_loss"):
        SAF(num_samples=2).extra_terms(_module(0), {"logits": torch.zeros(2, 3)}, step=0)
    with pytest.raises(ConfigurationError, match="SAF needs `num_samples`"):
        SAF().extra_terms(_module(0), {"logits": torch.zeros(2, 3), "index": torch.arange(2)}, step=0)
    assert isinstance(ll.build_callbacks({"saf": {"coefficient": 0.3}})[0], SAF)
