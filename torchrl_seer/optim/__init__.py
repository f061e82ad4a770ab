"""Optimizers and loss scalers for pure low-precision training."""

from torchrl_seer.optim.amp_style_loss_scaler import AmpStyleLossScaler
from torchrl_seer.optim.compound_loss_scaler import CompoundLossScaler
from torchrl_seer.optim.hadam import HAdam
from torchrl_seer.optim.loss_scaler import LossScaler, all_finite
from torchrl_seer.optim.loss_scaling_stepper import LossScalingStepper

__all__ = [
    "AmpStyleLossScaler",
    "CompoundLossScaler",
    "HAdam",
    "LossScaler",
    "LossScalingStepper",
    "all_finite",
]
