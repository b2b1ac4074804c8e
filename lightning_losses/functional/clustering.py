r"""Per-class two-means clustering for USEFUL (pure functions; deterministic, so every rank reaches the same split)."""

from __future__ import annotations

import torch

__all__ = ["slow_cluster", "two_means"]


def two_means(points: torch.Tensor, first: int, second: int, iterations: int = 100) -> torch.Tensor:
    r"""Lloyd's k-means with :math:`k = 2` on ``points [n, D]``, started from the rows ``first`` and ``second``
    (deterministic: no random restarts). Returns the boolean ``[n]`` assignment to the second centroid. Stops when
    the assignment repeats (at most ``iterations`` rounds); a cluster that empties keeps its centroid; a point
    equidistant from both goes to the first.

    Example:
        >>> two_means(torch.tensor([[0.0], [0.2], [5.0], [5.1]]), 0, 3)
        tensor([False, False,  True,  True])
    """
    x = points.to(torch.float64)
    centroids = torch.stack([x[first], x[second]])
    assign = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for step in range(iterations):
        dist = torch.cdist(x, centroids)
        new = dist[:, 1] < dist[:, 0]
        if step > 0 and torch.equal(new, assign):
            break
        assign = new
        for c, members in enumerate((~assign, assign)):
            if members.any():
                centroids[c] = x[members].mean(dim=0)
    return assign


def slow_cluster(
    outputs: torch.Tensor, target: torch.Tensor, losses: torch.Tensor, valid: torch.Tensor, iterations: int = 100
) -> torch.Tensor:
    r"""USEFUL's split (Nguyen et al., NeurIPS 2024): within every class, two-means on the outputs; the cluster with
    the higher mean loss is the slow-learnable one. Returns the boolean ``[n]`` membership of the slow clusters.

    Each class's clustering starts from its lowest- and highest-loss samples (first of equals), so the result is a
    function of the inputs alone. Samples with ``valid`` false take no part and are never chosen; a class with fewer
    than two valid samples, or whose two clusters have the same mean loss, has no slow cluster.

    Args:
        outputs: ``[n, D]`` per-sample outputs (logits or features).
        target: ``[n]`` integer classes.
        losses: ``[n]`` per-sample losses (the paper: the training loss at the separating epoch).
        valid: ``[n]`` boolean, the samples to cluster.
        iterations: at most this many Lloyd rounds per class.

    Example:
        >>> out, losses = torch.tensor([[3.0], [2.9], [0.1], [0.0]]), torch.tensor([0.1, 0.1, 2.0, 2.5])
        >>> slow_cluster(out, torch.zeros(4, dtype=torch.long), losses, torch.ones(4, dtype=torch.bool))
        tensor([False, False,  True,  True])
    """
    slow = torch.zeros(outputs.shape[0], dtype=torch.bool, device=outputs.device)
    loss64 = losses.to(torch.float64)
    for cls in torch.unique(target[valid]).tolist():  # a loop over classes, once per run
        members = torch.nonzero(valid & (target == cls)).flatten()
        if members.numel() < 2:
            continue
        member_loss = loss64[members]
        lo, hi = int(torch.argmin(member_loss)), int(torch.argmax(member_loss))
        if lo == hi:
            continue
        second = two_means(outputs[members], lo, hi, iterations)
        if second.all() or not second.any():
            continue
        mean_first, mean_second = member_loss[~second].mean(), member_loss[second].mean()
        if mean_first == mean_second:
            continue
        slow[members] = second if mean_second > mean_first else ~second
    return slow
