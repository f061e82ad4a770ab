"""AcceRL compressed actors: compressor, compressed policy, weight sync and monitor."""

from torchrl_seer.collectors.async_distillation import AsyncDistiller
from torchrl_seer.collectors.auto_compression import AutoCompressionResult, select_compression
from torchrl_seer.collectors.compressed_policy import CompressedPolicy
from torchrl_seer.collectors.compression_steps import (
    Cast,
    CompressionStep,
    Distill,
    Prune,
    Quantize,
    UnsupportedLayerError,
)
from torchrl_seer.collectors.divergence import policy_divergence
from torchrl_seer.collectors.monitor import CompressionMonitor, fallback_ladder
from torchrl_seer.collectors.policy_compressor import PolicyCompressor
from torchrl_seer.collectors.ray_weight_sync import CompressedRayWeightSyncScheme
from torchrl_seer.collectors.static_graph import StaticGraph
from torchrl_seer.collectors.weight_sync import (
    CompressedPacketSender,
    CompressedWeightStrategy,
    CompressedWeightSyncScheme,
)

__all__ = [
    "AsyncDistiller",
    "AutoCompressionResult",
    "Cast",
    "CompressedPacketSender",
    "CompressedPolicy",
    "CompressedRayWeightSyncScheme",
    "CompressedWeightStrategy",
    "CompressedWeightSyncScheme",
    "CompressionMonitor",
    "CompressionStep",
    "Distill",
    "PolicyCompressor",
    "Prune",
    "Quantize",
    "StaticGraph",
    "UnsupportedLayerError",
    "fallback_ladder",
    "policy_divergence",
    "select_compression",
]
