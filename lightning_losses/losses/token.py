r"""Registered token-level LM losses (thin modules over :mod:`lightning_losses.functional.token` and ``.lm``).

Inputs: ``logits [N, T, V]`` aligned with ``target [N, T]`` (``logits[:, t]`` predicts ``target[:, t]``; shift
before the call for a causal LM, e.g. ``logits[:, :-1]`` with ``input_ids[:, 1:]``), ``ignore_index`` on the tokens
that do not count; ``emo`` also takes ``cost_embedding [V, D]``. Output: one loss per sequence ``[N]``; sequences
without any valid token are masked out of the objective's normaliser (``sample_mask``).

``normalization`` (see :func:`~lightning_losses.functional.aggregation.aggregate_tokens`): ``"token"`` (default: the
objective's mean is the global token mean, the usual LM loss, DDP-exact), ``"sequence"`` (per-sequence token mean,
the usual input of loss-based reweighting), ``"sum"`` or ``"constant"``.

Example:
    >>> import lightning_losses as ll
    >>> loss = ll.build_loss("token_cross_entropy", normalization="sequence")
    >>> loss(logits=torch.zeros(2, 3, 4), target=torch.tensor([[1, 2, -100], [0, 0, 0]])).round(decimals=4)
    tensor([1.3863, 1.3863])
"""

from __future__ import annotations

import torch

from lightning_losses._validation import check_number
from lightning_losses.functional import lm as LM
from lightning_losses.functional import token as TK
from lightning_losses.losses.base import LOSSES
from lightning_losses.losses.families import TokenLoss

__all__ = ["DCO", "EMO", "MixCE", "TokenCrossEntropy"]


_TokenLoss = TokenLoss  # the former private name, kept importable


@LOSSES.register("token_cross_entropy", aliases=("token_ce", "lm_cross_entropy"))
class TokenCrossEntropy(TokenLoss):
    r"""Token cross entropy per sequence, with label smoothing and z-loss (see
    :func:`lightning_losses.functional.token_cross_entropy`).

    Args:
        label_smoothing: ``ε`` in ``[0, 1]`` (PyTorch's construction). Default 0.
        z_loss: PaLM's :math:`\alpha_z (\log Z)^2` coefficient ``≥ 0`` (PaLM: 1e-4). Default 0.
        ignore_index: label that does not count. Default -100.
        normalization: ``"token"`` (default), ``"sequence"``, ``"sum"`` or ``"constant"``.
        validate_args: check token ids at call time (one host sync).

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("token_cross_entropy", z_loss=1e-4)
        >>> loss(logits=torch.zeros(2, 3, 5), target=torch.zeros(2, 3, dtype=torch.long)).shape
        torch.Size([2])
    """

    def __init__(
        self,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        ignore_index: int = -100,
        normalization: str = "token",
        validate_args: bool = True,
    ) -> None:
        super().__init__(ignore_index, normalization, validate_args)
        self.label_smoothing = check_number("label_smoothing", label_smoothing, low=0.0, high=1.0)
        self.z_loss = check_number("z_loss", z_loss, low=0.0)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return TK.token_cross_entropy(
            logits,
            target,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            normalization=self.normalization,
            validate_args=self.validate_args,
        )


@LOSSES.register("dco", aliases=("direct_coverage_optimization",))
class DCO(TokenLoss):
    r"""DCO pass@N coverage loss :math:`-\log(1-(1-p)^N)` of each whole sequence, ``p`` its probability from the token
    log-probs (:func:`lightning_losses.functional.sequence_logps`, summed over the valid tokens); see
    :func:`lightning_losses.functional.dco`. ``normalization`` does not apply (the loss is per sequence).

    Args:
        n: pass@N budget ``N ≥ 1`` (``N = 1`` is the summed token cross entropy). Default 4.
        ignore_index: label that does not count (prompt and padding). Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> logits = torch.log(torch.tensor([[[0.5, 0.5]]]))
        >>> ll.build_loss("dco", n=2)(logits=logits, target=torch.tensor([[0]])).round(decimals=4)  # -log(0.75)
        tensor([0.2877])
    """

    def __init__(self, n: float = 4.0, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(ignore_index, "sum", validate_args)
        self.n = check_number("n", n, low=1.0)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logps = TK.sequence_logps(logits, target, ignore_index=self.ignore_index, validate_args=self.validate_args)
        return LM.dco(logps, n=self.n)


@LOSSES.register("mixce", aliases=("mix_ce",))
class MixCE(TokenLoss):
    r"""MixCE token loss :math:`(\eta + (1-\eta)\,\mathrm{sg}(q_{y_t}))\cdot(-\log q_{y_t})` (Zhang et al., ACL 2023);
    see :func:`lightning_losses.functional.mixce`.

    Args:
        eta: mixing ratio ``η`` in ``[0, 1]`` (1 = MLE). Default 0.5.
        ignore_index: label that does not count. Default -100.
        normalization: ``"token"`` (default; the authors' mean over non-padding tokens), ``"sequence"``, ``"sum"``,
            ``"constant"``.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("mixce", eta=1.0)(logits=torch.zeros(1, 2, 4), target=torch.tensor([[0, 1]]))  # MLE: log 4
        tensor([1.3863])
    """

    def __init__(
        self, eta: float = 0.5, ignore_index: int = -100, normalization: str = "token", validate_args: bool = True
    ) -> None:
        super().__init__(ignore_index, normalization, validate_args)
        self.eta = check_number("eta", eta, low=0.0, high=1.0)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return LM.mixce(
            logits,
            target,
            eta=self.eta,
            ignore_index=self.ignore_index,
            normalization=self.normalization,
            validate_args=self.validate_args,
        )


@LOSSES.register("emo", aliases=("earth_mover_distance_optimization",))
class EMO(TokenLoss):
    r"""EMO token loss :math:`\tfrac12(\mathrm{MLE} + \mathrm{sg}(\mathrm{MLE}/\mathrm{DEMD})\,\mathrm{DEMD})` with the
    transport cost from a frozen, L2-normalised ``cost_embedding [V, D]`` (an input: the model's output embedding
    weight, detached inside); see :func:`lightning_losses.functional.emo`. The dynamic weight is per token, as in the
    authors' code.

    Args:
        max_weight: optional cap on the per-token weight (the authors' LLaMA scripts use 3.0). Default ``None``.
        ignore_index: label that does not count. Default -100.
        normalization: ``"token"`` (default; the authors' mean over unmasked tokens), ``"sequence"``, ``"sum"``,
            ``"constant"``.

    Example:
        >>> import lightning_losses as ll
        >>> loss = ll.build_loss("emo")
        >>> loss(logits=torch.zeros(1, 2, 3), target=torch.tensor([[0, 2]]), cost_embedding=torch.eye(3)).shape
        torch.Size([1])
    """

    def __init__(
        self,
        max_weight: float | None = None,
        ignore_index: int = -100,
        normalization: str = "token",
        validate_args: bool = True,
    ) -> None:
        super().__init__(ignore_index, normalization, validate_args)
        self.max_weight = None if max_weight is None else check_number("max_weight", max_weight, low=0.0, low_open=True)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, cost_embedding: torch.Tensor) -> torch.Tensor:
        return LM.emo(
            logits,
            target,
            cost_embedding,
            ignore_index=self.ignore_index,
            max_weight=self.max_weight,
            normalization=self.normalization,
            validate_args=self.validate_args,
        )
