r"""Registered entropy regularisers (thin modules over :mod:`lightning_losses.functional.entropy`).

Add them to an objective next to the task loss::

    objective:
      cross_entropy: {}
      confidence_penalty: {beta: 0.1}          # loss - 0.1 * H   (higher entropy)
      # entropy_minimization: {beta: 0.1}      # loss + 0.1 * H   (lower entropy, e.g. unlabelled data)

With token logits ``[N, T, V]`` and an integer ``target [N, T]`` in the inputs, tokens whose label is
``ignore_index`` are left out of each sample's mean entropy.
"""

from __future__ import annotations

import torch

from lightning_losses._validation import check_int, check_number
from lightning_losses._validation.tensors import not_ignored
from lightning_losses.functional.entropy import confidence_penalty, entropy_minimization
from lightning_losses.losses.base import LOSSES, Loss

__all__ = ["ConfidencePenalty", "EMFT", "EntropyMinimization", "EntropyTerm"]


class EntropyTerm(Loss):
    """Shared input handling: ``logits [N, C]`` or ``[N, T, V]`` with an optional ``target`` for the token mask."""

    family = "multiclass"

    def __init__(self, beta: float, ignore_index: int, validate_args: bool) -> None:
        super().__init__(validate_args)
        self.beta = check_number("beta", beta, low=0.0)
        self.ignore_index = check_int("ignore_index", ignore_index)

    def _mask(self, logits: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor | None:
        if logits.ndim != 3 or target is None or target.is_floating_point():
            return None
        return not_ignored(target, self.ignore_index)


_EntropyTerm = EntropyTerm  # the former private name, kept importable


@LOSSES.register("confidence_penalty", aliases=("entropy_bonus",), tags=("entropy",))
class ConfidencePenalty(EntropyTerm):
    r"""Confidence penalty :math:`\ell_i = -\beta H(p_i)` (Pereyra et al., ICLR 2017 workshop): raises entropy.

    Equivalent to :math:`\beta\,\mathrm{KL}(p\,\|\,u)` up to a constant (label smoothing adds
    :math:`\varepsilon\,\mathrm{KL}(u\,\|\,p)`). With ``threshold = Γ`` the hinge :math:`\beta\max(0, Γ - H)` only
    penalises predictions whose entropy is below Γ.

    Args:
        beta: strength ``>= 0``. Default 0.1 (the paper tunes it per task).
        threshold: optional entropy floor Γ (nats) for the hinge form. Default None.
        ignore_index: token label excluded from ``[N, T, V]`` entropies. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("confidence_penalty", beta=1.0)(logits=torch.zeros(2, 2)).round(decimals=4)
        tensor([-0.6931, -0.6931])
    """

    def __init__(
        self, beta: float = 0.1, threshold: float | None = None, ignore_index: int = -100, validate_args: bool = True
    ) -> None:
        super().__init__(beta, ignore_index, validate_args)
        self.threshold = None if threshold is None else check_number("threshold", threshold, low=0.0)

    def forward(self, logits: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        mask = self._mask(logits, target)
        return confidence_penalty(logits, self.beta, threshold=self.threshold, mask=mask)


@LOSSES.register("entropy_minimization", aliases=("entropy_penalty", "entropy_minimisation"), tags=("entropy",))
class EntropyMinimization(EntropyTerm):
    r"""Entropy minimisation :math:`\ell_i = +\beta H(p_i)`: lowers entropy (semi-supervised / unlabelled data).

    Args:
        beta: strength ``>= 0``. Default 0.1.
        ignore_index: token label excluded from ``[N, T, V]`` entropies. Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> ll.build_loss("entropy_minimization", beta=1.0)(logits=torch.zeros(1, 2)).round(decimals=4)
        tensor([0.6931])
    """

    def __init__(self, beta: float = 0.1, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(beta, ignore_index, validate_args)

    def forward(self, logits: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return entropy_minimization(logits, self.beta, mask=self._mask(logits, target))


@LOSSES.register("em_ft", tags=("entropy",))
class EMFT(EntropyMinimization):
    r"""EM-FT (Agarwal et al., *The Unreasonable Effectiveness of Entropy Minimization in LLM Reasoning*, 2025):
    fine-tune on the model's **own** samples with the mean token entropy as the only loss, no labels.

    :math:`\ell_i = \beta\,\frac{1}{|T_i|}\sum_{t \in T_i} H(p_{i,t})` over the generated tokens :math:`T_i`: pass the
    token ``logits [N, T, V]`` of sampled completions and ``target [N, T]`` holding the sampled tokens with the prompt
    and padding set to ``ignore_index`` (only the mask is read). :class:`EntropyMinimization` with ``β = 1``.

    Args:
        beta: strength ``>= 0``. Default 1.0.
        ignore_index: label of the tokens left out (prompt, padding). Default -100.

    Example:
        >>> import lightning_losses as ll
        >>> logits, tokens = torch.zeros(1, 3, 4), torch.tensor([[-100, 2, 1]])
        >>> ll.build_loss("em_ft")(logits=logits, target=tokens).round(decimals=4)  # uniform over 4: log 4
        tensor([1.3863])
    """

    def __init__(self, beta: float = 1.0, ignore_index: int = -100, validate_args: bool = True) -> None:
        super().__init__(beta, ignore_index, validate_args)

    def forward(self, logits: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        return super().forward(logits, target)
