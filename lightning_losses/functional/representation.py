r"""Representation entropy of embeddings over the **global** batch (pure function): von Neumann entropy (VNE)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import require_tensor, shape_str
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.distributed import all_reduce_sum_with_grad, global_sum

__all__ = ["von_neumann_entropy", "vne"]


def von_neumann_entropy(embeddings: torch.Tensor, *, sync: bool = True) -> torch.Tensor:
    r"""Von Neumann entropy of the embeddings' autocorrelation (Kim et al., *VNE: An Effective Method for Improving
    Deep Representation by Manipulating Eigenvalue Distribution*, CVPR 2023).

    Rows are L2-normalised, :math:`C = \frac1N\sum_i \hat z_i \hat z_i^\top` (trace 1, a density matrix) and
    :math:`S = -\sum_j \lambda_j \log\lambda_j` over its eigenvalues (:math:`0\log 0 = 0`). :math:`S` ranges from 0
    (all embeddings on one direction) to :math:`\log D` (isotropic). With ``sync`` under DDP, :math:`C` is summed over
    the data-parallel ranks with gradients (one all-reduce of ``[D, D]``) and divided by the global ``N``, so every rank
    gets the entropy of the global batch and the gradients equal one process. The authors take the eigenvalues as the
    squared singular values of :math:`\hat Z/\sqrt N`; here :func:`torch.linalg.eigvalsh` of the (gathered) ``C``, the
    same values; computed in float32 at least.

    Example:
        >>> von_neumann_entropy(torch.eye(4)).round(decimals=4)  # isotropic: log 4
        tensor(1.3863)
    """
    require_tensor("embeddings", embeddings)
    if embeddings.ndim != 2 or not embeddings.is_floating_point():
        raise ValueError(
            f"`embeddings` must be a floating tensor of shape [N, D], got {embeddings.dtype} {shape_str(embeddings)}"
        )
    z = F.normalize(_upcast(embeddings), dim=-1)
    gram = z.T @ z
    count = torch.tensor(float(z.shape[0]), dtype=z.dtype, device=z.device)
    if sync:
        gram, count = all_reduce_sum_with_grad(gram), global_sum(count)
    lam = torch.linalg.eigvalsh(gram / count.clamp_min(1.0)).clamp_min(0.0)
    return -torch.xlogy(lam, lam).sum()


def vne(embeddings: torch.Tensor, *, sync: bool = True) -> torch.Tensor:
    r"""VNE regulariser :math:`-S` (batch-level scalar): minimising it **raises** the representation entropy; a
    negative coefficient (the paper's :math:`\alpha < 0`) lowers it. See :func:`von_neumann_entropy`.

    Example:
        >>> vne(torch.tensor([[1.0, 0.0], [2.0, 0.0]]))  # one direction: entropy 0
        tensor(0.)
    """
    return -von_neumann_entropy(embeddings, sync=sync)
