"""Registered loss modules; importing this package registers every built-in loss.

The public bases for writing a loss: :class:`Loss` (see its "Writing a loss" section) and the family bases
:class:`LabelLoss`, :class:`BinaryLoss`, :class:`SetLevelLoss`, :class:`RegressionLoss`, :class:`DistillationLoss`,
:class:`PreferenceLoss`, :class:`PairedLoss`, :class:`TokenLoss`, :class:`EmbeddingLoss`, :class:`ProxyLoss`,
:class:`PolicyLoss` and :class:`EntropyTerm`.
"""

# importing each family module registers its losses
from lightning_losses.losses.base import FAMILIES, LOSSES, Loss, build_loss, list_losses
from lightning_losses.losses.binary import BCE
from lightning_losses.losses.classification import AsymmetricSingleLabel, CrossEntropy, Focal
from lightning_losses.losses.distillation import KD, PLD, BinaryKLNorm, DualHeadKD, SelfDistillation
from lightning_losses.losses.entropy import EMFT, ConfidencePenalty, EntropyMinimization, EntropyTerm
from lightning_losses.losses.environment import CORAL, IRMv1, VREx
from lightning_losses.losses.families import (
    BinaryLoss,
    DistillationLoss,
    LabelLoss,
    PreferenceLoss,
    RegressionLoss,
    SetLevelLoss,
    TokenLoss,
)
from lightning_losses.losses.linear_ce import LinearCrossEntropy
from lightning_losses.losses.links import LDRKL, SphericalZLoss, StableMaxCrossEntropy
from lightning_losses.losses.logit_scale import LogitClip, SpectralDecoupling, ZLoss
from lightning_losses.losses.margin import LDAM, BiTempered, MultiMargin, PoissonNLL, SigmoidPoly1
from lightning_losses.losses.metric_learning import Circle, EmbeddingLoss, InfoNCE, MultiSimilarity, SupCon, Triplet
from lightning_losses.losses.multilabel import AnyLoss, Asymmetric, Dice, SigmoidFocal, SoftF1, Tversky
from lightning_losses.losses.ordinal import HLGauss, OrdinalWasserstein
from lightning_losses.losses.policy import GRPO, PolicyLoss, PPOClip
from lightning_losses.losses.policy_entropy import CEGPPO, STEER
from lightning_losses.losses.preference import DPO, HDPO, IPO, KTO, NPO, RDPO, RPO, PairedLoss, SimPO
from lightning_losses.losses.preference_named import (
    LDDPO,
    DPOAlphaDivergence,
    DPOForwardKL,
    DPOJSDivergence,
    DPOReverseKL,
)
from lightning_losses.losses.preference_reference_free import CPO, ORPO, AlphaPO
from lightning_losses.losses.preference_trl import (
    AOT,
    AOTUnpaired,
    APODown,
    APOZero,
    BCOPair,
    DiscoPOP,
    ExoPair,
    Hinge,
    NCAPair,
    SPPOHard,
)
from lightning_losses.losses.preference_unpaired import APOZeroUnpaired
from lightning_losses.losses.proxy import ArcFace, CosFace, ProxyAnchor, ProxyLoss, SubCenterArcFace
from lightning_losses.losses.ranking import VNE, AUCPairwise, EnsLoss
from lightning_losses.losses.regression import MSE
from lightning_losses.losses.regression_robust import (
    Cauchy,
    GaussianNLL,
    Huber,
    LogCosh,
    MAERegression,
    PseudoHuber,
    Quantile,
)
from lightning_losses.losses.reward_transforms import (
    REWARD_TRANSFORMS,
    RewardSignal,
    RewardTransform,
    build_reward_transform,
    list_reward_transforms,
)
from lightning_losses.losses.robust import APL, GCE, MAE, SCE
from lightning_losses.losses.segmentation import JSD, FocalTversky, Jaccard, LovaszHinge, LovaszSoftmax
from lightning_losses.losses.surrogates import OVR, CompSum, Poly1, PolyFocal, Squentropy, TaylorCE
from lightning_losses.losses.token import DCO, EMO, MixCE, TokenCrossEntropy

__all__ = [
    "AlphaPO",
    "AnyLoss",
    "AOT",
    "AOTUnpaired",
    "APL",
    "APODown",
    "APOZero",
    "APOZeroUnpaired",
    "ArcFace",
    "Asymmetric",
    "AsymmetricSingleLabel",
    "AUCPairwise",
    "BCE",
    "BCOPair",
    "BinaryKLNorm",
    "BinaryLoss",
    "BiTempered",
    "build_loss",
    "Cauchy",
    "Circle",
    "CompSum",
    "ConfidencePenalty",
    "CORAL",
    "CosFace",
    "CPO",
    "CrossEntropy",
    "DCO",
    "Dice",
    "DiscoPOP",
    "DistillationLoss",
    "DPO",
    "DualHeadKD",
    "EmbeddingLoss",
    "EMFT",
    "EMO",
    "EnsLoss",
    "EntropyMinimization",
    "EntropyTerm",
    "ExoPair",
    "FAMILIES",
    "Focal",
    "FocalTversky",
    "GaussianNLL",
    "GCE",
    "GRPO",
    "HDPO",
    "Hinge",
    "HLGauss",
    "Huber",
    "InfoNCE",
    "IPO",
    "IRMv1",
    "Jaccard",
    "JSD",
    "KD",
    "KTO",
    "LabelLoss",
    "LDAM",
    "LDRKL",
    "LinearCrossEntropy",
    "list_losses",
    "LogCosh",
    "LogitClip",
    "Loss",
    "LOSSES",
    "LovaszHinge",
    "LovaszSoftmax",
    "MAE",
    "MAERegression",
    "MixCE",
    "MSE",
    "MultiMargin",
    "MultiSimilarity",
    "NCAPair",
    "NPO",
    "OrdinalWasserstein",
    "ORPO",
    "OVR",
    "PairedLoss",
    "PLD",
    "PoissonNLL",
    "PolicyLoss",
    "Poly1",
    "PolyFocal",
    "PPOClip",
    "PreferenceLoss",
    "ProxyAnchor",
    "ProxyLoss",
    "PseudoHuber",
    "Quantile",
    "RDPO",
    "RegressionLoss",
    "RPO",
    "SCE",
    "SelfDistillation",
    "SetLevelLoss",
    "SigmoidFocal",
    "SigmoidPoly1",
    "SimPO",
    "SoftF1",
    "SpectralDecoupling",
    "SphericalZLoss",
    "SPPOHard",
    "Squentropy",
    "StableMaxCrossEntropy",
    "SubCenterArcFace",
    "SupCon",
    "TaylorCE",
    "TokenCrossEntropy",
    "TokenLoss",
    "Triplet",
    "Tversky",
    "VNE",
    "VREx",
    "ZLoss",
    "DPOAlphaDivergence",
    "DPOForwardKL",
    "DPOJSDivergence",
    "DPOReverseKL",
    "LDDPO",
    "REWARD_TRANSFORMS",
    "RewardSignal",
    "RewardTransform",
    "build_reward_transform",
    "list_reward_transforms",
    "STEER",
    "CEGPPO",
]

# memorization-aware training (issue 20)
from lightning_losses.losses.mat import MAT  # noqa: E402

__all__ += ["MAT"]

# importance-aware adversarial training (issue 20)
from lightning_losses.losses.adversarial import SOVR  # noqa: E402

__all__ += ["SOVR"]
