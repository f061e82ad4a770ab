"""SEER's freeze: the model-side function, and the trainer hook that adds the replay switch."""

from torchrl_seer.trainers.encoder_convergence import CONVERGENCE_STATISTICS, ParameterConvergence
from torchrl_seer.trainers.encoder_freeze import (
    EncoderFreezeReport,
    FreezeSnapshot,
    drop_from_optimizers,
    freeze_encoder,
    frozen_tensors,
    sync_targets,
)
from torchrl_seer.trainers.freeze_encoder_hook import FreezeEncoderHook

__all__ = [
    "CONVERGENCE_STATISTICS",
    "EncoderFreezeReport",
    "FreezeEncoderHook",
    "FreezeSnapshot",
    "ParameterConvergence",
    "drop_from_optimizers",
    "freeze_encoder",
    "frozen_tensors",
    "sync_targets",
]
