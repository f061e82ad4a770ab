"""AcceRL compressed actors: compressor, compressed policy, weight sync and monitor."""

from torchrl_seer.collectors.compressed_policy import CompressedPolicy
from torchrl_seer.collectors.compression_steps import (
    Cast,
    CompressionStep,
    Distill,
    Prune,
    Quantize,
    UnsupportedLayerError,
)
from torchrl_seer.collectors.policy_compressor import PolicyCompressor
from torchrl_seer.collectors.weight_sync import CompressedWeightStrategy, CompressedWeightSyncScheme

__all__ = [
    "Cast",
    "CompressedPolicy",
    "CompressedWeightStrategy",
    "CompressedWeightSyncScheme",
    "CompressionStep",
    "Distill",
    "PolicyCompressor",
    "Prune",
    "Quantize",
    "UnsupportedLayerError",
]
