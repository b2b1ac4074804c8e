r"""STORM-style self-taught meta loss rescaling for noisy labels (Heck et al., *Learning from Noisy Labels via
Self-Taught On-the-Fly Meta Loss Rescaling*, AAAI 2025; arXiv 2412.12955).

The paper: a small rescaler network :math:`\Omega_\omega` maps per-sample features taken from the model being trained
(losses, confidences, possibly over several forward passes) to loss weights; the model trains on
:math:`\sum_i \Omega_\omega(F_i)\,\ell_i`, and :math:`\Omega` is meta-learned through a one-step look-ahead on
"validation" batches that are sampled **from the noisy training data itself, by the rescaler** (no clean data).

Here (a single-step, closed-form approximation, stated as such): the validation batch is the global batch itself,
rescaled by :math:`\Omega` (self-taught), and the meta objective is the paper's rescaled validation loss at the
look-ahead, :math:`\sum_j \hat w_j\,\ell_j(\theta')` with :math:`\hat w = \Omega / \sum_k \Omega_k`,
differentiated directly ("outer") and through :math:`\theta'` ("meta"), the latter to first order on the **last
linear layer**, where per-sample gradients are exact and cheap: :math:`\nabla_{W,b}\,\ell_i = r_i \otimes (h_i, 1)`
with :math:`r_i = \mathrm{softmax}(z_i) - e_{y_i}` and :math:`h_i` the penultimate features (``embeddings``;
without them the bias only). With :math:`\theta' = \theta - \alpha \sum_i \hat w_i \nabla \ell_i`:

.. math::
    J(\omega) = \sum_j \hat w_j \ell_j - \alpha \sum_{i \ne j} \hat w_i \hat w_j\, G_{ij}, \qquad
    G_{ij} = (r_i^\top r_j)(h_i^\top h_j + 1),

(with ``per_class``, the default, :math:`\hat w_i = \frac{n_{y_i}}{N}\,\Omega_i / \sum_{k: y_k = y_i}\Omega_k`)

and :math:`\omega \leftarrow \omega - \eta\,\nabla_\omega J` (plain SGD; the diagonal :math:`i = j` is left out, as
a separately drawn validation batch would). The first term moves weight to samples the model fits (the small-loss
prior), the second to samples whose last-layer gradients agree with the rest of the rescaled batch. Features
:math:`F_i = (\ell_i, p_{i,y_i}, \max_c p_{ic}, H(p_i)/\log C)`; :math:`\Omega` is an MLP ``4 -> hidden -> 1``
(ReLU, sigmoid output) initialised from ``seed`` (identical on every rank). The weights of a step are
:math:`w_i = N \hat w_i` (mean 1 over the global batch) with the current :math:`\omega`; the meta step follows (the
paper's algorithm: inner step, then outer step), once per optimizer step (micro-batches' meta-gradients are summed;
pairs across micro-batches are not formed). Cost: an :math:`N \times N` alignment over the global batch,
:math:`O(N^2 (C + D))`. Everything after the sync point is computed from the gathered batch, so every rank holds
the same :math:`\omega` and k ranks equal one process on the concatenated batch.
"""

from __future__ import annotations

import math

import torch

from lightning_losses._validation import check_bool, check_int, check_number
from lightning_losses.reweighting.base import REWEIGHTERS, Reweighter

__all__ = ["STORM", "storm_alignment", "storm_features", "storm_rescaler"]

_FEATURES = 4


def storm_features(losses: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    r"""``[N, 4]`` float64 features :math:`(\ell_i, p_{i,y_i}, \max_c p_{ic}, H(p_i)/\log C)` (``C >= 2``)."""
    p = torch.softmax(logits.detach().to(torch.float64), dim=-1)
    p_y = p.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum(-1) / math.log(p.shape[-1])
    return torch.stack([losses.detach().to(torch.float64), p_y, p.amax(-1), entropy], dim=-1)


def storm_rescaler(omega: torch.Tensor, features: torch.Tensor, hidden: int) -> torch.Tensor:
    r""":math:`\Omega_\omega(F) = \sigma(w_2^\top \mathrm{ReLU}(W_1 F + b_1) + b_2)` from the flat parameters
    ``omega`` (``W_1 [hidden, 4]``, ``b_1``, ``w_2``, ``b_2``, in that order)."""
    d = features.shape[-1]
    w1 = omega[: hidden * d].view(hidden, d)
    b1 = omega[hidden * d : hidden * (d + 1)]
    w2 = omega[hidden * (d + 1) : hidden * (d + 2)]
    return torch.sigmoid(torch.relu(features @ w1.T + b1) @ w2 + omega[-1])


def storm_alignment(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, embeddings: torch.Tensor | None = None
) -> torch.Tensor:
    r"""``[N, N]`` float64 last-layer gradient alignments :math:`(r_i^\top r_j)(h_i^\top h_j + 1)`, zero on the
    diagonal and on invalid rows / columns (:math:`h_i^\top h_j = 0` without ``embeddings``)."""
    z = logits.detach().to(torch.float64)
    r = torch.softmax(z, dim=-1) - torch.nn.functional.one_hot(target.clamp_min(0), z.shape[-1]).to(z.dtype)
    r = torch.where(valid[:, None], r, torch.zeros_like(r))  # masked (e.g. non-finite) rows: no NaN spreads
    k = r @ r.T
    if embeddings is not None:
        h = embeddings.detach().to(torch.float64).reshape(embeddings.shape[0], -1)
        h = torch.where(valid[:, None], h, torch.zeros_like(h))
        k = k * (h @ h.T + 1.0)
    keep = valid[:, None] & valid[None, :] & ~torch.eye(k.shape[0], dtype=torch.bool, device=k.device)
    return torch.where(keep, k, torch.zeros_like(k))


@REWEIGHTERS.register("storm", aliases=("meta_loss_rescaling",))
class STORM(Reweighter):
    r"""Self-taught on-the-fly meta loss rescaling (Heck et al., AAAI 2025), last-layer first-order approximation.

    See the module docstring for the formula and how it departs from the paper (the authors meta-learn through a
    full one-step look-ahead of the model on separately sampled batches; their rescaler features and sizes were not
    verified here). Inputs: ``losses``, ``logits [N, C]``, ``target [N]``; optional ``embeddings [N, D]`` (the
    penultimate features feeding the last linear layer: the weight part of the alignment).

    Args:
        meta_lr: :math:`\eta`, step size of the rescaler's SGD meta step. Default 0.1.
        lookahead_lr: :math:`\alpha`, the model step of the look-ahead: how much the gradient-agreement term counts
            against the rescaled loss. Default 10.0 (chosen on the noisy digits demo, see the README row).
        per_class: normalise :math:`\hat w` within each label's samples of the global batch, scaled by the label's
            share (a class keeps its weight mass; weights move only between samples of one label). Default True:
            without it the small-loss pressure of the first term collapsed the noisy digits demo onto one class in 2
            of 3 seeds (this library's guard, not the paper's).
        hidden: hidden width of :math:`\Omega`. Default 16.
        seed: seed of :math:`\Omega`'s initialisation (identical on every rank). Default 0.

    Example:
        >>> r = STORM(seed=0)
        >>> w = r(losses=torch.tensor([0.1, 2.0, 0.2]), logits=torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]]),
        ...       target=torch.tensor([0, 1, 1]))
        >>> w.shape, round(float(w.mean()), 6)
        (torch.Size([3]), 1.0)
    """

    requires = ("logits", "target")
    #: inputs used when given (the demo model passes its penultimate features when a reweighter lists them)
    optional_inputs = ("embeddings",)

    def __init__(
        self, meta_lr: float = 0.1, lookahead_lr: float = 10.0, per_class: bool = True, hidden: int = 16, seed: int = 0
    ) -> None:
        super().__init__()
        self.per_class = check_bool("per_class", per_class)
        self.meta_lr = check_number("meta_lr", meta_lr, low=0.0)
        self.lookahead_lr = check_number("lookahead_lr", lookahead_lr, low=0.0)
        self.hidden = check_int("hidden", hidden, low=1)
        self.seed = check_int("seed", seed, low=0)
        self.hparams = self.capture_hparams(locals())
        g = torch.Generator().manual_seed(self.seed)
        size = self.hidden * (_FEATURES + 2) + 1
        omega = torch.randn(size, generator=g, dtype=torch.float64) / math.sqrt(_FEATURES)
        omega[self.hidden * _FEATURES : self.hidden * (_FEATURES + 1)] = 0.0  # b1
        omega[-1] = 0.0  # b2: Omega = sigmoid(w2 . relu(...)) around 0.5 at the start
        self.add_state("omega", omega)
        self.add_state("meta_grad", torch.zeros(size, dtype=torch.float64))  # summed over the step's micro-batches
        self.statistics.update(losses="cat", logits="cat", target="cat", embeddings="cat")

    def local_statistics(self, losses, inputs):
        logits = inputs["logits"]
        if logits.ndim != 2 or logits.shape[-1] < 2:
            raise ValueError(f"`storm` needs `logits` of shape [N, C] with C >= 2, got {list(logits.shape)}")
        stats = {"losses": losses, "logits": logits.detach(), "target": inputs["target"]}
        if inputs.get("embeddings") is not None:  # every rank passes it or none does (the same compute_loss call)
            stats["embeddings"] = inputs["embeddings"].detach().reshape(losses.shape[0], -1)
        return stats

    def compute(self, losses, synced, inputs):
        valid = synced.get("sample_mask")
        target = synced["target"].long()
        valid = (target >= 0) if valid is None else valid & (target >= 0)
        valid = valid & torch.isfinite(synced["logits"]).all(-1)  # a NaN / inf output takes no part (weight 0)
        if synced.get("embeddings") is not None:
            valid = valid & torch.isfinite(synced["embeddings"]).all(-1)
        features = storm_features(synced["losses"], synced["logits"], target)
        features = torch.where(valid[:, None], features, torch.zeros_like(features))  # masked rows: finite zeros
        omega = self.omega.detach().requires_grad_(True)
        align = storm_alignment(synced["logits"], target, valid, synced.get("embeddings"))
        clean_losses = torch.where(valid, synced["losses"].to(torch.float64), torch.zeros_like(features[:, 0]))
        with torch.enable_grad():
            scale = storm_rescaler(omega, features, self.hidden)
            scale = torch.where(valid, scale, torch.zeros_like(scale))
            share = self._share(scale, target, valid, synced["logits"].shape[-1])
            objective = (share * clean_losses).sum() - self.lookahead_lr * (share @ align @ share)
            (grad,) = torch.autograd.grad(objective, omega)
        self.meta_grad = self.meta_grad + grad
        self.stage(omega=self.omega - self.meta_lr * self.meta_grad, meta_grad=torch.zeros_like(self.meta_grad))
        weights = share.detach() * valid.sum()
        return weights[self.local_slice].to(losses.dtype)

    def _share(self, scale: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, classes: int) -> torch.Tensor:
        r""":math:`\hat w` (sums to 1 over the valid samples): ``Omega / sum Omega``, or with ``per_class`` within
        each label's samples, scaled by the label's share of the batch."""
        if not self.per_class:
            return scale / scale.sum().clamp_min(1e-300)
        label = target.clamp_min(0)
        mass = torch.zeros(classes, dtype=scale.dtype, device=scale.device).index_add(0, label, scale)
        count = torch.zeros(classes, dtype=scale.dtype, device=scale.device).index_add(0, label, valid.to(scale.dtype))
        return scale / mass[label].clamp_min(1e-300) * count[label] / count.sum().clamp_min(1.0)

    def log_values(self):
        return {"rescaler_norm": self.omega.norm()}
