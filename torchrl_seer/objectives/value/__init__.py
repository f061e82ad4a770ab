"""Value estimators TorchRL lacks: Retrace(λ)."""

from torchrl_seer.objectives.value.retrace import Retrace, retrace_return

__all__ = ["Retrace", "retrace_return"]
