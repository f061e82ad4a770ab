"""Loss modules and target updaters."""

from torchrl_seer.objectives.curl import CURLLoss
from torchrl_seer.objectives.distillation import DistillationLoss
from torchrl_seer.objectives.kahan_soft_update import KahanSoftUpdate
from torchrl_seer.objectives.low_precision_sac import PRECISION_PRESETS, LowPrecisionSACLoss
from torchrl_seer.objectives.retrace_dqn import RetraceDQNLoss
from torchrl_seer.objectives.retrace_sac import RetraceSACLoss

__all__ = [
    "PRECISION_PRESETS",
    "CURLLoss",
    "DistillationLoss",
    "KahanSoftUpdate",
    "LowPrecisionSACLoss",
    "RetraceDQNLoss",
    "RetraceSACLoss",
]
