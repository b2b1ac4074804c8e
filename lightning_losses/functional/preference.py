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

The functions live in :mod:`~lightning_losses.functional.preference_pairwise` (DPO family),
:mod:`~lightning_losses.functional.preference_lengths` (RPO, SimPO),
:mod:`~lightning_losses.functional.preference_trl` (TRL's hinge, exo_pair, discopop, nca_pair, bco_pair, sppo_hard,
apo_zero, apo_down, apo_zero_unpaired), :mod:`~lightning_losses.functional.preference_sorted` (AOT),
:mod:`~lightning_losses.functional.preference_reference_free` (CPO, ORPO, AlphaPO, LD-DPO log-probs) and
:mod:`~lightning_losses.functional.preference_unpaired` (KTO, NPO, WPO log-weights); import them from here.
"""

from __future__ import annotations

from lightning_losses.functional.preference_lengths import rpo, simpo
from lightning_losses.functional.preference_pairwise import (
    DIVERGENCES,
    check_sequence_logps,
    divergence_score,
    dpo,
    hdpo,
    ipo,
    preference_margin,
    rdpo,
)
from lightning_losses.functional.preference_reference_free import alphapo, cpo, ld_sequence_logps, orpo
from lightning_losses.functional.preference_sorted import aot, aot_unpaired
from lightning_losses.functional.preference_trl import (
    apo_down,
    apo_zero,
    apo_zero_unpaired,
    bco_pair,
    discopop,
    exo_pair,
    hinge,
    log_ratios,
    nca_pair,
    sppo_hard,
)
from lightning_losses.functional.preference_unpaired import kto, kto_reference_kl, npo, wpo_log_weights

__all__ = [
    "DIVERGENCES",
    "alphapo",
    "aot",
    "aot_unpaired",
    "apo_down",
    "apo_zero",
    "apo_zero_unpaired",
    "bco_pair",
    "cpo",
    "discopop",
    "divergence_score",
    "exo_pair",
    "hinge",
    "ld_sequence_logps",
    "log_ratios",
    "nca_pair",
    "orpo",
    "sppo_hard",
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
