"""Replay-buffer storages for image observations, latent replay and in-place rewiring."""

from torchrl_seer.data.checkpoint_checksums import CheckpointCorruptedError
from torchrl_seer.data.delta_checkpointer import DeltaFrameStorageCheckpointer
from torchrl_seer.data.delta_frame_storage import DeltaFrameStorage
from torchrl_seer.data.frame_codecs import (
    FrameCodec,
    KeyframeSparseCodec,
    RawCodec,
    ZstdChunkCodec,
    make_frame_codec,
)
from torchrl_seer.data.latent_capacity import (
    equal_budget_capacity,
    reference_capacity_atari,
    reference_capacity_dmc,
)
from torchrl_seer.data.latent_encode_transform import LatentEncodeTransform
from torchrl_seer.data.latent_migration import (
    LatentMigrationReport,
    LatentReplayOptions,
    migrate_to_latent_replay,
)
from torchrl_seer.data.quantized_storage import QuantizedStorage
from torchrl_seer.data.resizable_writer import ResizableRoundRobinWriter, grow_replay_buffer
from torchrl_seer.data.storage_protocols import (
    EncodedRowStorage,
    RowRelocatingStorage,
    SizedStorage,
)
from torchrl_seer.data.torchrl_internals import storage_nbytes

__all__ = [
    "CheckpointCorruptedError",
    "DeltaFrameStorage",
    "DeltaFrameStorageCheckpointer",
    "EncodedRowStorage",
    "FrameCodec",
    "KeyframeSparseCodec",
    "LatentEncodeTransform",
    "LatentMigrationReport",
    "LatentReplayOptions",
    "QuantizedStorage",
    "RawCodec",
    "ResizableRoundRobinWriter",
    "RowRelocatingStorage",
    "SizedStorage",
    "ZstdChunkCodec",
    "equal_budget_capacity",
    "grow_replay_buffer",
    "make_frame_codec",
    "migrate_to_latent_replay",
    "reference_capacity_atari",
    "reference_capacity_dmc",
    "storage_nbytes",
]
