"""Trainer hooks."""

from torchrl_seer.trainers.encoder_convergence import ParameterConvergence
from torchrl_seer.trainers.freeze_encoder_hook import FreezeEncoderHook

__all__ = ["FreezeEncoderHook", "ParameterConvergence"]
