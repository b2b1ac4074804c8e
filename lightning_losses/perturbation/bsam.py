r"""bSAM, Bayesian SAM (Möllenhoff & Khan, *SAM as an Optimal Relaxation of Bayes*, ICLR 2023), as an optimizer.

bSAM is a complete Adam-like optimizer, not a perturbation in front of a base optimizer: its ascent divides by the
optimizer's own per-element precision :math:`s`, and the precision is updated from the gradient at a *noisy* point.
One step, with :math:`\delta = \text{prior\_precision}/N`:

1. noisy point :math:`\tilde w = w + \xi/\sqrt{N s}`, :math:`\xi \sim \mathcal N(0, I)`; :math:`\tilde g = \nabla
   L(\tilde w)`;
2. perturbed point :math:`w + \rho\,\tilde g / s` (element-wise, not normalised, taken from :math:`w`);
   :math:`g_p = \nabla L(w + \rho\,\tilde g/s)`;
3. :math:`m \leftarrow \beta_1 m + (1 - \beta_1)(g_p + \delta w)`; :math:`w \leftarrow w - \eta\,m/s` (the old
   :math:`s`); :math:`s \leftarrow \beta_2 s + (1 - \beta_2)(\sqrt{s}\,|\tilde g| + \text{damping} + \delta)`.

This is the update of the authors' JAX code (team-approx-bayes/bayesian-sam, ``build_bsam_optimizer``) with one
sub-batch (``batchsplit`` 1; no m-sharpness split), no bias correction, :math:`s_0 = ` ``s_init``.

Two ways to run it. Alone, :meth:`BSAM.step` runs both passes through the closure, so BatchNorm statistics, logging
and metrics see two forward-backward passes per step (as in the authors' code, which updates BatchNorm statistics in
both); under DDP the closure's backward averages gradients over ranks, so :math:`|\tilde g|` is that of the
rank-averaged gradient. With the ``bsam`` perturbation preset (the callback ``WeightPerturbation("bsam")`` or
:func:`~lightning_losses.perturbation.perturbed_backward` with ``optimizer=``), the engine runs the passes
(:mod:`~lightning_losses.perturbation.bayes_step`: perturbed passes invisible to logging and metrics, BatchNorm
frozen in the descent, per-replica noise and ascent under DDP, i.e. the authors' m-sharpness with m = the per-device
batch) and :meth:`step` only applies the update. Either way the weights stay identical on every rank, and the
optimizer's :attr:`state` (:math:`s`, :math:`m`, ``step``) changes in :meth:`update` only: the noisy and perturbed
points read :math:`s`, and :math:`\sqrt{s}|\tilde g|` waits outside the state until the update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from lightning_losses._validation import check_int, check_number
from lightning_losses.errors import ConfigurationError

__all__ = ["BSAM"]


class BSAM(torch.optim.Optimizer):
    r"""bSAM (Möllenhoff & Khan, ICLR 2023): SAM as a relaxation of Bayes, an Adam-like optimizer with a learned
    per-element precision :math:`s` (the posterior :math:`\mathcal N(w, 1/(N s))`). See the module docstring for the
    update. :meth:`step` needs a closure (forward and backward, returning the loss): it zeroes the gradients and runs
    ``closure()`` twice, at the noisy point and at the perturbed point. The phases are also public
    (:meth:`to_noisy_point`, :meth:`to_perturbed_point`, :meth:`restore`, :meth:`update`) for a caller running its
    own passes.

    Args:
        params: parameters or parameter groups.
        num_data: :math:`N`, the training-set size (times the authors' ``dafactor`` for data augmentation, 4 in
            their CIFAR recipe). Required.
        lr: :math:`\eta`. Default 0.5 (the authors' CIFAR-10 ResNet-18 recipe, with a warm-up and cosine decay).
        betas: :math:`(\beta_1, \beta_2)`. Default (0.9, 0.999).
        rho: :math:`\rho`, the ascent's scale. Default 0.01.
        prior_precision: the Gaussian prior's precision; :math:`\delta = \text{prior\_precision}/N` acts as weight
            decay in :math:`m` and as a floor in :math:`s`. Default 40.
        damping: added to the precision update. Default 0.1.
        s_init: :math:`s_0`. Default 1.
        generator: the ``torch.Generator`` of the noise :math:`\xi` (default: the global one of each device).

    Example:
        >>> import torch
        >>> from lightning_losses.perturbation.bsam import BSAM
        >>> model = torch.nn.Linear(3, 1)
        >>> opt = BSAM(model.parameters(), num_data=100, lr=0.1)
        >>> x, y = torch.randn(8, 3), torch.randn(8, 1)
        >>> def closure():
        ...     loss = torch.nn.functional.mse_loss(model(x), y)
        ...     loss.backward()
        ...     return loss
        >>> loss = opt.step(closure)
        >>> sorted(opt.state[model.weight])
        ['momentum', 'precision', 'step']
    """

    def __init__(
        self,
        params: Iterable[Any],
        num_data: int,
        lr: float = 0.5,
        betas: tuple[float, float] = (0.9, 0.999),
        rho: float = 0.01,
        prior_precision: float = 40.0,
        damping: float = 0.1,
        s_init: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> None:
        check_int("num_data", num_data, low=1)
        check_number("lr", lr, low=0.0, low_open=True)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ConfigurationError(f"`betas` must be a pair (beta1, beta2), got {betas!r}")
        check_number("betas[0]", betas[0], low=0.0, high=1.0, high_open=True)
        check_number("betas[1]", betas[1], low=0.0, high=1.0, high_open=True)
        check_number("rho", rho, low=0.0)
        check_number("prior_precision", prior_precision, low=0.0)
        check_number("damping", damping, low=0.0)
        check_number("s_init", s_init, low=0.0, low_open=True)
        defaults = dict(
            num_data=int(num_data),
            lr=float(lr),
            betas=(float(betas[0]), float(betas[1])),
            rho=float(rho),
            prior_precision=float(prior_precision),
            damping=float(damping),
            s_init=float(s_init),
        )
        super().__init__(params, defaults)
        self.generator = generator
        #: ``(parameter, w, group)`` while the weights are away from :math:`w` inside a step
        self._saved: list[tuple[Tensor, Tensor, dict[str, Any]]] = []
        #: :math:`\sqrt{s}|\tilde g|` per parameter, from :meth:`to_perturbed_point` to :meth:`update`
        self._noisy_terms: dict[Tensor, Tensor] = {}
        #: the ``bsam`` perturbation runs the passes (set by it): :meth:`step` calls the closure once, then updates
        self.driven = False

    # ------------------------------------------------------------------ state
    def _state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        state = self.state[p]
        if "precision" not in state:
            state["step"] = 0
            state["precision"] = torch.full_like(p, group["s_init"], memory_format=torch.preserve_format)
            state["momentum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        return state

    def _params(self) -> Iterable[tuple[Tensor, dict[str, Any]]]:
        for group in self.param_groups:
            for p in group["params"]:
                yield p, group

    # ------------------------------------------------------------------ the phases of a step
    @torch.no_grad()
    def to_noisy_point(self) -> None:
        r"""Save :math:`w` and move every parameter to :math:`w + \xi/\sqrt{N s}`."""
        self._saved = []
        for p, group in self._params():
            s = self._state(p, group)["precision"]
            self._saved.append((p, p.detach().clone(), group))
            noise = torch.randn(p.shape, dtype=p.dtype, device=p.device, generator=self.generator)
            p.add_(noise * torch.rsqrt(s * group["num_data"]))

    @torch.no_grad()
    def to_perturbed_point(self, rho: float | None = None) -> None:
        r"""From the gradient :math:`\tilde g` in ``.grad`` (at the noisy point): keep :math:`\sqrt{s}|\tilde g|`
        for the precision update (outside :attr:`state`: nothing of the optimizer's state changes before
        :meth:`update`) and move to :math:`w + \rho\,\tilde g/s`. A parameter without a gradient returns to
        :math:`w`. ``rho`` overrides the groups' :math:`\rho` (the ``bsam`` preset's, possibly scheduled)."""
        self._noisy_terms = {}
        for p, w, group in self._saved:
            p.copy_(w)
            if p.grad is None:
                continue
            s = self._state(p, group)["precision"]
            self._noisy_terms[p] = s.sqrt() * p.grad.abs()
            p.addcdiv_(p.grad, s, value=group["rho"] if rho is None else rho)

    @torch.no_grad()
    def restore(self) -> None:
        """Put the saved :math:`w` back (exact)."""
        for p, w, _ in self._saved:
            p.copy_(w)
        self._saved = []

    @torch.no_grad()
    def update(self) -> None:
        r"""The bSAM update from :math:`g_p` in ``.grad`` and the stored :math:`\sqrt{s}|\tilde g|` (parameters
        missing either are left unchanged)."""
        for p, group in self._params():
            noisy_term = self._noisy_terms.pop(p, None)
            if p.grad is None or noisy_term is None:
                continue
            state = self.state[p]
            beta1, beta2 = group["betas"]
            delta = group["prior_precision"] / group["num_data"]
            s, m = state["precision"], state["momentum"]
            m.mul_(beta1).add_(p.grad + delta * p, alpha=1.0 - beta1)
            p.addcdiv_(m, s, value=-group["lr"])
            s.mul_(beta2).add_(noisy_term + (group["damping"] + delta), alpha=1.0 - beta2)
            state["step"] += 1

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        """One bSAM step: ``closure()`` (forward and backward, returning the loss) runs at the noisy point and at the
        perturbed point; the weights end at :math:`w` updated. Returns the loss at the perturbed point.

        Driven by the ``bsam`` perturbation (its callback, or :func:`~lightning_losses.perturbation.perturbed_backward`
        before ``step()``), the passes are the perturbation's: a closure is called once, then the update is applied
        from :math:`g_p` in ``.grad`` and the noisy point's term the perturbation handed over."""
        if self.driven or closure is None:
            if closure is None and not self._noisy_terms:
                raise ValueError(
                    "`closure` is required: BSAM evaluates the gradient at two points per step (or run the `bsam` "
                    "perturbation's passes before `step()`)"
                )
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self.update()
            return loss
        self.to_noisy_point()
        try:
            self.zero_grad(set_to_none=True)
            with torch.enable_grad():
                closure()
            self.to_perturbed_point()
            self.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss = closure()
        finally:
            self.restore()
        self.update()
        return loss

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("generator", None)
        self.__dict__.setdefault("_saved", [])
        self.__dict__.setdefault("_noisy_terms", {})
        self.__dict__.setdefault("driven", False)
