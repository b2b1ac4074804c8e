r"""Preference and unlearning losses on **sequence** log-probabilities (pure functions, ``[N]`` per pair / sequence).

Inputs are summed token log-probabilities of whole responses, ``[N]`` each (one value per pair or per sequence):
``chosen_logps`` / ``rejected_logps`` under the policy and ``ref_chosen_logps`` / ``ref_rejected_logps`` under the
frozen reference model (compute those under ``torch.no_grad()``; they receive no gradient anyway). With

.. math::
    \Delta = \big(\log\pi_\theta(y_w) - \log\pi_{\mathrm{ref}}(y_w)\big)
           - \big(\log\pi_\theta(y_l) - \log\pi_{\mathrm{ref}}(y_l)\big)

every sigmoid loss is written with ``logsigmoid`` / ``softplus`` (never ``log(sigmoid(.))``), so values and gradients
stay finite for margins of any size (``|Δ|`` of 1e4 included). Half-precision inputs are upcast to float32.

Formulas were checked against the papers and TRL's implementation (read only; ``trl/trainer/dpo_trainer.py``,
``kto_trainer.py``, ``cpo_trainer.py``); each docstring says what matches and where this library differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lightning_losses._validation.tensors import as_index, not_ignored
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.distributed import global_sum

__all__ = [
    "check_sequence_logps",
    "dpo",
    "hdpo",
    "ipo",
    "kto",
    "kto_reference_kl",
    "npo",
    "preference_margin",
    "rdpo",
    "rpo",
    "simpo",
    "wpo_log_weights",
]


def check_sequence_logps(**tensors: torch.Tensor | None) -> list[torch.Tensor]:
    """Validate named ``[N]`` tensors of one shape (``None`` entries are skipped) and return them upcast.

    Lengths (names ending in ``_lengths``) may be integer tensors; everything else must be floating.

    Raises:
        TypeError: an input is not a tensor.
        ValueError: an input is not 1-D, not floating, or the shapes differ.
    """
    out: list[torch.Tensor] = []
    shape = None
    first = ""
    for name, t in tensors.items():
        if t is None:
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 1:
            raise ValueError(f"`{name}` must be a 1-D tensor [N] (one value per sequence), got shape {list(t.shape)}")
        if not name.endswith("_lengths") and not t.is_floating_point():
            raise ValueError(f"`{name}` must be a floating tensor, got {t.dtype}")
        if shape is None:
            shape, first = t.shape, name
        elif t.shape != shape:
            raise ValueError(f"`{name}` must have the shape of `{first}` {list(shape)}, got {list(t.shape)}")
        out.append(_upcast(t) if t.is_floating_point() else t)
    return out


def preference_margin(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    alpha: float = 1.0,
) -> torch.Tensor:
    r"""``Δ_α = (α·log π(y_w) − log π_ref(y_w)) − (α·log π(y_l) − log π_ref(y_l))``; ``α = 1`` is DPO's margin.

    Example:
        >>> preference_margin(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]))
        tensor([2.])
    """
    c, r, rc, rr = check_sequence_logps(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        ref_chosen_logps=ref_chosen_logps,
        ref_rejected_logps=ref_rejected_logps,
    )
    return (alpha * c - rc.detach()) - (alpha * r - rr.detach())


def _smoothed_logistic(z: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    loss = -F.logsigmoid(z)
    if label_smoothing:
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-z)
    return loss


def dpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    r"""DPO (Rafailov et al., NeurIPS 2023), conservative DPO when ``label_smoothing = ε > 0``.

    .. math:: \ell = -(1-\varepsilon)\log\sigma(\beta\Delta) - \varepsilon\log\sigma(-\beta\Delta)

    Matches TRL's ``loss_type="sigmoid"`` with ``label_smoothing`` (cDPO, Mitchell 2023). ``ε`` is a confidence limit
    (the loss is minimised at a finite margin), not a de-biasing; for that use :func:`rdpo`.

    Example:
        >>> x = torch.tensor([-1.0, -2.0])
        >>> dpo(x, x, x, x).round(decimals=4)  # zero margin: log 2
        tensor([0.6931, 0.6931])
    """
    delta = preference_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _smoothed_logistic(beta * delta, label_smoothing)


def rdpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    eps: float = 0.1,
) -> torch.Tensor:
    r"""Robust DPO (Chowdhury, Kini, Natarajan, ICML 2024): DPO de-biased for preference flips at rate ``ε < 1/2``.

    .. math:: \ell = \frac{(1-\varepsilon)\,\ell_{\mathrm{DPO}}(\Delta) - \varepsilon\,\ell_{\mathrm{DPO}}(-\Delta)}
        {1 - 2\varepsilon},\qquad \ell_{\mathrm{DPO}}(\Delta) = -\log\sigma(\beta\Delta)

    An unbiased estimate of the clean-label DPO loss (it can be negative). Matches TRL's ``loss_type="robust"`` with
    ``label_smoothing = ε``. ``ε = 0`` is DPO.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> rdpo(x, x, x, x, eps=0.2).round(decimals=4)  # zero margin: log 2 as well
        tensor([0.6931])
    """
    delta = preference_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * delta
    return ((1.0 - eps) * -F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1.0 - 2.0 * eps)


def ipo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
) -> torch.Tensor:
    r"""IPO (Azar et al., AISTATS 2024, Eq. 17): :math:`\ell = (\Delta - \tfrac{1}{2\beta})^2` (``β`` is the paper's τ).

    TRL's ``loss_type="ipo"`` applies it to **length-averaged** log-probs; pass ``logps / lengths`` to match that.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> ipo(x, x, x, x, beta=0.5)
        tensor([1.])
    """
    delta = preference_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (delta - 1.0 / (2.0 * beta)).square()


def hdpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float = 0.1,
    alpha: float = 0.95,
) -> torch.Tensor:
    r"""H-DPO, entropy-controllable DPO (Omura, Fujita, Kataoka, 2024, arXiv:2411.07595).

    Replacing the reverse KL :math:`-H(\pi) + H(\pi,\pi_{\mathrm{ref}})` of the RLHF objective by
    :math:`-\alpha H(\pi) + H(\pi, \pi_{\mathrm{ref}})` gives the optimum
    :math:`\pi^* \propto (\pi_{\mathrm{ref}} e^{r/\beta})^{1/\alpha}`, hence

    .. math:: \ell = -\log\sigma\big(\beta[\alpha\log\pi_\theta(y_w) - \log\pi_{\mathrm{ref}}(y_w)]
        - \beta[\alpha\log\pi_\theta(y_l) - \log\pi_{\mathrm{ref}}(y_l)]\big)

    ``α < 1`` lowers the entropy of the fitted policy (sharper, mode-seeking); ``α = 1`` is DPO (tested). The formula is
    re-derived here from the objective stated in the paper's abstract and the method notes; the default ``α = 0.95`` is
    a mild sharpening, not a value verified against the paper's tables.

    Example:
        >>> x = torch.tensor([-1.0])
        >>> hdpo(x, x, x, x, alpha=1.0).round(decimals=4)
        tensor([0.6931])
    """
    delta = preference_margin(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, alpha=alpha)
    return -F.logsigmoid(beta * delta)


def _nll(chosen_logps: torch.Tensor, chosen_lengths: torch.Tensor | None, reduction: str) -> torch.Tensor:
    if reduction == "sum":
        return -chosen_logps
    if chosen_lengths is None:
        raise ValueError(
            "`chosen_lengths` [N] (number of response tokens of each chosen answer) is required for the "
            "length-averaged SFT term (sft_reduction='mean'); pass it or use sft_reduction='sum'"
        )
    return -chosen_logps / chosen_lengths.to(chosen_logps.dtype).clamp_min(1.0)


def rpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor | None = None,
    *,
    beta: float = 0.1,
    alpha: float = 1.0,
    sft_reduction: str = "mean",
) -> torch.Tensor:
    r"""RPO: DPO plus an SFT term on the chosen answer (Liu et al., *Provably Mitigating Overoptimization in RLHF: Your
    SFT Loss is Implicitly an Adversarial Regularizer*, NeurIPS 2024).

    .. math:: \ell = \ell_{\mathrm{DPO}} + \alpha\,\mathrm{NLL}(y_w),\qquad
        \mathrm{NLL}(y_w) = -\log\pi_\theta(y_w\mid x)\,/\,|y_w| \ \text{(mean)}\ \text{or}\ -\log\pi_\theta(y_w\mid x)
        \ \text{(sum)}

    The NLL comes from ``chosen_logps`` (summed token log-probs) and ``chosen_lengths`` (valid token count of each
    chosen answer, required for ``sft_reduction="mean"``). TRL's ``rpo_alpha`` uses the token mean over the whole
    batch (one normaliser for all pairs); here the mean is per sequence, so that the loss stays per-sample (identical
    when all chosen answers have the same length). The authors' repository offers both sum and mean.

    Example:
        >>> x = torch.tensor([-4.0])
        >>> rpo(x, x, x, x, torch.tensor([2]), alpha=1.0).round(decimals=4)  # log 2 + 4/2
        tensor([2.6931])
    """
    (lengths,) = check_sequence_logps(chosen_lengths=chosen_lengths) or (None,)
    if lengths is not None and lengths.shape != chosen_logps.shape:
        raise ValueError(f"`chosen_lengths` must have shape {list(chosen_logps.shape)}, got {list(lengths.shape)}")
    loss = dpo(chosen_logps, rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=beta)
    return loss + alpha * _nll(_upcast(chosen_logps), lengths, sft_reduction)


def simpo(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    chosen_lengths: torch.Tensor,
    rejected_lengths: torch.Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 1.0,
) -> torch.Tensor:
    r"""SimPO (Meng, Xia, Chen, NeurIPS 2024): reference-free, length-normalised, with a target margin ``γ``.

    .. math:: \ell = -\log\sigma\Big(\frac{\beta}{|y_w|}\log\pi_\theta(y_w) - \frac{\beta}{|y_l|}\log\pi_\theta(y_l)
        - \gamma\Big)

    ``*_logps`` are summed token log-probs and ``*_lengths`` the valid token counts (pass ones if your log-probs are
    already averages). Matches TRL's CPO ``loss_type="simpo"`` (which writes ``β(Δ̄ − γ/β)``) and the authors'
    ``gamma_beta_ratio`` form. Defaults ``β = 2``, ``γ = 1`` (the authors' β = 2 with ``γ/β = 0.5``).

    Example:
        >>> simpo(torch.tensor([-2.0]), torch.tensor([-6.0]), torch.tensor([2]), torch.tensor([3]), beta=1.0, gamma=1.0)
        tensor([0.6931])
    """
    c, r, lc, lr = check_sequence_logps(
        chosen_logps=chosen_logps,
        rejected_logps=rejected_logps,
        chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
    )
    margin = c / lc.to(c.dtype).clamp_min(1.0) - r / lr.to(r.dtype).clamp_min(1.0)
    return -F.logsigmoid(beta * margin - gamma)


def kto_reference_kl(kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    r"""KTO's reference point :math:`z_0 = \max(0, \widehat{\mathrm{KL}}(\pi_\theta\|\pi_{\mathrm{ref}}))`, detached.

    :math:`\widehat{\mathrm{KL}}` is the mean of ``kl_logps − ref_kl_logps`` over the **global** batch: the policy and
    reference log-probs of *mismatched* completions (the completion of another example paired with this prompt, as in
    the paper and TRL's KL dataset). Under DDP the sum and count are all-reduced in one collective, so every rank
    gets the same ``z_0`` (TRL averages per-process means instead; identical when ranks hold equally many pairs).

    Example:
        >>> kto_reference_kl(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0]))
        tensor(0.5000)
    """
    kl, ref = check_sequence_logps(kl_logps=kl_logps, ref_kl_logps=ref_kl_logps)
    diff = (kl - ref).detach()
    stats = global_sum(torch.stack([diff.sum(), diff.new_tensor(float(diff.numel()))]))
    return (stats[0] / stats[1].clamp_min(1.0)).clamp_min(0.0)


def kto(
    logps: torch.Tensor,
    ref_logps: torch.Tensor,
    target: torch.Tensor,
    z_ref: torch.Tensor | float,
    *,
    beta: float = 0.1,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    r"""KTO (Ethayarajh et al., ICML 2024) on unpaired binary feedback.

    With :math:`r = \log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y)` and the detached reference point ``z_ref``
    (see :func:`kto_reference_kl`):

    .. math:: \ell = \lambda_D\,\big(1 - \sigma(\beta(r - z))\big)\ \text{if desirable},\qquad
        \ell = \lambda_U\,\big(1 - \sigma(\beta(z - r))\big)\ \text{otherwise}

    i.e. :math:`\lambda_y - v(x, y)` of the paper (Eq. 7); matches TRL's ``loss_type="kto"``. ``target`` is 1 (or
    ``True``) for desirable completions and 0 for undesirable ones.

    Example:
        >>> kto(torch.tensor([-1.0, -1.0]), torch.tensor([-1.0, -1.0]), torch.tensor([1, 0]), 0.0)
        tensor([0.5000, 0.5000])
    """
    lp, ref = check_sequence_logps(logps=logps, ref_logps=ref_logps)
    if not isinstance(target, torch.Tensor) or target.shape != lp.shape or target.is_floating_point():
        got = f"{target.dtype} {list(target.shape)}" if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(
            f"`target` must be an integer or bool tensor of shape {list(lp.shape)} (1 = desirable), got {got}"
        )
    z = torch.as_tensor(z_ref, dtype=lp.dtype, device=lp.device).detach()
    r = lp - ref.detach()
    desirable = target.bool()
    return torch.where(
        desirable,
        desirable_weight * torch.sigmoid(-beta * (r - z)),
        undesirable_weight * torch.sigmoid(-beta * (z - r)),
    )


def npo(logps: torch.Tensor, ref_logps: torch.Tensor, *, beta: float = 0.1) -> torch.Tensor:
    r"""NPO, negative preference optimisation for unlearning (Zhang, Lin, Bai, Mei, 2024), on forget-set sequences.

    .. math:: \ell = \frac{2}{\beta}\log\Big(1 + \big(\tfrac{\pi_\theta(y)}{\pi_{\mathrm{ref}}(y)}\big)^\beta\Big)
        = \frac{2}{\beta}\,\mathrm{softplus}\big(\beta(\log\pi_\theta(y) - \log\pi_{\mathrm{ref}}(y))\big)

    Its gradient is that of gradient ascent on the NLL scaled by :math:`2\sigma(\beta r) \le 2`, which vanishes once
    the sequence is forgotten; ``β → 0`` recovers plain gradient ascent. Usually combined with a retain-set CE term.

    Example:
        >>> npo(torch.tensor([-3.0]), torch.tensor([-3.0]), beta=1.0).round(decimals=4)  # 2 log 2
        tensor([1.3863])
    """
    lp, ref = check_sequence_logps(logps=logps, ref_logps=ref_logps)
    return (2.0 / beta) * F.softplus(beta * (lp - ref.detach()))


def wpo_log_weights(
    logits: torch.Tensor, labels: torch.Tensor, *, ignore_index: int = -100, alignment: str = "sampled"
) -> torch.Tensor:
    r"""Per-sequence WPO log-weights (Zhou et al., *WPO*, EMNLP 2024, Eq. 2), detached.

    .. math:: \log w(x, y) = \frac{1}{|y|}\sum_t \Big(\log\pi_\theta(y_t\mid\cdot) - \log Z_t\Big),\quad
        \log Z_t = \log\sum_v \pi_\theta(v\mid\cdot)^2\ (\text{"sampled"}),\ \max_v\log\pi_\theta(v\mid\cdot)\
        (\text{"greedy"}),\ 0\ (\text{"none"})

    ``"sampled"`` matches TRL's ``use_weighting`` (``logsumexp(2·log_softmax)``); ``"none"`` is the plain
    length-normalised probability. Feed the chosen and rejected values to the ``wpo`` reweighter.

    Args:
        logits: ``[N, T, V]`` (already aligned with ``labels``: position t predicts ``labels[:, t]``).
        labels: ``[N, T]`` token ids, ``ignore_index`` where not part of the response.

    Example:
        >>> wpo_log_weights(torch.zeros(1, 2, 4), torch.tensor([[1, -100]]))  # uniform: log(1/4) - log(1/4)
        tensor([0.])
    """
    if logits.ndim != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"`logits` must be [N, T, V] and `labels` [N, T], got {list(logits.shape)} and {list(labels.shape)}"
        )
    if alignment not in ("sampled", "greedy", "none"):
        raise ValueError(f"`alignment` must be one of 'sampled', 'greedy', 'none', got {alignment!r}")
    with torch.no_grad():
        logp = torch.log_softmax(_upcast(logits.detach()), dim=-1)
        valid = not_ignored(labels, ignore_index)
        token = logp.gather(-1, as_index(torch.where(valid, labels, 0)).unsqueeze(-1)).squeeze(-1)
        if alignment == "sampled":
            token = token - torch.logsumexp(2.0 * logp, dim=-1)
        elif alignment == "greedy":
            token = token - logp.amax(dim=-1)
        count = valid.sum(-1).clamp_min(1).to(token.dtype)
        return (token * valid).sum(-1) / count
