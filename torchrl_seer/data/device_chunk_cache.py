"""Decoded frame chunks kept on a device, so that frame stacks are gathered there by index."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["DeviceChunkCache"]


class DeviceChunkCache:
    """A bounded LRU cache of decoded frame chunks, held in one tensor on a device.

    Each cached chunk takes one row of a ``[rows, chunk_len, frame_numel]`` ``uint8`` tensor
    (the *slab*) on ``device`` and holds the chunk's first ``count`` frames (a read needs a
    chunk's frames up to the last one it asks for). Frames are read back with one
    ``index_select`` on the device, at positions ``row * chunk_len + offset``. The slab is
    allocated when first needed and grows by doubling, up to ``capacity_bytes`` rounded down
    to whole chunks; the least recently used chunk gives up its row beyond that.

    The cache only keeps what it is given: the caller decodes, and tells it which chunks
    were freed (:meth:`discard`), so a row never outlives the frames it copies. It is not
    thread-safe: the caller serializes its use.

    Args:
        chunk_len: frames per chunk.
        frame_numel: bytes of one frame.

    Keyword Args:
        device: where the decoded frames live.
        capacity_bytes: bound on the slab; below one chunk the cache holds nothing.

    Examples:
        >>> import torch
        >>> cache = DeviceChunkCache(4, 3, device="cpu", capacity_bytes=2 * 4 * 3)
        >>> frames = torch.arange(2 * 4 * 3, dtype=torch.uint8).view(2, 4, 3)
        >>> cache.store([7, 9], [4, 2], frames)  # chunk 7: 4 frames, chunk 9: its first 2
        [0, 1]
        >>> cache.lookup([9, 7], [1, 3])  # the rows of chunks holding enough frames
        [1, 0]
        >>> cache.gather(torch.tensor([1 * 4 + 1, 0 * 4 + 3]))  # frame 1 of 9, frame 3 of 7
        tensor([[15, 16, 17],
                [ 9, 10, 11]], dtype=torch.uint8)
    """

    def __init__(
        self, chunk_len: int, frame_numel: int, *, device: torch.device | str, capacity_bytes: int
    ) -> None:
        self.chunk_len = int(chunk_len)
        self.frame_numel = int(frame_numel)
        self.device = torch.device(device)
        self.capacity_bytes = int(capacity_bytes)
        self.max_rows = self.capacity_bytes // (self.chunk_len * self.frame_numel)
        self._slab = self._empty_slab(0)
        self._rows: OrderedDict[int, tuple[int, int]] = OrderedDict()  # slot -> (row, count)
        self._free_rows: list[int] = []

    def _empty_slab(self, rows: int) -> torch.Tensor:
        shape = (rows, self.chunk_len, self.frame_numel)
        return torch.empty(shape, dtype=torch.uint8, device=self.device)

    def lookup(self, slots: Sequence[int], counts: Sequence[int]) -> list[int]:
        """The row of each chunk cached with at least ``count`` frames, else ``-1``.

        Marks the chunks found as the most recently used.
        """
        rows = []
        for slot, count in zip(slots, counts, strict=True):
            entry = self._rows.get(slot)
            if entry is not None and entry[1] >= count:
                self._rows.move_to_end(slot)
                rows.append(entry[0])
            else:
                rows.append(-1)
        return rows

    def store(self, slots: Sequence[int], counts: Sequence[int], frames: torch.Tensor) -> list[int]:
        """Copies decoded chunks to the device, evicting the least recently used chunks.

        The chunks last marked by :meth:`lookup` are evicted last: a read that finds some
        chunks and stores the others keeps them all, as long as they fit.

        Args:
            slots: the chunks, none of them cached with ``count`` frames or more.
            counts: frames of each chunk to keep (at most ``frames.shape[1]``).
            frames: ``[len(slots), m, frame_numel]`` ``uint8`` frames (any device): row
                ``k`` holds chunk ``slots[k]``'s first ``counts[k]`` frames.

        Returns:
            The row of each chunk, or ``-1`` for those beyond the capacity.
        """
        rows = []
        for slot, count in zip(slots, counts, strict=True):
            row = self._row_for(slot)
            if row >= 0:
                self._rows[slot] = (row, int(count))
                self._rows.move_to_end(slot)
            rows.append(row)
        if any(row >= 0 for row in rows):
            source = frames.to(self.device)  # one transfer, then copies on the device
            for k, (row, count) in enumerate(zip(rows, counts, strict=True)):
                if row >= 0:
                    self._slab[row, :count].copy_(source[k, :count])
        return rows

    def _row_for(self, slot: int) -> int:
        """A row for ``slot``: its own, a free one, a new one, or the least recently used."""
        entry = self._rows.pop(slot, None)
        if entry is not None:
            return entry[0]
        if not self._free_rows:
            allocated = self._slab.shape[0]
            if allocated < self.max_rows:
                self._grow(min(self.max_rows, max(1, 2 * allocated)))
            elif self._rows:
                _, (row, _) = self._rows.popitem(last=False)
                return row
            else:
                return -1
        return self._free_rows.pop()

    def _grow(self, rows: int) -> None:
        grown = self._empty_slab(rows)
        allocated = self._slab.shape[0]
        grown[:allocated] = self._slab
        self._slab = grown
        self._free_rows.extend(range(rows - 1, allocated - 1, -1))

    def gather(self, positions: torch.Tensor) -> torch.Tensor:
        """Frames at positions ``row * chunk_len + offset``, ``[n, frame_numel]``, on the device."""
        flat = self._slab.view(-1, self.frame_numel)
        return flat.index_select(0, positions.to(self.device))

    def discard(self, slot: int) -> None:
        """Forgets a chunk (its frames were freed); its row is reused."""
        entry = self._rows.pop(slot, None)
        if entry is not None:
            self._free_rows.append(entry[0])

    def clear(self) -> None:
        """Forgets every chunk and releases the slab."""
        self._slab = self._empty_slab(0)
        self._rows.clear()
        self._free_rows = []

    def nbytes(self) -> int:
        """Bytes of the slab allocated on the device."""
        return self._slab.numel()

    def num_chunks(self) -> int:
        """Number of chunks cached."""
        return len(self._rows)

    def __getstate__(self) -> dict[str, Any]:
        # a copy starts empty: the cache holds nothing that the compressed chunks do not
        state = dict(self.__dict__)
        state["_slab"] = None
        state["_rows"] = OrderedDict()
        state["_free_rows"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._slab = self._empty_slab(0)
