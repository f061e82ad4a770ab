"""A reference-counted pool of image frames grouped in compressed chunks.

Frames are appended to *open* chunks (raw ``uint8`` buffers, one per writing stream).
When a chunk holds ``chunk_len`` frames, or its stream ends, it is *sealed*: encoded by a
:class:`~torchrl_seer.data.frame_codecs.FrameCodec` into one payload with a CRC32. A frame is
addressed by its id ``chunk_slot * chunk_len + offset``. Every reference to a frame (from
an index table or a stream's tail) is counted per chunk; a sealed chunk whose count falls
to zero is freed at once and its slot reused, so no live reference can point into it.

Reads gather any set of frame ids: the distinct chunks they touch are decoded once (on a
thread pool when several are missing from a bounded LRU cache of decoded chunks) and the
frames are copied out with one vectorized index. A chunk is decoded only up to the last
frame a read needs (codecs that can stop early, such as zstd, skip the rest), which halves
the decoding of uniformly sampled frames on average.

Fixed costs stay proportional to what is stored: the decoded-chunk cache never holds more
than the encoded payloads (or one chunk, whichever is larger) up to its ``cache_bytes``
bound, and the codec's compression context is released after each write
(:meth:`release_encoder`).
"""

from __future__ import annotations

import functools
import os
import threading
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from torchrl_seer.data.frame_codecs import FrameCodec, make_frame_codec

__all__ = ["ChunkedFramePool"]


class ChunkedFramePool:
    """Frames stored once, in reference-counted chunks compressed by a codec.

    Args:
        frame_shape: the shape of one frame.

    Keyword Args:
        codec: the chunk codec.
        chunk_len: frames per chunk.
        cache_bytes: bound on the decoded chunks kept in the LRU cache; the cache also
            holds at most as many bytes as the encoded payloads (at least one chunk).
        num_threads: decoding threads (``0``: decode on the calling thread).

    Examples:
        >>> import torch
        >>> from torchrl_seer.data.frame_codecs import make_frame_codec
        >>> pool = ChunkedFramePool((8, 8), codec=make_frame_codec("zstd"), chunk_len=4)
        >>> slot = pool.open_chunk()
        >>> ids = pool.append(slot, torch.arange(2 * 64, dtype=torch.uint8).view(2, 8, 8))
        >>> pool.incref(ids)
        >>> pool.seal(slot)
        >>> pool.gather([ids.flip(0)])[0][0, 0, :3]
        tensor([64, 65, 66], dtype=torch.uint8)
    """

    def __init__(
        self,
        frame_shape: Sequence[int],
        *,
        codec: FrameCodec,
        chunk_len: int = 64,
        cache_bytes: int = 4 * 2**20,
        num_threads: int = 0,
    ) -> None:
        if chunk_len < 1:
            raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
        self.frame_shape = torch.Size(frame_shape)
        self.frame_numel = self.frame_shape.numel()
        self.codec = codec
        self.chunk_len = int(chunk_len)
        self.cache_bytes = int(cache_bytes)
        self.num_threads = int(num_threads)
        self._payloads: list[bytes | None] = []
        self._payload_total = 0
        self._lengths: list[int] = []
        self._checksums: list[int] = []
        self._open: dict[int, torch.Tensor] = {}
        self._refcount = torch.zeros(0, dtype=torch.int64)
        self._free_slots: list[int] = []
        self._recompressed: set[int] = set()  # sealed chunks already re-encoded
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    # ------------------------------------------------------------------ writing
    def open_chunk(self) -> int:
        """Opens an empty chunk and returns its slot."""
        if self._free_slots:
            slot = self._free_slots.pop()
        else:
            slot = len(self._payloads)
            self._payloads.append(None)
            self._lengths.append(0)
            self._checksums.append(0)
            if slot >= self._refcount.numel():
                grown = torch.zeros(max(64, 2 * slot), dtype=torch.int64)
                grown[: self._refcount.numel()] = self._refcount
                self._refcount = grown
        self._lengths[slot] = 0
        self._open[slot] = torch.empty((self.chunk_len, *self.frame_shape), dtype=torch.uint8)
        return slot

    def space(self, slot: int) -> int:
        """Returns how many more frames the open chunk ``slot`` can take."""
        return self.chunk_len - self._lengths[slot]

    def append(self, slot: int, frames: torch.Tensor) -> torch.Tensor:
        """Appends frames to an open chunk.

        Args:
            slot: an open chunk with at least ``len(frames)`` free places.
            frames: ``uint8`` frames of shape ``[n, *frame_shape]``.

        Returns:
            The ``int64`` ids of the appended frames.
        """
        start = self._lengths[slot]
        stop = start + frames.shape[0]
        if stop > self.chunk_len:
            raise RuntimeError(f"chunk {slot} overflow: {stop} > {self.chunk_len} frames")
        self._open[slot][start:stop] = frames
        self._lengths[slot] = stop
        return torch.arange(start, stop, dtype=torch.int64) + slot * self.chunk_len

    def seal(self, slot: int) -> None:
        """Encodes an open chunk; frees it if nothing references it."""
        raw = self._open.pop(slot)
        length = self._lengths[slot]
        if length and int(self._refcount[slot]) > 0:
            payload = self.codec.encode(raw[:length])
            self._payloads[slot] = payload
            self._payload_total += len(payload)
            self._checksums[slot] = zlib.crc32(payload)
        else:
            self._release(slot)

    def recompress(self, codec: FrameCodec) -> int:
        """Re-encodes every sealed chunk with ``codec``; keeps a payload only if smaller.

        The frames do not change: a read at any moment decodes either payload of a chunk.
        The pool keeps decoding with its own codec, so ``codec`` must write payloads that
        codec reads (zstd at another level, with the same frame filter). Chunks sealed later
        are encoded by the pool's codec again; a chunk is re-encoded once.

        Args:
            codec: the codec that re-encodes.

        Returns:
            The bytes saved.
        """
        saved = 0
        for slot, payload in enumerate(self._payloads):
            if payload is None or slot in self._recompressed:
                continue
            frames = self.codec.decode(payload, self._lengths[slot], self.frame_shape)
            smaller = codec.encode(torch.from_numpy(np.array(frames)))
            self._recompressed.add(slot)
            if len(smaller) < len(payload):
                with self._lock:
                    self._payloads[slot] = smaller
                    self._checksums[slot] = zlib.crc32(smaller)
                    self._payload_total += len(smaller) - len(payload)
                saved += len(payload) - len(smaller)
        codec.release_encoder()
        return saved

    def release_encoder(self) -> None:
        """Frees the codec's encoding memory until the next seal."""
        self.codec.release_encoder()

    def is_open(self, slot: int) -> bool:
        """Whether ``slot`` is an open chunk."""
        return slot in self._open

    # ---------------------------------------------------------- reference counts
    def _chunk_counts(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.reshape(-1)
        ids = ids[ids >= 0]
        return torch.bincount(ids // self.chunk_len, minlength=self._refcount.numel())

    def incref(self, ids: torch.Tensor) -> None:
        """Adds one reference per (non-negative) frame id."""
        self._refcount += self._chunk_counts(ids)

    def decref(self, ids: torch.Tensor) -> None:
        """Drops one reference per (non-negative) frame id; frees unreferenced sealed chunks."""
        counts = self._chunk_counts(ids)
        self._refcount -= counts
        for slot in torch.nonzero((counts > 0) & (self._refcount == 0)).flatten().tolist():
            if slot not in self._open:
                self._release(slot)

    def _release(self, slot: int) -> None:
        payload = self._payloads[slot]
        if payload is not None:
            self._payload_total -= len(payload)
        self._payloads[slot] = None
        self._lengths[slot] = 0
        self._checksums[slot] = 0
        self._recompressed.discard(slot)
        cached = self._cache.pop(slot, None)
        if cached is not None:
            self._cached_bytes -= cached.nbytes
        self._free_slots.append(slot)

    # ------------------------------------------------------------------ reading
    def _decode(self, slot: int, count: int) -> np.ndarray:
        payload = self._payloads[slot]
        if payload is None:
            raise RuntimeError(f"frame chunk {slot} was freed but is still referenced")
        frames = self.codec.decode_prefix(payload, self._lengths[slot], self.frame_shape, count)
        return frames.reshape(-1, self.frame_numel)

    def _source(self, slot: int, count: int) -> np.ndarray:
        """At least the first ``count`` frames of one chunk, as ``[n, frame_numel]``.

        From the open buffer, from the cache when it holds that many, or decoded.
        """
        raw = self._open.get(slot)
        if raw is not None:
            return raw[: self._lengths[slot]].numpy().reshape(-1, self.frame_numel)
        with self._lock:
            cached = self._cache.get(slot)
            if cached is not None and cached.shape[0] >= count:
                self._cache.move_to_end(slot)
                return cached
        frames = self._decode(slot, count)
        with self._lock:
            self._remember(slot, frames)
        return frames

    def cache_limit(self) -> int:
        """The decoded-cache bound now: ``cache_bytes``, at most the payload bytes (or a chunk)."""
        chunk_bytes = self.chunk_len * self.frame_numel
        return min(self.cache_bytes, max(chunk_bytes, self._payload_total))

    def _remember(self, slot: int, frames: np.ndarray) -> None:
        size = frames.nbytes
        limit = self.cache_limit()
        if size > limit:
            return
        replaced = self._cache.pop(slot, None)
        if replaced is not None:
            if replaced.shape[0] >= frames.shape[0]:  # another thread decoded more meanwhile
                self._cache[slot] = replaced
                return
            self._cached_bytes -= replaced.nbytes
        self._cache[slot] = frames
        self._cached_bytes += size
        while self._cached_bytes > limit:
            _, evicted = self._cache.popitem(last=False)
            self._cached_bytes -= evicted.nbytes

    def _copy_chunks(
        self, out: np.ndarray, tasks: list[tuple[int, np.ndarray, np.ndarray]]
    ) -> None:
        for slot, rows, offsets in tasks:
            out[rows] = self._source(slot, int(offsets.max()) + 1)[offsets]

    def gather(self, ids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Reads frames by id; each chunk involved is decoded at most once.

        The chunks are split among the decoding threads; each thread decodes its chunks
        and copies the requested frames straight into the output.

        Args:
            ids: tensors of frame ids (any shape, all ids valid and referenced).

        Returns:
            For each id tensor, the frames, of shape ``[*ids.shape, *frame_shape]``.
        """
        flat = torch.cat([i.reshape(-1) for i in ids]).to(torch.int64)
        chunk = torch.div(flat, self.chunk_len, rounding_mode="floor")
        offset = flat - chunk * self.chunk_len
        slots, inverse, counts = torch.unique(chunk, return_inverse=True, return_counts=True)
        order = torch.argsort(inverse, stable=True)
        rows, offsets = order.numpy(), offset[order].numpy()
        tasks, start = [], 0
        for slot, stop in zip(slots.tolist(), torch.cumsum(counts, 0).tolist(), strict=True):
            tasks.append((slot, rows[start:stop], offsets[start:stop]))
            start = stop
        out = torch.empty((flat.numel(), self.frame_numel), dtype=torch.uint8)
        out_np = out.numpy()
        workers = min(self.num_threads, len(tasks))
        if workers > 1:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.num_threads, thread_name_prefix="delta-frame-decode"
                )
            shares = [tasks[w::workers] for w in range(workers)]
            list(self._executor.map(functools.partial(self._copy_chunks, out_np), shares))
        else:
            self._copy_chunks(out_np, tasks)
        results, start = [], 0
        for i in ids:
            results.append(out[start : start + i.numel()].view(*i.shape, *self.frame_shape))
            start += i.numel()
        return results

    # --------------------------------------------------------------- accounting
    def nbytes(self) -> int:
        """Bytes held: payloads, open chunks, decoded cache and bookkeeping.

        An open chunk counts the frames written to it: its buffer is allocated for
        ``chunk_len`` frames but its pages are only touched as frames arrive.
        """
        bookkeeping = self._refcount.numel() * 8 + len(self._payloads) * 3 * 8
        return self.payload_bytes() + self._cached_bytes + bookkeeping

    def payload_bytes(self) -> int:
        """Bytes of encoded payloads and of the frames in open chunks."""
        open_frames = sum(self._lengths[slot] for slot in self._open)
        return self._payload_total + open_frames * self.frame_numel

    def cached_bytes(self) -> int:
        """Bytes of decoded chunks held by the LRU cache."""
        return self._cached_bytes

    def clear(self) -> None:
        """Frees every chunk, open or sealed."""
        self._payloads, self._lengths, self._checksums = [], [], []
        self._payload_total = 0
        self._open = {}
        self._refcount = torch.zeros(0, dtype=torch.int64)
        self._free_slots = []
        self._recompressed = set()
        self.clear_cache()

    def clear_cache(self) -> None:
        """Drops every decoded chunk from the cache."""
        self._cache.clear()
        self._cached_bytes = 0

    def num_chunks(self) -> int:
        """Number of live (open or sealed) chunks."""
        return sum(p is not None for p in self._payloads) + len(self._open)

    # -------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Returns every live chunk encoded (open chunks included), with CRC32 checksums."""
        slots, payloads, lengths, checksums = [], [], [], []
        for slot, length in enumerate(self._lengths):
            if slot in self._open:
                if not length:
                    continue
                payload = self.codec.encode(self._open[slot][:length])
                checksum = zlib.crc32(payload)
            elif self._payloads[slot] is not None:
                payload = self._payloads[slot]  # type: ignore[assignment]
                checksum = self._checksums[slot]
            else:
                continue
            slots.append(slot)
            payloads.append(payload)
            lengths.append(length)
            checksums.append(checksum)
        sizes = [len(p) for p in payloads]
        blob = b"".join(payloads)
        return {
            "frame_shape": list(self.frame_shape),
            "chunk_len": self.chunk_len,
            "codec": self.codec.config(),
            "num_slots": len(self._payloads),
            "slots": torch.tensor(slots, dtype=torch.int64),
            "lengths": torch.tensor(lengths, dtype=torch.int64),
            "sizes": torch.tensor(sizes, dtype=torch.int64),
            "checksums": torch.tensor(checksums, dtype=torch.int64),
            "payload": torch.frombuffer(bytearray(blob), dtype=torch.uint8)
            if blob
            else torch.zeros(0, dtype=torch.uint8),
        }

    def load_state_dict(self, state_dict: dict[str, Any], *, references: torch.Tensor) -> None:
        """Restores the chunks of :meth:`state_dict` (all sealed), verifying checksums.

        Args:
            state_dict: the output of :meth:`state_dict`.

        Keyword Args:
            references: every frame id that references a chunk (index tables); chunks
                referenced by none are dropped.

        Raises:
            ValueError: a payload does not match its checksum, or a reference points to a
                chunk absent from the checkpoint.
        """
        if list(state_dict["frame_shape"]) != list(self.frame_shape):
            raise ValueError(
                f"checkpoint frame shape {state_dict['frame_shape']} != {list(self.frame_shape)}"
            )
        if int(state_dict["chunk_len"]) != self.chunk_len:
            raise ValueError(f"checkpoint chunk_len {state_dict['chunk_len']} != {self.chunk_len}")
        self.codec = make_frame_codec(
            state_dict["codec"]["codec"],
            **{k: v for k, v in state_dict["codec"].items() if k != "codec"},
        )
        num_slots = int(state_dict["num_slots"])
        blob = state_dict["payload"].numpy().tobytes()
        payloads: list[bytes | None] = [None] * num_slots
        lengths = [0] * num_slots
        checksums = [0] * num_slots
        offset = 0
        for slot, length, size, checksum in zip(
            state_dict["slots"].tolist(),
            state_dict["lengths"].tolist(),
            state_dict["sizes"].tolist(),
            state_dict["checksums"].tolist(),
            strict=True,
        ):
            payload = blob[offset : offset + size]
            offset += size
            if len(payload) != size or zlib.crc32(payload) != checksum:
                raise ValueError(f"corrupted frame chunk {slot}: checksum mismatch")
            payloads[slot], lengths[slot], checksums[slot] = payload, length, checksum
        self._payloads, self._lengths, self._checksums = payloads, lengths, checksums
        self._open = {}
        self._recompressed = set()
        self.clear_cache()
        self._refcount = torch.zeros(max(64, num_slots), dtype=torch.int64)
        self.incref(references)
        referenced = self._refcount[:num_slots] > 0
        for slot in range(num_slots):
            present = payloads[slot] is not None
            if bool(referenced[slot]) and not present:
                raise ValueError(f"corrupted checkpoint: frame chunk {slot} is missing")
            if present and not bool(referenced[slot]):
                payloads[slot] = None
        self._payload_total = sum(len(p) for p in payloads if p is not None)
        self._free_slots = [s for s in range(num_slots - 1, -1, -1) if payloads[s] is None]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_executor"] = None
        state.pop("_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def shutdown(self) -> None:
        """Stops the decoding threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @staticmethod
    def default_num_threads() -> int:
        """Decoding threads used by default: up to 4, at most the CPU count."""
        return min(4, os.cpu_count() or 1)
