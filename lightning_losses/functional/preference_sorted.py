r"""AOT: alignment via optimal transport (Melnyk et al., NeurIPS 2024), TRL's ``"aot"`` and ``"aot_unpaired"``.

AOT makes the distribution of chosen rewards dominate that of rejected rewards (first-order stochastic dominance) by
comparing **sorted** batch values: the i-th smallest of one against the i-th smallest of the other,

.. math:: d_i = \mathrm{sort}(a)_i - \mathrm{sort}(b)_i,\qquad
    \ell_i = -(1-\varepsilon)\log\sigma(\beta d_i) - \varepsilon\log\sigma(-\beta d_i)

with ``a = log π(y_w) − log π(y_l)``, ``b`` the same under the reference (``aot``, paired) or ``a = r_w``, ``b = r_l``
(``aot_unpaired``). Row ``i`` of the output is the ``i``-th **quantile** term, not pair ``i``: the pairing is lost by
the sort, so per-sample weights of a reweighter do not apply to it (TRL likewise refuses WPO weights with AOT).

Distributed: the sort runs over the **global** batch (values are gathered over the data-parallel group, with
gradients), and each rank returns its share of the quantile terms (positions ``[offset, offset + n)`` of the global
order), so the summed loss and the gradients of k ranks equal one process on the concatenated batch. TRL sorts per
rank, so its quantiles depend on the number of processes.
"""

from __future__ import annotations

import torch

from lightning_losses.distributed import all_gather_rows
from lightning_losses.functional.preference_pairwise import check_sequence_logps, smoothed_logistic

__all__ = ["aot", "aot_unpaired"]


def _sorted_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """This rank's rows of ``sort(a) − sort(b)`` over the global batch (no gather in one process)."""
    gathered, mine = all_gather_rows(torch.stack([a, b], dim=1))
    gap = torch.sort(gathered[:, 0]).values - torch.sort(gathered[:, 1]).values
    return gap if mine is None else gap[mine]


def aot(c, r, rc, rr, *, beta: float = 0.1, label_smoothing: float = 0.0) -> torch.Tensor:
    r"""Paired AOT: ``d = sort(log π(y_w) − log π(y_l)) − sort(log π_ref(y_w) − log π_ref(y_l))`` (TRL ``"aot"``).

    Example:
        >>> c, r = torch.tensor([-1.0, -4.0]), torch.tensor([-3.0, -2.0])
        >>> aot(c, r, r, c, beta=1.0).round(decimals=4)  # sorted gaps: (-2 - -2, 2 - 2) = (0, 0)
        tensor([0.6931, 0.6931])
    """
    c, r, rc, rr = check_sequence_logps(chosen_logps=c, rejected_logps=r, ref_chosen_logps=rc, ref_rejected_logps=rr)
    d = _sorted_gap(c - r, (rc - rr).detach())
    return smoothed_logistic(beta * d, label_smoothing)


def aot_unpaired(c, r, rc, rr, *, beta: float = 0.1, label_smoothing: float = 0.0) -> torch.Tensor:
    r"""Unpaired AOT: ``d = sort(r_w) − sort(r_l)`` with ``r = log π − log π_ref`` (TRL ``"aot_unpaired"``, formerly
    ``"aot_pair"``).

    Example:
        >>> x = torch.tensor([-1.0, -2.0])
        >>> aot_unpaired(x, x, x, x).round(decimals=4)
        tensor([0.6931, 0.6931])
    """
    c, r, rc, rr = check_sequence_logps(chosen_logps=c, rejected_logps=r, ref_chosen_logps=rc, ref_rejected_logps=rr)
    d = _sorted_gap(c - rc.detach(), r - rr.detach())
    return smoothed_logistic(beta * d, label_smoothing)
