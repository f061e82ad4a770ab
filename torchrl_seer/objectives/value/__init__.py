"""Value estimators: Retrace(λ) (absent from TorchRL) and a taken-action V-trace."""

from torchrl_seer.objectives.value.retrace import Retrace, retrace_return
from torchrl_seer.objectives.value.vtrace import TakenActionVTrace

__all__ = ["Retrace", "TakenActionVTrace", "retrace_return"]
