r"""Token-level cross entropy and per-sequence log-probabilities from ``logits [N, T, V]`` (pure functions).

``logits[:, t]`` predicts ``target[:, t]`` (already aligned; :func:`sequence_logps` and :func:`token_logps` also take
``shift=True``, the causal-LM convention where ``logits[:, t]`` predicts ``labels[:, t + 1]``). Tokens whose label is
``ignore_index`` (default -100) contribute nothing. Everything is computed in log-softmax form
(:math:`\log p = z - \mathrm{logsumexp}(z)`, never ``log(softmax(z))``) in float32 for half-precision inputs, so
saturated logits (``±1e4``) give finite values and gradients.

Per-token losses ``[N, T]`` become one value per sequence ``[N]`` through
:func:`~lightning_losses.functional.aggregation.aggregate_tokens` (shared with the policy losses and the
memory-efficient path, so every token loss normalises the same way):

* ``"token"`` (default): the global token mean: sequence ``i`` gets :math:`S_i N_g / T_g` (its token-loss sum times
  the counted sequences over the valid tokens of the **global** batch, one all-reduce), so the objective's mean over
  the counted sequences is :math:`\sum_i S_i / T_g`, the usual LM loss (PyTorch's ``reduction="mean"`` over all
  tokens), identical under DDP;
* ``"sequence"``: token mean within each sequence (what loss-based reweighting usually wants);
* ``"sum"``: token sum (t5x's default: no normalisation); ``"constant"``: token sum over the padded length ``T``.
"""

from __future__ import annotations

import torch

from lightning_losses._validation.tensors import as_index, not_ignored
from lightning_losses._validation.tensors import upcast_half as _upcast
from lightning_losses.functional.aggregation import NORMALIZATIONS, aggregate_tokens

__all__ = [
    "REDUCTIONS",
    "check_tokens",
    "gather_targets",
    "reduce_tokens",
    "sequence_logps",
    "token_cross_entropy",
    "token_logps",
]

REDUCTIONS = ("sample", "none")


def check_tokens(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    shift: bool = False,
    validate_args: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``logits [N, T, V]`` and integer ``target [N, T]``; returns them aligned (shifted by one if ``shift``)
    with the logits upcast to float32 when in half precision.

    Raises:
        TypeError: an input is not a tensor.
        ValueError: wrong rank, shape or dtype; with ``validate_args``, a label outside ``[0, V)`` that is not
            ``ignore_index`` (one host sync).
    """
    for name, t in (("logits", logits), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if logits.ndim != 3 or not logits.is_floating_point():
        raise ValueError(f"`logits` must be a floating tensor [N, T, V], got {logits.dtype} {list(logits.shape)}")
    if target.is_floating_point() or target.dtype == torch.bool or target.shape != logits.shape[:2]:
        raise ValueError(
            f"`target` must be an integer tensor [N, T] = {list(logits.shape[:2])} of token ids, "
            f"got {target.dtype} {list(target.shape)}"
        )
    if shift:
        logits, target = logits[:, :-1], target[:, 1:]
    if validate_args and target.numel():
        bad_ids = ((target < 0) | (target >= logits.shape[-1])) & not_ignored(target, ignore_index)
        if bool(bad_ids.any()):
            bad = target[bad_ids][:5].tolist()
            raise ValueError(
                f"`target` token ids must be in [0, {logits.shape[-1] - 1}] (or `ignore_index`), got {bad}"
            )
    return _upcast(logits), as_index(target)


def gather_targets(logp: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``logp[..., target]`` per token (0-th class where not ``valid``, so ignored labels never index out of range)."""
    return logp.gather(-1, torch.where(valid, target, torch.zeros_like(target)).unsqueeze(-1)).squeeze(-1)


def token_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    shift: bool = False,
    validate_args: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Log-probability of each label token, :math:`\log\mathrm{softmax}(z_t)_{y_t}`, and the valid-token mask.

    Returns:
        ``(logps [N, T'], mask [N, T'])`` with 0 at ignored positions (``T' = T - 1`` when ``shift``), with gradient.

    Example:
        >>> lp, mask = token_logps(torch.zeros(1, 3, 4), torch.tensor([[1, 2, -100]]))
        >>> lp.round(decimals=4), mask
        (tensor([[-1.3863, -1.3863,  0.0000]]), tensor([[ True,  True, False]]))
    """
    z, y = check_tokens(logits, labels, ignore_index=ignore_index, shift=shift, validate_args=validate_args)
    valid = y != ignore_index
    logp = gather_targets(z, y, valid) - torch.logsumexp(z, dim=-1)
    return torch.where(valid, logp, torch.zeros_like(logp)), valid


def sequence_logps(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    shift: bool = False,
    average: bool = False,
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Per-sequence log-probability :math:`\log\pi(y) = \sum_t m_t \log\pi(y_t\mid y_{<t})` of the labelled tokens.

    The input of the preference losses (``chosen_logps``, ...) and of :func:`~lightning_losses.functional.dco`.
    ``average=True`` divides by the valid-token count (clamped to 1): the length-normalised log-prob of SimPO / IPO
    in TRL. ``shift=True`` drops the last logit and the first label (causal LM: logits at ``t`` predict ``t + 1``).
    A sequence without valid tokens gets 0. ``validate_args`` checks the token ids (one host sync).

    Example:
        >>> logits = torch.log(torch.tensor([[[0.5, 0.5], [0.9, 0.1]]]))
        >>> sequence_logps(logits, torch.tensor([[0, 0]])).exp()  # 0.5 * 0.9
        tensor([0.4500])
        >>> sequence_logps(logits, torch.tensor([[-100, 1]]), shift=True).exp()  # label 1 from position 0: 0.5
        tensor([0.5000])
    """
    logp, valid = token_logps(logits, labels, ignore_index=ignore_index, shift=shift, validate_args=validate_args)
    total = logp.sum(-1)
    if average:
        return total / valid.sum(-1).clamp_min(1).to(total.dtype)
    return total


def reduce_tokens(token_losses: torch.Tensor, mask: torch.Tensor, normalization: str, reduction: str) -> torch.Tensor:
    """``reduction="none"``: per-token losses ``[N, T]`` (0 where masked); ``"sample"``: :func:`aggregate_tokens`."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {REDUCTIONS}, got {reduction!r}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"`normalization` must be one of {NORMALIZATIONS}, got {normalization!r}")
    if reduction == "none":
        return torch.where(mask, token_losses, torch.zeros_like(token_losses))
    return aggregate_tokens(token_losses, mask, normalization)


def token_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    normalization: str = "token",
    reduction: str = "sample",
    validate_args: bool = True,
) -> torch.Tensor:
    r"""Token cross entropy with ``ignore_index``, label smoothing and z-loss, per sequence (or per token).

    Per valid token, with :math:`\log Z_t = \mathrm{logsumexp}_v z_{tv}` and :math:`\log p_{tv} = z_{tv} - \log Z_t`:

    .. math:: \ell_t = -(1-\varepsilon)\log p_{t,y_t} - \frac{\varepsilon}{V}\sum_v \log p_{tv}
        + \alpha_z (\log Z_t)^2

    Label smoothing follows PyTorch's construction (``ε/V`` to every token, the target included; equal to
    ``F.cross_entropy(label_smoothing=ε)``); the z-loss is PaLM's :math:`\alpha_z(\log Z)^2` (``α_z = 1e-4`` in PaLM,
    t5x's default 0; see :func:`~lightning_losses.functional.z_loss`). Ignored tokens contribute 0 and are left out of
    the normaliser.

    Args:
        logits: ``[N, T, V]`` (aligned with ``target``; shift before calling for a causal LM).
        target: ``[N, T]`` integer token ids, ``ignore_index`` where not scored.
        ignore_index: label that does not count. Default -100.
        label_smoothing: ``ε`` in ``[0, 1]``. Default 0.
        z_loss: ``α_z ≥ 0``. Default 0.
        normalization: ``"token"`` (default), ``"sequence"``, ``"sum"`` or ``"constant"`` (module docstring).
        reduction: ``"sample"`` (default) -> ``[N]``; ``"none"`` -> per-token ``[N, T]`` (0 at ignored tokens).
        validate_args: check that token ids are ``< V`` (one host sync).

    Example:
        >>> logits, target = torch.zeros(2, 3, 4), torch.tensor([[0, 1, -100], [-100, -100, -100]])
        >>> token_cross_entropy(logits, target, normalization="sequence").round(decimals=4)  # log 4; empty -> 0
        tensor([1.3863, 0.0000])
        >>> token_cross_entropy(logits, target, reduction="none")[0].round(decimals=4)
        tensor([1.3863, 1.3863, 0.0000])
    """
    z, y = check_tokens(logits, target, ignore_index=ignore_index, validate_args=validate_args)
    valid = y != ignore_index
    log_z = torch.logsumexp(z, dim=-1)
    nll = log_z - gather_targets(z, y, valid)
    loss = nll if not label_smoothing else (1.0 - label_smoothing) * nll + label_smoothing * (log_z - z.mean(-1))
    if z_loss:
        loss = loss + z_loss * log_z.square()
    return reduce_tokens(loss, valid, normalization, reduction)
