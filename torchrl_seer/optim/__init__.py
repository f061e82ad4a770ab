"""Optimizers and loss scalers for pure low-precision training."""

from torchrl_seer.optim.amp_style_loss_scaler import AmpStyleLossScaler
from torchrl_seer.optim.compensated_sum import (
    COMPENSATION_FRACTION_BITS,
    check_compensation_dtype,
    compensated_add_,
    compensated_lerp_,
    compensated_value,
    residual_quantum,
    store_compensated_,
)
from torchrl_seer.optim.compound_loss_scaler import CompoundLossScaler
from torchrl_seer.optim.finite_step import all_finite, finite_step
from torchrl_seer.optim.hadam import HAdam
from torchrl_seer.optim.loss_scaler import LossScaler
from torchrl_seer.optim.loss_scaling_stepper import NONFINITE_INPUTS_KEY, LossScalingStepper
from torchrl_seer.optim.native_precision import has_native_kernels
from torchrl_seer.optim.stochastic_rounding import stochastic_add_, stochastic_store_

__all__ = [
    "COMPENSATION_FRACTION_BITS",
    "NONFINITE_INPUTS_KEY",
    "AmpStyleLossScaler",
    "CompoundLossScaler",
    "HAdam",
    "LossScaler",
    "LossScalingStepper",
    "all_finite",
    "check_compensation_dtype",
    "compensated_add_",
    "compensated_lerp_",
    "compensated_value",
    "finite_step",
    "has_native_kernels",
    "residual_quantum",
    "stochastic_add_",
    "stochastic_store_",
    "store_compensated_",
]
