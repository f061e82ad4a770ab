"""Network modules and distributions."""

from torchrl_seer.modules.crops import CenterCrop, RandomCrop
from torchrl_seer.modules.distributions import (
    DISCRETE_DISTRIBUTIONS,
    StableNormal,
    StableTanhNormal,
    ThresholdedTanhTransform,
    deterministic_action,
    policy_distribution,
)
from torchrl_seer.modules.egreedy_log_prob import EGreedyLogProbModule
from torchrl_seer.modules.encoders import (
    CURLPixelEncoder,
    DataEfficientAtariEncoder,
    NatureAtariEncoder,
    PixelScale,
    SplitEncoder,
)
from torchrl_seer.modules.latent_features import LatentOrPixelFeatures

__all__ = [
    "DISCRETE_DISTRIBUTIONS",
    "CURLPixelEncoder",
    "CenterCrop",
    "DataEfficientAtariEncoder",
    "EGreedyLogProbModule",
    "LatentOrPixelFeatures",
    "NatureAtariEncoder",
    "PixelScale",
    "RandomCrop",
    "SplitEncoder",
    "StableNormal",
    "StableTanhNormal",
    "ThresholdedTanhTransform",
    "deterministic_action",
    "policy_distribution",
]
