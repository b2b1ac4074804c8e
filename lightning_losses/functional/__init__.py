"""Pure, per-sample functional forms of every loss. Each returns ``[N]`` (or declares itself batch-level)."""

from lightning_losses.functional import lm, policy, preference, reward_transforms, reweighting, token
from lightning_losses.functional.aggregation import aggregate_tokens
from lightning_losses.functional.binary import bce
from lightning_losses.functional.classification import asymmetric_single_label, cross_entropy, focal, focal_term
from lightning_losses.functional.consistency import js_divergence, jsd
from lightning_losses.functional.distillation import kd, pld
from lightning_losses.functional.distillation_heads import binary_kl_norm, dual_head_kd, self_distillation
from lightning_losses.functional.ensemble import ens_loss
from lightning_losses.functional.entropy import (
    confidence_penalty,
    entropy,
    entropy_minimization,
    per_sample_entropy,
    sequence_entropy,
    tsallis_entropy,
)
from lightning_losses.functional.linear_ce import linear_cross_entropy, linear_entropy, linear_log_probs
from lightning_losses.functional.links import ldr_kl, log_stablemax, spherical_z_loss, stablemax_cross_entropy
from lightning_losses.functional.lm import dco, emo, mixce
from lightning_losses.functional.logit_scale import clip_logits, spectral_decoupling, z_loss
from lightning_losses.functional.lovasz import lovasz_hinge, lovasz_softmax
from lightning_losses.functional.margin import ldam, multi_margin, poisson_nll
from lightning_losses.functional.metric_learning import circle, info_nce, multi_similarity, supcon, triplet
from lightning_losses.functional.multilabel import anyloss, asymmetric, dice, sigmoid_focal, tversky
from lightning_losses.functional.ordinal import hl_gauss, hl_gauss_predict, hl_gauss_target, ordinal_wasserstein
from lightning_losses.functional.overlap import soft_f1, softmax_dice
from lightning_losses.functional.policy import (
    clamped_entropy,
    group_advantages,
    grpo,
    ppo_clip,
    token_covariance,
)
from lightning_losses.functional.policy_entropy import preserve_clipped_gradients, steer_omega, steer_weights
from lightning_losses.functional.preference import (
    alphapo,
    aot,
    aot_unpaired,
    apo_down,
    apo_zero,
    apo_zero_unpaired,
    bco_pair,
    cpo,
    discopop,
    divergence_score,
    dpo,
    exo_pair,
    hdpo,
    hinge,
    ipo,
    kto,
    kto_reference_kl,
    ld_sequence_logps,
    nca_pair,
    npo,
    orpo,
    rdpo,
    rpo,
    simpo,
    sppo_hard,
    wpo_log_weights,
)
from lightning_losses.functional.proxy import arcface, cosface, proxy_anchor
from lightning_losses.functional.ranking import auc_pairwise
from lightning_losses.functional.regression import mse
from lightning_losses.functional.regression_robust import (
    cauchy,
    gaussian_nll,
    huber,
    log_cosh,
    mae_regression,
    pseudo_huber,
    quantile,
)
from lightning_losses.functional.representation import vne, von_neumann_entropy
from lightning_losses.functional.reward_transforms import (
    noisy_reward_backward,
    noisy_reward_forward,
    normalize_weights,
    pf_ppo_weights,
    uwo,
    wco,
)
from lightning_losses.functional.robust import apl, gce, mae, nce, nfl, rce, sce
from lightning_losses.functional.segmentation import focal_tversky, jaccard
from lightning_losses.functional.sigmoid_poly import sigmoid_poly1
from lightning_losses.functional.surrogates import comp_sum, ovr, poly1, poly_focal, squentropy, taylor_ce
from lightning_losses.functional.tempered import bi_tempered
from lightning_losses.functional.token import sequence_logps, token_cross_entropy, token_logps

__all__ = [
    "aggregate_tokens",
    "alphapo",
    "anyloss",
    "aot",
    "aot_unpaired",
    "apl",
    "apo_down",
    "apo_zero",
    "apo_zero_unpaired",
    "arcface",
    "asymmetric",
    "asymmetric_single_label",
    "auc_pairwise",
    "bce",
    "bco_pair",
    "bi_tempered",
    "binary_kl_norm",
    "cauchy",
    "circle",
    "clamped_entropy",
    "clip_logits",
    "comp_sum",
    "confidence_penalty",
    "cosface",
    "cpo",
    "cross_entropy",
    "dco",
    "dice",
    "discopop",
    "divergence_score",
    "dpo",
    "dual_head_kd",
    "emo",
    "ens_loss",
    "entropy",
    "entropy_minimization",
    "exo_pair",
    "focal",
    "focal_term",
    "focal_tversky",
    "gaussian_nll",
    "gce",
    "group_advantages",
    "grpo",
    "hdpo",
    "hinge",
    "hl_gauss",
    "hl_gauss_predict",
    "hl_gauss_target",
    "huber",
    "info_nce",
    "ipo",
    "jaccard",
    "js_divergence",
    "jsd",
    "kd",
    "kto",
    "kto_reference_kl",
    "ld_sequence_logps",
    "ldam",
    "ldr_kl",
    "linear_cross_entropy",
    "linear_entropy",
    "linear_log_probs",
    "lm",
    "log_cosh",
    "log_stablemax",
    "lovasz_hinge",
    "lovasz_softmax",
    "mae",
    "mae_regression",
    "mixce",
    "mse",
    "multi_margin",
    "multi_similarity",
    "nca_pair",
    "nce",
    "nfl",
    "npo",
    "ordinal_wasserstein",
    "orpo",
    "ovr",
    "per_sample_entropy",
    "pld",
    "poisson_nll",
    "policy",
    "poly1",
    "poly_focal",
    "ppo_clip",
    "preference",
    "proxy_anchor",
    "pseudo_huber",
    "quantile",
    "rce",
    "rdpo",
    "reweighting",
    "rpo",
    "sce",
    "self_distillation",
    "sequence_entropy",
    "sequence_logps",
    "sigmoid_focal",
    "sigmoid_poly1",
    "simpo",
    "soft_f1",
    "softmax_dice",
    "spectral_decoupling",
    "spherical_z_loss",
    "sppo_hard",
    "squentropy",
    "stablemax_cross_entropy",
    "supcon",
    "taylor_ce",
    "token",
    "token_covariance",
    "token_cross_entropy",
    "token_logps",
    "triplet",
    "tsallis_entropy",
    "tversky",
    "vne",
    "von_neumann_entropy",
    "wpo_log_weights",
    "z_loss",
    "reward_transforms",
    "noisy_reward_backward",
    "noisy_reward_forward",
    "normalize_weights",
    "pf_ppo_weights",
    "uwo",
    "wco",
    "preserve_clipped_gradients",
    "steer_omega",
    "steer_weights",
]

# memorization-aware training (issue 20)
from lightning_losses.functional.mat import mat_joint, mat_loss, mat_shift  # noqa: E402

__all__ += ["mat_joint", "mat_loss", "mat_shift"]

# importance-aware adversarial training (issue 20)
from lightning_losses.functional.adversarial import sovr  # noqa: E402

__all__ += ["sovr"]
