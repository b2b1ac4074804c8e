r"""Per-class normalised gradients (Francazi, Baity-Jesi, Lucchi, *A Theoretical Analysis of the Learning Dynamics
under Class Imbalance*, ICML 2023) as class weights.

PCNGD steps along :math:`\sum_c \nabla L_c / \lVert \nabla L_c \rVert` (each class's loss gradient normalised, so that
no class's gradient is drowned by another's); on mini-batches (PCNSGD) the per-class gradients are those of the batch.
Weighting sample :math:`i` by :math:`u_{y_i} = 1 / \lVert \nabla S_{y_i} \rVert` (:math:`S_c` the sum of class
:math:`c`'s losses, norms treated as constants) gives exactly that direction, since
:math:`\nabla \sum_i u_{y_i} \ell_i = \sum_c \nabla S_c / \lVert \nabla S_c \rVert`.

Which gradient: the reweighter sees outputs, not parameters, so the norm is the one of the **output layer**, in
closed form for the softmax cross entropy (:math:`\partial \ell_i / \partial z_i = p_i - e_{y_i}`):

* with ``features`` (the input :math:`h_i` of the last linear layer, passed to ``compute_loss``): the gradient with
  respect to its weight and bias, :math:`G_c = \sum_{i: y_i = c} (p_i - e_{y_i}) [h_i, 1]^\top`, norm
  :math:`\lVert G_c \rVert_F`;
* without: the gradient with respect to the output bias, :math:`\sum_{i: y_i = c} (p_i - e_{y_i})`.

The paper's normalisation uses the gradient over all parameters (C backward passes); the output layer's is its
cheap stand-in (exact for a linear model or a linear probe with ``features``). The per-class sums are summed over
ranks at the sync point (:math:`C \cdot C \cdot (D + 1)` float64 values per step: meant for few classes, as the paper's
experiments), so every rank gets the weights of one process on the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation import check_number
from lightning_losses.errors import ConfigurationError
from lightning_losses.reweighting.base import REWEIGHTERS, Reweighter

__all__ = ["PerClassNormalized"]


@REWEIGHTERS.register("per_class_normalized", aliases=("per_class_normalised", "pcngd", "pcnsgd"))
class PerClassNormalized(Reweighter):
    r"""Per-class normalised gradients (PCNGD / PCNSGD; Francazi, Baity-Jesi, Lucchi, ICML 2023).

    Sample :math:`i` gets :math:`w_i \propto 1 / \lVert G_{y_i} \rVert` with :math:`G_c` class :math:`c`'s output-layer
    cross-entropy gradient over the global batch (see the module docstring), normalised to mean 1 over the global
    batch. The step's **direction** is PCNGD's :math:`\sum_c \hat g_c` (:math:`\hat g_c` the unit class gradients);
    the objective's weighted mean sets its **length** to :math:`\lVert \sum_c \hat g_c \rVert \cdot H / C` with
    :math:`H` the harmonic mean of the per-class mean-loss gradient norms (multiply the learning rate by :math:`C / H`
    for the paper's fixed-length step). The weights are computed from ``logits`` for the softmax cross entropy, the
    paper's loss, whatever the objective's terms. Stateless: each global batch is normalised on its own; under
    gradient accumulation each micro-batch (over all ranks) is, so the step is the mean of the micro-batches' PCNSGD
    directions, not PCNSGD on one batch ``k`` times larger.

    Args:
        features: name of the ``compute_loss`` input holding the last linear layer's inputs ``[N, D]`` (e.g.
            ``"embeddings"``), or ``None`` for the output bias's gradient. Default ``None``.
        eps: floor of a class's gradient norm (a class fitted exactly would get an infinite weight). Default 1e-12.

    Example:
        >>> r = PerClassNormalized()
        >>> logits, target = torch.zeros(3, 2), torch.tensor([0, 0, 1])
        >>> r(losses=torch.zeros(3), logits=logits, target=target)
        tensor([0.7500, 0.7500, 1.5000])
    """

    requires = ("logits", "target")

    def __init__(self, features: str | None = None, eps: float = 1e-12) -> None:
        super().__init__()
        if features is not None and (not isinstance(features, str) or not features):
            raise ConfigurationError(
                f"`features` must be the name of a compute_loss input (e.g. 'embeddings') or None, got {features!r}"
            )
        self.features = features
        self.eps = check_number("eps", eps, low=0.0, low_open=True)
        self.hparams = self.capture_hparams(locals())
        self.statistics.update(class_grad="sum", class_count="sum")
        if features is not None:
            self.requires = ("logits", "target", features)
        self._class_weights = torch.zeros(0, dtype=torch.float64)

    def id_sizes(self, inputs):
        return {"target": ("logits", int(inputs["logits"].shape[-1]))}

    def local_statistics(self, losses, inputs):
        logits, target, mask = inputs["logits"], inputs["target"], inputs["sample_mask"]
        n = losses.shape[0]
        if logits.ndim != 2 or logits.shape[0] != n:
            raise ValueError(
                f"reweighter `{self.strategy}`: `logits` must have shape [{n}, C], got {list(logits.shape)}"
            )
        num_classes = logits.shape[1]
        valid = (target >= 0) & (target < num_classes)
        valid = valid if mask is None else valid & mask
        label = target.masked_fill(~valid, 0)
        onehot = F.one_hot(label, num_classes).to(torch.float64) * valid.unsqueeze(1)
        grad = logits.detach().to(torch.float64).softmax(-1) - onehot  # d CE / d z, zero rows for left-out samples
        grad = torch.where(valid.unsqueeze(1), grad, torch.zeros_like(grad))  # `where`: a NaN row must not spread
        ones = torch.ones(n, 1, dtype=torch.float64, device=logits.device)
        if self.features is None:
            inputs_ = ones
        else:
            feats = inputs[self.features]
            if not isinstance(feats, torch.Tensor) or feats.ndim != 2 or feats.shape[0] != n:
                got = list(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
                raise ValueError(f"reweighter `{self.strategy}`: `{self.features}` must have shape [{n}, D], got {got}")
            inputs_ = torch.cat([feats.detach().to(torch.float64), ones], 1)
            inputs_ = torch.where(valid.unsqueeze(1), inputs_, torch.zeros_like(inputs_))
        # G[c] = sum over class-c samples of grad_i (outer) [h_i, 1], without an [N, C, C, D] intermediate
        by_class = (onehot.unsqueeze(2) * grad.unsqueeze(1)).reshape(n, num_classes * num_classes)
        class_grad = (by_class.T @ inputs_).reshape(num_classes, num_classes, inputs_.shape[1])
        return {"class_grad": class_grad, "class_count": onehot.sum(0)}

    def compute(self, losses, synced, inputs):
        count = synced["class_count"]
        norm = synced["class_grad"].flatten(1).norm(dim=1)
        inverse = torch.where(count > 0, 1.0 / norm.clamp_min(self.eps), torch.zeros_like(norm))
        scale = count.sum() / (count * inverse).sum().clamp_min(torch.finfo(torch.float64).tiny)
        self._class_weights = inverse * scale
        return self._class_weights[self.masked_ids(inputs["target"], inputs)].to(losses.dtype)

    def class_weights(self) -> torch.Tensor:
        """The ``[C]`` class weights of the last step (empty before the first)."""
        return self._class_weights

    def log_values(self):
        return {"class_weight": self._class_weights}

    def _extra_snapshot(self):
        return {"_class_weights": self._class_weights}  # a skipped micro-batch's must not show in the logs
