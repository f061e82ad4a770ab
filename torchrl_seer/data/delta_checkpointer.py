"""Checkpointer of :class:`~torchrl_seer.data.DeltaFrameStorage`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torchrl.data.replay_buffers.checkpointers import StorageCheckpointerBase

__all__ = ["DeltaFrameStorageCheckpointer"]

_STATE_FILE = "delta_frame_storage.pt"
_METADATA_FILE = "storage_metadata.json"


class DeltaFrameStorageCheckpointer(StorageCheckpointerBase):
    """Saves a :class:`~torchrl_seer.data.DeltaFrameStorage` with its encoded chunks.

    ``dumps`` writes the storage's :meth:`~torchrl_seer.data.DeltaFrameStorage.state_dict`
    (raw keys, frame-id tables, compressed chunk payloads and their CRC32 checksums) to
    ``delta_frame_storage.pt`` plus a readable ``storage_metadata.json``; ``loads`` restores
    it bit-exactly and raises ``ValueError`` if a payload does not match its checksum. The
    compressed form is what is written: a checkpoint is about as small as the storage.

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

    def dumps(self, storage: Any, path: str | Path) -> None:
        """Writes ``storage`` under the directory ``path``."""
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

    def loads(self, storage: Any, path: str | Path) -> None:
        """Restores ``storage`` from the directory ``path``."""
        path = Path(path)
        state_file = path / _STATE_FILE
        if not state_file.exists():
            raise FileNotFoundError(f"no DeltaFrameStorage checkpoint at {state_file}")
        storage.load_state_dict(torch.load(state_file, weights_only=True))
