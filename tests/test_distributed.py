"""Distributed helpers and the global normalisation, checked in a real 2-process gloo group."""

import torch

from lightning_losses.distributed import all_gather_with_grad, global_sum, global_sum_values, rank, world_size
from lightning_losses.reduction import weighted_mean

# ---------------------------------------------------------------- functions run on every rank


def _collectives():
    r = rank()
    x = torch.tensor([1.0 + r, 10.0])
    summed = global_sum(x)
    values = global_sum_values(x)  # the same sum, read to the host; `x` itself unchanged
    assert values == summed.tolist() and x.tolist() == [1.0 + r, 10.0]
    # uneven sizes: rank 0 has 2 rows, rank 1 has 3
    local = torch.arange(2 + r, dtype=torch.float64).add(10 * r).requires_grad_(True)
    gathered = all_gather_with_grad(local)
    # a loss on the gathered batch; each rank backpropagates its share
    (gathered * torch.arange(1, gathered.numel() + 1, dtype=torch.float64)).sum().backward()
    return world_size(), summed, gathered.detach(), local.grad


def _weighted(per_rank_losses, per_rank_weights):
    r = rank()
    losses = per_rank_losses[r].clone().requires_grad_(True)
    loss, value, _ = weighted_mean(losses, per_rank_weights[r])
    loss.backward()
    return loss.detach(), value, losses.grad


# ---------------------------------------------------------------- tests


def test_collectives_two_ranks(ddp):
    results = ddp.run(_collectives)
    for ws, summed, gathered, _grad in results:
        assert ws == 2
        torch.testing.assert_close(summed, torch.tensor([3.0, 20.0]))
        torch.testing.assert_close(gathered, torch.tensor([0.0, 1.0, 10.0, 11.0, 12.0], dtype=torch.float64))
    # d/dx of sum_j x_j * (j+1), summed over the two ranks' identical losses = 2 * (j+1); rank 0 holds j = 0, 1
    torch.testing.assert_close(results[0][3], torch.tensor([2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(results[1][3], torch.tensor([6.0, 8.0, 10.0], dtype=torch.float64))


def test_weighted_mean_ddp_equals_concatenated_batch(ddp):
    g = torch.Generator().manual_seed(0)
    losses = [torch.rand(3, generator=g, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64)]
    weights = [torch.rand(3, generator=g, dtype=torch.float64), torch.rand(5, generator=g, dtype=torch.float64)]
    results = ddp.run(_weighted, losses, weights)
    all_l, all_w = torch.cat(losses), torch.cat(weights)
    expected = (all_w * all_l).sum() / all_w.sum()
    for _, value, _ in results:
        torch.testing.assert_close(value, expected)
    # DDP averages gradients over ranks: the averaged per-sample gradient equals the one-process gradient w / sum(w)
    grads = torch.cat([results[0][2], results[1][2]]) / 2
    torch.testing.assert_close(grads, all_w / all_w.sum())
    # the mean of the per-rank losses (what DDP's gradient average corresponds to) is the global weighted mean
    torch.testing.assert_close((results[0][0] + results[1][0]) / 2, expected)
