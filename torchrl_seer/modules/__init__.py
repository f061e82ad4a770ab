"""Network modules and distributions."""

from torchrl_seer.modules.crops import CenterCrop, RandomCrop
from torchrl_seer.modules.distributions import (
    StableNormal,
    StableTanhNormal,
    ThresholdedTanhTransform,
)
from torchrl_seer.modules.encoders import (
    CURLPixelEncoder,
    DataEfficientAtariEncoder,
    NatureAtariEncoder,
    PixelScale,
    SplitEncoder,
)
from torchrl_seer.modules.latent_features import LatentOrPixelFeatures

__all__ = [
    "CURLPixelEncoder",
    "CenterCrop",
    "DataEfficientAtariEncoder",
    "LatentOrPixelFeatures",
    "NatureAtariEncoder",
    "PixelScale",
    "RandomCrop",
    "SplitEncoder",
    "StableNormal",
    "StableTanhNormal",
    "ThresholdedTanhTransform",
]
