"""torchrl_seer: TorchRL-native parts for cheaper visual reinforcement learning."""

__version__ = "0.1.0.dev0"

__all__ = ["__version__"]
