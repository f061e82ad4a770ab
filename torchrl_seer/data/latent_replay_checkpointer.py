"""A storage checkpointer that lets a pixel replay buffer load a latent-replay checkpoint."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torchrl.data.replay_buffers.checkpointers import StorageCheckpointerBase
from torchrl.data.replay_buffers.storages import Storage

__all__ = ["LatentReplayCheckpointer"]

_MARKER = "latent_replay.json"


class LatentReplayCheckpointer(StorageCheckpointerBase):
    """Wraps a storage's checkpointer to mark latent-replay checkpoints and to load them.

    On a latent storage (installed by
    :func:`~torchrl_seer.data.replay_rewiring.switch_to_latent_replay`), :meth:`dumps` writes
    the wrapped checkpoint plus a ``latent_replay.json`` marker holding the capacity. On the
    pixel storage of a buffer that a :class:`~torchrl_seer.trainers.FreezeEncoderHook` watches,
    :meth:`loads` of a marked checkpoint first asks ``on_latent_checkpoint(capacity)`` to switch
    the buffer to an empty latent storage, then loads into that storage: the buffer can be
    restored before the hook (TorchRL's :class:`~torchrl.checkpoint.Checkpoint` restores
    components in name order). Unmarked checkpoints load as the wrapped checkpointer loads them.

    Args:
        checkpointer (StorageCheckpointerBase): the storage's own checkpointer.

    Keyword Args:
        on_latent_checkpoint (callable, optional): ``capacity -> Storage``: switches the buffer
            to latent replay and returns its new (empty) storage. ``None`` on latent storages.
    """

    def __init__(
        self,
        checkpointer: StorageCheckpointerBase,
        *,
        on_latent_checkpoint: Callable[[int], Storage] | None = None,
    ) -> None:
        super().__init__()
        self.checkpointer = checkpointer
        self.on_latent_checkpoint = on_latent_checkpoint

    def register_save_hook(self, hook: Callable[..., Any]) -> None:
        """Registers a save hook on the wrapped checkpointer."""
        self.checkpointer.register_save_hook(hook)

    def register_load_hook(self, hook: Callable[..., Any]) -> None:
        """Registers a load hook on the wrapped checkpointer."""
        self.checkpointer.register_load_hook(hook)

    def _detach_from_load_path(self, storage: Storage) -> None:
        self.checkpointer._detach_from_load_path(storage)

    def dumps(self, storage: Storage, path: str | Path) -> None:
        """Writes the wrapped checkpoint, and the marker if ``storage`` holds latents."""
        self.checkpointer.dumps(storage, path)
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
        self.checkpointer.loads(storage, path)
