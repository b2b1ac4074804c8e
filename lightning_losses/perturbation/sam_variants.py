r"""The SAM variants that change the ascent direction or the descent gradient: ``gsam``, ``wsam``, ``friendly_sam`` and
``esam``, each a :class:`~lightning_losses.perturbation.presets.Preset` on the one engine (the ``normalise`` ascent
rule with a direction or descent rule of :mod:`~lightning_losses.perturbation.gradient_rules`). Like every preset they
take the engine's options (``every_n_steps``, ``probability``, ``reuse_alpha`` (LookSAM), radius schedules,
``sync_ascent``, ``params``, ...).

Example:
    >>> import lightning_losses as ll
    >>> ll.build_perturbation("gsam", rho=0.05, alpha=0.4)
    Perturbation(rule='normalise', radius_mode='global', radius=Constant(value=0.05), scaling=None, inner_steps=1, sync_ascent=False, every_n_steps=1, descent='surrogate_gap')
"""  # noqa: E501

from __future__ import annotations

from lightning_losses.perturbation.presets import PERTURBATIONS, Preset, register_preset

__all__ = ["bsam", "esam", "friendly_sam", "gsam", "wsam"]

for _preset in (
    Preset(
        "gsam",
        radius="rho",
        defaults={"rho": 0.05, "alpha": 0.4},
        descent="surrogate_gap",
        renames={"alpha": "descent_weight"},
        doc=r"""GSAM, surrogate gap guided SAM (Zhuang et al., ICLR 2022): ascent as SAM,
    :math:`\epsilon = \rho\,g/\|g\|`; descent along :math:`g_p - \alpha g_\perp` with
    :math:`g_\perp = g - \frac{\langle g, g_p\rangle}{\|g_p\|^2} g_p` (:math:`g` at :math:`w`, :math:`g_p` at
    :math:`w + \epsilon`), which lowers the surrogate gap :math:`f(w + \epsilon) - f(w)` without changing the
    perturbed loss. Inner products and norms are global (over ranks' averaged gradients and FSDP2 shards). Defaults
    :math:`\rho = 0.05`, :math:`\alpha = 0.4` (pytorch_optimizer's :math:`\alpha`; the authors' CIFAR example uses
    0.2 with ``asam_p2`` scaling and :math:`\rho = 2`, their ViT config 0.6). The paper ties :math:`\rho_t` to the LR
    schedule: pass a radius schedule. Under DDP the decomposition uses the rank-averaged :math:`g` and :math:`g_p` (the
    authors' PyTorch code decomposes per rank, then sums). Example: ``ll.build_perturbation("gsam", rho=0.05,
    alpha=0.2, every_n_steps=2)``.""",
    ),
    Preset(
        "wsam",
        radius="rho",
        defaults={"rho": 0.05, "gamma": 0.9, "decouple": True},
        descent="weighted",
        renames={"gamma": "descent_weight"},
        doc=r"""WSAM, weighted SAM (Yue et al., KDD 2023): the objective :math:`L(w) + \frac{\gamma}{1-\gamma}
    [L(w + \epsilon) - L(w)]`; ascent as SAM. ``decouple=True`` (the reference's default): the base optimizer steps on
    :math:`g`, then :math:`w \leftarrow w - \eta\frac{\gamma}{1-\gamma}(g_p - g)` as a plain SGD step with the
    group's learning rate (:mod:`~lightning_losses.perturbation.decoupled`; ``perturbed_backward`` then needs
    ``optimizer=``). ``decouple=False``: the descent gradient :math:`g + \frac{\gamma}{1-\gamma}(g_p - g)` goes
    through the optimizer (momentum amplifies the sharpness term; :math:`\gamma = 0.5` is SAM). The two coincide for
    SGD without momentum or weight decay. The reference's ``max_norm`` clipping of :math:`g` and :math:`g_p` is not
    applied.
    Defaults :math:`\rho = 0.05`, :math:`\gamma = 0.9` (pytorch_optimizer's; the paper's range 0.8-0.95).
    Example: ``ll.build_perturbation("wsam", rho=0.05, gamma=0.9)``.""",
    ),
    Preset(
        "friendly_sam",
        radius="rho",
        defaults={"rho": 0.05, "sigma": 1.0, "lmbda": 0.9},
        direction="friendly",
        doc=r"""FriendlySAM (Li et al., CVPR 2024): the ascent follows the batch-specific gradient noise only,
    :math:`d = g - \sigma m_{t-1}`, :math:`\epsilon = \rho\,d/\|d\|`, with :math:`m_t = \lambda m_{t-1} + (1 -
    \lambda) g` an EMA of the raw gradient (:math:`m_0 = g`, so the first step is SAM's). :math:`m` is state (saved in
    the checkpoint); under per-replica DDP ascent it is this rank's EMA of its local gradients, and a resume restores
    rank 0's on every rank (use ``sync_ascent=True`` for one :math:`m` everywhere). On steps left unperturbed
    (``every_n_steps``, ``probability``) :math:`m` is not updated. Defaults :math:`\rho = 0.05, \sigma = 1, \lambda =
    0.9` (the authors' class and pytorch_optimizer; their CIFAR-100 script: :math:`\rho = 0.2, \lambda = 0.6`).
    Example: ``ll.build_perturbation("friendly_sam", rho=0.2, lmbda=0.6)``.""",
    ),
    Preset(
        "esam",
        radius="rho",
        defaults={"rho": 0.05, "beta": 0.6, "gamma": 0.5},
        direction="stochastic",
        renames={"beta": "keep_probability", "gamma": "select_fraction"},
        doc=r"""ESAM (Du et al., ICLR 2022). Stochastic weight perturbation: each parameter tensor is perturbed with
    probability :math:`\beta` (drawn per tensor and step from ``seed``: the same on every rank and after a resume),
    :math:`\epsilon = \frac{\rho}{\beta}\,g_S/\|g_S\|` on the kept set :math:`S`, zero elsewhere. Sharpness-sensitive
    data selection: the descent loss is the mean over the :math:`\lfloor\gamma B\rfloor` samples of largest
    :math:`\ell_i(w + \epsilon) - \ell_i(w)` (per rank, as the reference;
    :mod:`~lightning_losses.perturbation.data_selection`), which needs per-sample losses (``compute_loss``; in
    :func:`perturbed_backward` a loss function returning ``[N]``) and ``accumulate_grad_batches=1``; ``gamma=1`` uses
    the whole batch. The reference skips the dropped tensors' weight gradients and back-propagates the kept subset only
    to save time; here the full gradients are computed and masked (same step, none of the speed-up). Defaults
    :math:`\rho = 0.05`, :math:`\beta = 0.6`, :math:`\gamma = 0.5` (the authors' ``run.sh``; their class defaults
    :math:`\beta = \gamma = 1` are SAM). Example: ``ll.build_perturbation("esam", rho=0.05, beta=0.5, gamma=0.5)``.""",
    ),
    Preset(
        "bsam",
        radius="rho",
        defaults={"rho": 0.01},
        rule="bayes",
        doc=r"""bSAM, Bayesian SAM (Möllenhoff & Khan, ICLR 2023, *SAM as an Optimal Relaxation of Bayes*), with its
    optimizer :class:`~lightning_losses.perturbation.bsam.BSAM` (required: ``configure_optimizers`` returns it; in
    :func:`perturbed_backward` pass ``optimizer=``). Gradient :math:`\tilde g` at the noisy point
    :math:`w + \xi/\sqrt{N s}`, ascent :math:`\epsilon = \rho\,\tilde g/s` (element-wise, not normalised; :math:`s`
    the optimizer's precision), descent gradient :math:`g_p` at :math:`w + \epsilon`; then ``BSAM.step``:
    :math:`m \leftarrow \beta_1 m + (1-\beta_1)(g_p + \delta w)`, :math:`w \leftarrow w - \eta m/s`,
    :math:`s \leftarrow \beta_2 s + (1-\beta_2)(\sqrt{s}|\tilde g| + \text{damping} + \delta)`
    (:mod:`~lightning_losses.perturbation.bayes_step`). The ascent reads :math:`s` and never writes the optimizer's
    state; the first pass (and its reported loss) is at the noisy point; every optimizer parameter is perturbed.
    Default :math:`\rho = 0.01` (the authors' CIFAR-10 recipe with ``BSAM(lr=0.5, prior_precision=40,
    damping=0.1)``, :math:`N` = 4 x the training-set size). Example: ``ll.build_perturbation("bsam", rho=0.01)``
    with ``ll.perturbation.BSAM(model.parameters(), num_data=200_000)``.""",
    ),
):
    register_preset(_preset)

gsam = PERTURBATIONS.get("gsam")
wsam = PERTURBATIONS.get("wsam")
friendly_sam = PERTURBATIONS.get("friendly_sam")
esam = PERTURBATIONS.get("esam")
bsam = PERTURBATIONS.get("bsam")
