"""Storage checkpointers that let a pixel replay buffer load a latent-replay checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from torchrl.data.replay_buffers.checkpointers import (
    StorageCheckpointerBase,
    TensorStorageCheckpointer,
)
from torchrl.data.replay_buffers.storages import Storage

from torchrl_seer.data.delta_checkpointer import DeltaFrameStorageCheckpointer

__all__ = [
    "LatentReplayCheckpointer",
    "LatentReplayDeltaCheckpointer",
    "latent_replay_checkpointer",
]

_MARKER = "latent_replay.json"


class _LatentReplayCheckpointing:
    """Adds the latent-replay marker to the checkpointer class it is mixed into."""

    on_latent_checkpoint: Callable[[int], Storage] | None = None

    def dumps(self, storage: Storage, path: str | Path) -> None:
        """Writes the checkpoint, and the marker if ``storage`` holds latents."""
        super().dumps(storage, path)  # type: ignore[misc]
        if self.on_latent_checkpoint is None:
            with open(Path(path) / _MARKER, "w") as file:
                json.dump({"capacity": int(storage.max_size)}, file)

    def loads(self, storage: Storage, path: str | Path) -> None:
        """Loads a checkpoint, switching a watched pixel buffer first if it is a latent one."""
        marker = Path(path) / _MARKER
        if self.on_latent_checkpoint is not None and marker.exists():
            with open(marker) as file:
                capacity = int(json.load(file)["capacity"])
            self.on_latent_checkpoint(capacity).loads(path)
            return
        super().loads(storage, path)  # type: ignore[misc]


class LatentReplayCheckpointer(_LatentReplayCheckpointing, TensorStorageCheckpointer):
    """TorchRL's :class:`TensorStorageCheckpointer` that marks and recognises latent replay.

    On a latent storage (installed by
    :func:`~torchrl_seer.data.torchrl_internals.switch_to_latent_replay`), ``dumps`` also writes
    a ``latent_replay.json`` marker holding the capacity. On the pixel storage of a buffer that
    a :class:`~torchrl_seer.trainers.FreezeEncoderHook` watches (``on_latent_checkpoint`` set),
    ``loads`` of a marked checkpoint first asks ``on_latent_checkpoint(capacity)`` to switch
    the buffer to an empty latent storage, then loads into that storage: the buffer can be
    restored before the hook (TorchRL's :class:`~torchrl.checkpoint.Checkpoint` restores
    components in name order). Unmarked checkpoints load as TorchRL loads them.

    Build it from an existing checkpointer with :func:`latent_replay_checkpointer`.
    """


class LatentReplayDeltaCheckpointer(_LatentReplayCheckpointing, DeltaFrameStorageCheckpointer):
    """:class:`LatentReplayCheckpointer` for a :class:`~torchrl_seer.data.DeltaFrameStorage`."""


_MIXED: dict[type[StorageCheckpointerBase], type[_LatentReplayCheckpointing]] = {
    TensorStorageCheckpointer: LatentReplayCheckpointer,
    DeltaFrameStorageCheckpointer: LatentReplayDeltaCheckpointer,
}


def latent_replay_checkpointer(
    checkpointer: StorageCheckpointerBase,
    *,
    on_latent_checkpoint: Callable[[int], Storage] | None = None,
) -> StorageCheckpointerBase:
    """The same checkpointer (same class family, same hooks) with the latent-replay marker.

    Args:
        checkpointer (StorageCheckpointerBase): a storage's checkpointer.

    Keyword Args:
        on_latent_checkpoint (callable, optional): ``capacity -> Storage``: switches the buffer
            to latent replay and returns its new (empty) storage; ``None`` on latent storages,
            whose checkpoints are marked.

    Returns:
        A :class:`LatentReplayCheckpointer` (or its delta variant); a checkpointer of another
        class is returned unchanged (its checkpoints are neither marked nor recognised).
    """
    base = next((b for b in _MIXED if type(checkpointer) in (b, _MIXED[b])), None)
    if base is None:
        return checkpointer
    mixed_class = _MIXED[base]
    mixed = object.__new__(mixed_class)
    mixed.__dict__.update(vars(checkpointer))
    mixed.on_latent_checkpoint = on_latent_checkpoint
    assert isinstance(mixed, StorageCheckpointerBase)
    return mixed
