r"""The first-order flatness presets ``gam`` and ``fad`` (:mod:`~lightning_losses.perturbation.first_order`) and their
callbacks :class:`GAM` and :class:`FAD`. Like every preset they take the engine's options (``every_n_steps``,
``probability``, ``reuse_alpha`` (LookSAM), a radius schedule, ``sync_ascent``, ``params``, ...); ``inner_steps``
stays 1, and neither ESAM's data selection nor ``ascent_terms`` applies (the finite differences need every gradient of
one loss).

Example:
    >>> import lightning_losses as ll
    >>> ll.build_perturbation("gam", rho=0.02, norm_rho=0.2).norm_rho
    0.2
    >>> ll.build_perturbation("fad", rho=0.05, alpha=1.0, beta=0.5).beta
    0.5
"""

from __future__ import annotations

from lightning_losses.callbacks import CALLBACKS
from lightning_losses.perturbation.callback import PresetCallback
from lightning_losses.perturbation.first_order import FADPerturbation, GAMPerturbation
from lightning_losses.perturbation.presets import PERTURBATIONS, Preset, register_preset

__all__ = ["FAD", "GAM", "fad", "gam"]

for _preset in (
    Preset(
        "gam",
        radius="rho",
        defaults={"rho": 0.02, "norm_rho": 0.2, "alpha": 0.6, "beta": 0.5, "gamma": 0.03},
        engine=GAMPerturbation,
        doc=r"""GAM, gradient norm aware minimization (Zhang, Xu, Yu, Zou, Cui, CVPR 2023; authors' code
    xxgege/GAM): seeks first-order flatness :math:`R^{(1)}_\rho(w) = \rho \max_{\|\epsilon\| \le \rho} \|\nabla
    L(w + \epsilon)\|` together with SAM's zeroth-order flatness, the Hessian-vector products replaced by finite
    differences of gradients (the form the authors release). Four gradients of the batch:
    :math:`g_0` at :math:`w`, :math:`g_1` at :math:`w + \rho' \hat g_0`, :math:`g_2` at :math:`w_2 = w + \rho\,
    \widehat{g_1 - g_0}` (the ascent of the gradient norm), :math:`g_3` at :math:`w_2 + \rho' \hat g_2`
    (:math:`\hat v = v/\|v\|`); descent gradient :math:`h - \gamma\,(p - \frac{\langle p, h\rangle}{\|h\|^2} h)` with
    :math:`h = \alpha g_1 + (1-\alpha) g_3` and :math:`p = g_0 + (1-\beta) g_2`. ``rho`` is :math:`\rho'` (the SAM /
    finite-difference radius, the engine's: it takes a schedule), ``norm_rho`` is :math:`\rho`. :math:`\alpha = 1,
    \gamma = 0` is SAM with radius :math:`\rho'` (at twice its cost). Defaults :math:`\rho' = 0.02, \rho = 0.2,
    \alpha = 0.6, \beta = 0.5, \gamma = 0.03`: the authors' CIFAR-100 ResNet setting (their CIFAR-10 ResNet one:
    ``rho=0.03, alpha=0.1, beta=0.1, gamma=0.05``); their scripts keep both radii constant. Cost: 4 forward-backward
    passes a perturbed step (SAM: 2). Under DDP the authors run every pass per replica and average the final
    gradient; here the last three passes are synchronised and the rule works on rank-averaged gradients (see
    :mod:`~lightning_losses.perturbation.first_order`). Example: ``ll.build_perturbation("gam", rho=0.03,
    norm_rho=0.2, alpha=0.1, beta=0.1, gamma=0.05)``.""",
    ),
    Preset(
        "fad",
        radius="rho",
        defaults={"rho": 0.05, "alpha": 1.0, "beta": 0.5},
        engine=FADPerturbation,
        doc=r"""FAD, flatness-aware minimization for domain generalization (Zhang, Xu, Yu, Dong, Tian, Cui, ICCV
    2023): minimises :math:`L + \alpha R^{(0)}_\rho + \beta R^{(1)}_\rho`, zeroth-order flatness
    :math:`R^{(0)}_\rho(w) = \max_{\|\epsilon\| \le \rho} L(w + \epsilon) - L(w)` and first-order flatness
    :math:`R^{(1)}_\rho` (GAM's) together. The same four gradients as ``gam`` with one radius :math:`\rho` for the
    balls and the finite differences; descent gradient :math:`g_0 + \alpha (g_1 - g_0) + \beta (g_3 - g_2)`
    (:math:`\nabla R^{(0)} \approx g_1 - g_0` as in SAM, :math:`\nabla R^{(1)} = \rho\,\nabla\|\nabla L(w_2)\|
    \approx g_3 - g_2`). :math:`\alpha = 1, \beta = 0` is SAM. Defaults :math:`\rho = 0.05, \alpha = 1, \beta = 0.5`
    are this library's (the paper's per-dataset values were not available to check). Cost: 4 forward-backward passes
    a perturbed step. Example: ``ll.build_perturbation("fad", rho=0.05, alpha=1.0, beta=0.5, every_n_steps=2)``.""",
    ),
):
    register_preset(_preset)

gam = PERTURBATIONS.get("gam")
fad = PERTURBATIONS.get("fad")


class GAM(PresetCallback, preset="gam"):
    r"""GAM as a callback: first-order flatness (the gradient norm's ascent) with SAM's term, 4 passes a step."""


class FAD(PresetCallback, preset="fad"):
    r"""FAD as a callback: :math:`L + \alpha R^{(0)} + \beta R^{(1)}`, 4 passes a step."""


for _cls in (GAM, FAD):
    CALLBACKS.register(_cls.preset.name)(_cls)
