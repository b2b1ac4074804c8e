"""``lightning_losses._deferred``: kept per-step statistics folded together equal the per-step folds."""

import torch

from lightning_losses._deferred import FOLD_EVERY, Deferred
from lightning_losses.entropy.window import merge_window, window_statistics
from lightning_losses.reweighting.metrics import GroupAccuracy


def _steps(seed=0, n=6):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        size = 3 + i
        logits = torch.randn(size, 4, generator=g, dtype=torch.float64)
        target = torch.randint(0, 4, (size,), generator=g)
        group = torch.randint(0, 3, (size,), generator=g)
        losses = torch.rand(size, generator=g, dtype=torch.float64)
        mask = None if i % 3 == 0 else torch.rand(size, generator=g) > 0.3  # layouts change between steps
        out.append((logits, target, group, losses, mask))
    return out


def test_a_deferred_group_metric_equals_per_step_updates():
    direct, deferred = GroupAccuracy(3), GroupAccuracy(3)
    kept = Deferred(lambda z, y, g, loss, mask: deferred.update(z, y, g, loss, mask=mask))
    for z, y, g, loss, mask in _steps():
        direct.update(z, y, g, loss, mask=mask)
        kept.add(z, y, g, loss, mask)
    assert len(kept) == 6
    kept.flush()
    assert len(kept) == 0
    want, got = direct.compute(), deferred.compute()
    for key in want:
        torch.testing.assert_close(got[key], want[key], rtol=1e-12, atol=0)


def test_a_deferred_entropy_window_equals_per_step_windows_and_truncate_forgets_a_step():
    window = [None]

    def fold(h, mask, logits, target):
        window[0] = merge_window(window[0], window_statistics(h, mask, logits, target, True))

    kept, direct = Deferred(fold), None
    for i, (z, y, _, _, mask) in enumerate(_steps(seed=1)):
        h = torch.special.entr(z.softmax(-1)).sum(-1)
        h[0] = float("nan") if i == 2 else h[0]  # counted apart, left out
        kept.add(h, mask, z, y)
        if i == 4:  # a skipped step: forgotten, never folded
            kept.truncate(len(kept) - 1)
            continue
        direct = merge_window(direct, window_statistics(h, mask, z, y, True))
    kept.flush()
    torch.testing.assert_close(window[0], direct, rtol=1e-12, atol=0)


def test_full_after_fold_every_steps_and_one_call_per_layout_run():
    calls = []
    kept = Deferred(lambda x, m: calls.append((x.numel(), m is None)))
    for i in range(FOLD_EVERY):
        assert not kept.full()
        kept.add(torch.ones(2), None if i < FOLD_EVERY // 2 else torch.ones(2, dtype=torch.bool))
    assert kept.full()
    kept.flush()
    assert calls == [(FOLD_EVERY, True), (FOLD_EVERY, False)]  # two layouts, each folded once, concatenated


def test_entries_concatenate_across_dtypes_and_split_where_trailing_shapes_differ():
    """One call for entries whose dtypes differ (promoted, as `torch.cat` does); a change of trailing shape starts a
    new call, in order; a lone entry is folded as it is."""
    calls = []
    kept = Deferred(lambda x, m: calls.append((x.dtype, tuple(x.shape), m)))
    kept.add(torch.ones(2, 3, dtype=torch.float16), None)
    kept.add(torch.ones(1, 3), None)
    kept.flush()
    assert calls == [(torch.float32, (3, 3), None)]
    calls.clear()
    for shape in ((2, 3), (1, 3), (2, 4)):
        kept.add(torch.ones(shape), None)
    kept.flush()
    assert calls == [(torch.float32, (3, 3), None), (torch.float32, (2, 4), None)]
    calls.clear()
    kept.add(torch.ones(5, 3, dtype=torch.float64), None)
    kept.flush()
    assert calls == [(torch.float64, (5, 3), None)]
