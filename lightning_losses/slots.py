"""The three plug-in slots of :class:`~lightning_losses.LossesMixin`, declared as :class:`typing.Protocol` s.

A plug-in is attached with ``module.attach(slot, plugin)`` (the library's callbacks do it in ``setup``, see
:class:`~lightning_losses.callbacks.MixinCallback`):

* ``"reweighter"``: a :class:`ReweighterPlugin`, called on the per-sample losses in training, returns the weights;
* ``"terms"``: any number of :class:`TermsPlugin` s, each adding named per-sample terms in training;
* ``"step"``: one :class:`StepPlugin`, which wraps the optimizer closure (weight perturbation).

The protocols are ``runtime_checkable`` (``isinstance`` checks that the method exists, not its signature).

Example:
    >>> from lightning_losses.perturbation import SAM
    >>> isinstance(SAM(rho=0.05), StepPlugin), isinstance(SAM(rho=0.05), TermsPlugin)
    (True, False)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, Protocol, runtime_checkable

import torch

__all__ = ["SLOTS", "ReweighterPlugin", "Slot", "StepPlugin", "TermsPlugin"]

#: a slot's name
Slot = Literal["reweighter", "terms", "step"]


@runtime_checkable
class ReweighterPlugin(Protocol):
    """The ``"reweighter"`` slot (one at a time; training only)."""

    def __call__(self, losses: torch.Tensor, **tensors: Any) -> torch.Tensor:
        """Weights ``[N]`` for the per-sample ``losses`` ``[N]``.

        ``tensors`` holds ``sample_mask`` (``[N]`` bool or ``None``) and the tensors given to ``compute_loss``
        (``target``, ``index``, ``group``, ...).
        """
        ...


@runtime_checkable
class TermsPlugin(Protocol):
    """The ``"terms"`` slot (any number; training only), e.g. entropy control and SAF."""

    def extra_terms(self, module: Any, tensors: dict[str, Any], step: int) -> dict[str, torch.Tensor]:
        """``{name: [N] per-sample term}`` added to the objective at optimizer step ``step``; ``tensors`` are the
        ``compute_loss`` inputs."""
        ...


@runtime_checkable
class StepPlugin(Protocol):
    """The ``"step"`` slot (one at a time): wraps the closure the mixin's ``optimizer_step`` hands the optimizer."""

    def wrap_closure(self, module: Any, optimizer: Any, closure: Callable[[], Any]) -> Callable[[], Any]:
        """The closure to run instead of ``closure`` (it calls ``closure`` for every forward-backward pass)."""
        ...


#: slot name -> the protocol its plug-ins follow
SLOTS: dict[str, type] = {"reweighter": ReweighterPlugin, "terms": TermsPlugin, "step": StepPlugin}
