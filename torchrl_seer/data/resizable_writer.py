"""A round-robin replay-buffer writer whose storage capacity can change in place."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torchrl.data import ReplayBuffer
from torchrl.data.replay_buffers.writers import RoundRobinWriter

from torchrl_seer.data.torchrl_internals import (
    adopt_loaded_capacity,
    resize_round_robin,
    set_writer_position,
    write_transaction,
    writer_position,
)

__all__ = ["ResizableRoundRobinWriter", "grow_replay_buffer"]

_CAPACITY_FILE = "capacity.json"


class ResizableRoundRobinWriter(RoundRobinWriter):
    """A :class:`~torchrl.data.RoundRobinWriter` that can grow or shrink its storage in place.

    Writes exactly as ``RoundRobinWriter`` does (same order, cursor, write count and
    generations), with two additions:

    * :meth:`resize` changes the capacity of the storage in place: the newest
      ``min(len, capacity)`` transitions move, in chronological order, to slots ``0..n-1``,
      the cursor resumes at ``n`` and every attached buffer's sampler follows
      (:class:`~torchrl.data.PrioritizedSampler` priorities move with their transitions,
      :class:`~torchrl.data.SliceSampler` caches are dropped). It works on any
      :class:`~torchrl.data.TensorStorage` with ``ndim=1``: TorchRL's lazy and memory-mapped
      storages and the storages of this library
      (:class:`~torchrl_seer.data.DeltaFrameStorage` moves its frame ids with the rows,
      :class:`~torchrl_seer.data.QuantizedStorage` its encoded rows).
    * writes are transactional: a write the storage refuses leaves the cursor and the write
      count as they were.

    The capacity is part of :meth:`state_dict` and of :meth:`dumps` / :meth:`loads`. A resized
    buffer is restored into a buffer of the same capacity; an empty buffer built with the
    original capacity is resized to the checkpoint's capacity when the writer is loaded
    (and ``load_state_dict`` of a lazy storage that was not initialized keeps the checkpoint's
    rows, whose count becomes the capacity).

    Limits:
        Storages with ``ndim > 1`` and non-tensor storages (``ListStorage``) cannot be resized.

    Args:
        compilable (bool, optional): as for :class:`~torchrl.data.RoundRobinWriter`.

    Keyword Args:
        track_generations (bool, optional): as for :class:`~torchrl.data.RoundRobinWriter`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, PrioritizedSampler, ReplayBuffer
        >>> rb = ReplayBuffer(
        ...     storage=LazyTensorStorage(4),
        ...     sampler=PrioritizedSampler(4, alpha=1.0, beta=1.0),
        ...     writer=ResizableRoundRobinWriter(),
        ... )
        >>> _ = rb.extend(TensorDict({"x": torch.arange(6)}, [6]))
        >>> rb.writer.resize(8)
        >>> rb.storage.get(torch.arange(4))["x"]
        tensor([2, 3, 4, 5])
        >>> _ = rb.extend(TensorDict({"x": torch.tensor([6])}, [1]))
        >>> len(rb), rb.writer.capacity, rb.storage.get(4)["x"]
        (5, 8, tensor(6))
    """

    def __init__(self, compilable: bool = False, *, track_generations: bool = False) -> None:
        super().__init__(compilable, track_generations=track_generations)

    @property
    def capacity(self) -> int:
        """The capacity of the storage written to."""
        if self._storage is None:
            raise RuntimeError("the writer has no storage: register it with a buffer first.")
        return int(self._storage.max_size)

    def resize(self, capacity: int) -> None:
        """Grows or shrinks the storage in place, keeping the newest transitions in order.

        Args:
            capacity (int): the new capacity (``>= 1``).
        """
        resize_round_robin(self, capacity)

    def add(self, data: Any) -> int | torch.Tensor:
        """Writes one transition at the cursor (see :class:`~torchrl.data.RoundRobinWriter`)."""
        with write_transaction(self):
            return super().add(data)

    def extend(self, data: Sequence) -> torch.Tensor:
        """Writes a batch from the cursor on (see :class:`~torchrl.data.RoundRobinWriter`)."""
        with write_transaction(self):
            return super().extend(data)

    def state_dict(self) -> dict[str, Any]:
        """Cursor, write count, generations and the capacity."""
        state = super().state_dict()
        if self._storage is not None:
            state["capacity"] = self.capacity
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`, matching the storage's capacity to the checkpoint's.

        Args:
            state_dict (dict): what :meth:`state_dict` returned.
        """
        state_dict = dict(state_dict)
        capacity = state_dict.pop("capacity", None)
        super().load_state_dict(state_dict)
        if capacity is not None:
            self._match_capacity(int(capacity))

    def dumps(self, path: str | Path) -> None:
        """Writes the TorchRL writer checkpoint plus the capacity."""
        super().dumps(path)
        if self._storage is not None:
            with open(Path(path).absolute() / _CAPACITY_FILE, "w") as file:
                json.dump({"capacity": self.capacity}, file)

    def loads(self, path: str | Path) -> None:
        """Reads a checkpoint written by :meth:`dumps`."""
        super().loads(path)
        capacity_file = Path(path).absolute() / _CAPACITY_FILE
        if capacity_file.exists():
            with open(capacity_file) as file:
                self._match_capacity(int(json.load(file)["capacity"]))

    def _match_capacity(self, capacity: int) -> None:
        if self._storage is None or self.capacity == capacity:
            return
        position = writer_position(self)
        if len(self._storage) == 0:
            resize_round_robin(self, capacity)
        elif adopt_loaded_capacity(self._storage) != capacity:
            raise ValueError(
                f"the checkpoint was written by a buffer of capacity {capacity} but the storage "
                f"holds {len(self._storage)} rows of capacity {self.capacity}: build the buffer "
                f"with capacity {capacity} (or call writer.resize({capacity}) while it is "
                "empty) before loading."
            )
        set_writer_position(self, *position)


def grow_replay_buffer(replay_buffer: ReplayBuffer, capacity: int) -> None:
    """Changes the capacity of a replay buffer in place, keeping order, cursor and priorities.

    What :meth:`ResizableRoundRobinWriter.resize` does, for a buffer written by any
    :class:`~torchrl.data.RoundRobinWriter` (TorchRL's default writers included): the newest
    ``min(len, capacity)`` transitions move oldest first to slots ``0..n-1``, the writer resumes
    at ``n`` and a :class:`~torchrl.data.PrioritizedSampler` keeps every transition's priority.
    Shrinking keeps the newest ``capacity`` transitions.

    Args:
        replay_buffer (ReplayBuffer): a buffer on a :class:`~torchrl.data.TensorStorage`
            (``LazyTensorStorage``, ``LazyMemmapStorage``,
            :class:`~torchrl_seer.data.QuantizedStorage`,
            :class:`~torchrl_seer.data.DeltaFrameStorage`...).
        capacity (int): the new capacity.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> rb = ReplayBuffer(storage=LazyTensorStorage(4))
        >>> _ = rb.extend(TensorDict({"x": torch.arange(6)}, [6]))
        >>> grow_replay_buffer(rb, 8)
        >>> rb.storage.get(torch.arange(4))["x"]
        tensor([2, 3, 4, 5])
        >>> _ = rb.extend(TensorDict({"x": torch.tensor([6])}, [1]))
        >>> len(rb), rb.storage.get(4)["x"]
        (5, tensor(6))
    """
    resize_round_robin(replay_buffer.writer, capacity)
