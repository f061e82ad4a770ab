"""Checkpointer of :class:`~torchrl_seer.data.DeltaFrameStorage`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torchrl.data.replay_buffers.checkpointers import StorageCheckpointerBase

from torchrl_seer.data.checkpoint_checksums import (
    CheckpointCorruptedError,
    verify_checksum_manifest,
    write_checksum_manifest,
)

__all__ = ["DeltaFrameStorageCheckpointer"]

_STATE_FILE = "delta_frame_storage.pt"
_METADATA_FILE = "storage_metadata.json"


class DeltaFrameStorageCheckpointer(StorageCheckpointerBase):
    """Saves a :class:`~torchrl_seer.data.DeltaFrameStorage` with its encoded chunks.

    ``dumps`` writes the storage's :meth:`~torchrl_seer.data.DeltaFrameStorage.state_dict`
    (raw keys, frame-id tables, compressed chunk payloads, a CRC32 of each of these tensors
    and a SHA-256 of the whole state) to ``delta_frame_storage.pt``, a readable
    ``storage_metadata.json``, and ``CHECKSUMS.sha256`` with the SHA-256 of both files.
    ``loads`` verifies every byte against those checksums before restoring anything, and
    restores bit-exactly; any mismatch raises
    :class:`~torchrl_seer.data.checkpoint_checksums.CheckpointCorruptedError` (a
    ``ValueError``). The compressed form is what is written: a checkpoint is about as small
    as the storage.

    TorchRL's save and load hooks (``register_save_hook``), which transform the full
    TensorDict layout of a ``TensorStorage``, are refused: the pixels are not held in that
    layout. To export a buffer in another layout, read ``rb[:]`` into a
    ``LazyMemmapStorage``.

    Examples:
        >>> import tempfile
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import ReplayBuffer
        >>> from torchrl_seer.data import DeltaFrameStorage
        >>> data = TensorDict(
        ...     {"pixels": torch.zeros(4, 1, 8, 8, dtype=torch.uint8),
        ...      "next": {"pixels": torch.ones(4, 1, 8, 8, dtype=torch.uint8)}},
        ...     batch_size=[4],
        ... )
        >>> rb = ReplayBuffer(storage=DeltaFrameStorage(10))
        >>> _ = rb.extend(data)
        >>> with tempfile.TemporaryDirectory() as path:
        ...     rb.dumps(path)
        ...     restored = ReplayBuffer(storage=DeltaFrameStorage(10))
        ...     restored.loads(path)
        >>> len(restored), bool((restored[:]["next", "pixels"] == 1).all())
        (4, True)
    """

    def register_save_hook(self, hook: Any) -> None:
        """Refused: the storage is saved in its compressed form, not a TensorDict layout."""
        raise NotImplementedError(
            "DeltaFrameStorage does not support save hooks: it is checkpointed in its "
            "compressed form, not in the TensorDict layout that TorchRL's hooks transform. "
            "To save a buffer through hooks, copy rb[:] into a LazyMemmapStorage buffer."
        )

    def register_load_hook(self, hook: Any) -> None:
        """Refused: the storage is loaded from its compressed form, not a TensorDict layout."""
        raise NotImplementedError(
            "DeltaFrameStorage does not support load hooks: it loads its own compressed "
            "checkpoints only."
        )

    def dumps(self, storage: Any, path: str | Path) -> None:
        """Writes ``storage`` under the directory ``path``, with checksums."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = storage.state_dict()
        torch.save(state, path / _STATE_FILE)
        metadata = {
            "storage": type(storage).__name__,
            **state["config"],
            "len": state["len"],
            "bytes": storage.bytes(),
        }
        with open(path / _METADATA_FILE, "w") as file:
            json.dump(metadata, file, indent=2)
        write_checksum_manifest(path)

    def loads(self, storage: Any, path: str | Path) -> None:
        """Verifies the checksums of the directory ``path``, then restores ``storage``."""
        path = Path(path)
        state_file = path / _STATE_FILE
        if not state_file.exists():
            found = ""
            if (path / _METADATA_FILE).exists():
                found = (
                    f"; {path} holds a checkpoint of another storage kind (e.g. "
                    "LazyTensorStorage): load it into that storage"
                )
            raise FileNotFoundError(f"no DeltaFrameStorage checkpoint at {state_file}{found}")
        verify_checksum_manifest(path)
        try:
            # restored onto the loading storage's device, whatever device wrote it
            state = torch.load(state_file, weights_only=True, map_location="cpu")
        except Exception as error:  # checksums passed: the file was written by another version
            raise CheckpointCorruptedError(f"cannot read {state_file}: {error}") from error
        storage.load_state_dict(state)
