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

Reads return frames on the pool's ``device``. With a device cache
(:class:`~torchrl_seer.data.device_chunk_cache.DeviceChunkCache`, ``device_cache_bytes``),
decoded chunks are copied to the device once and kept there, and the frames a read asks for
are gathered on the device by index. A read touching more chunks than the device cache holds,
or any read without a device cache, is gathered on the CPU and moved to the device in one
copy, and leaves the device cache as it was (evicting chunks for it would only churn).

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

from torchrl_seer.data.device_chunk_cache import DeviceChunkCache
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
        device: where reads return frames. Defaults to ``"cpu"``.
        device_cache_bytes: bound on the decoded chunks kept on ``device`` (whole chunks;
            ``0`` keeps none). Defaults to ``0``.

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
        device: torch.device | str = "cpu",
        device_cache_bytes: int = 0,
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
        self.device = torch.device(device)
        self._device_cache = DeviceChunkCache(
            self.chunk_len, self.frame_numel, device=self.device, capacity_bytes=device_cache_bytes
        )
        self._device_lock = threading.Lock()

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
        with self._device_lock:
            self._device_cache.discard(slot)
        self._free_slots.append(slot)

    # ------------------------------------------------------------------ reading
    def _decode(self, slot: int, count: int) -> np.ndarray:
        payload = self._payloads[slot]
        if payload is None:
            raise RuntimeError(f"frame chunk {slot} was freed but is still referenced")
        frames = self.codec.decode_prefix(payload, self._lengths[slot], self.frame_shape, count)
        return frames.reshape(-1, self.frame_numel)

    def _source(self, slot: int, count: int, *, remember: bool = True) -> np.ndarray:
        """At least the first ``count`` frames of one chunk, as ``[n, frame_numel]``.

        From the open buffer, from the cache when it holds that many, or decoded (and kept
        in the cache if ``remember``).
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
        if remember:
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

    def _copy_frames(
        self, out: np.ndarray, slot: int, rows: np.ndarray, offsets: np.ndarray
    ) -> None:
        """Copies frames ``offsets`` of chunk ``slot`` to rows ``rows`` of ``out``."""
        out[rows] = self._source(slot, int(offsets.max()) + 1)[offsets]

    def _copy_prefix(self, out: np.ndarray, slot: int, count: int) -> None:
        """Copies the first ``count`` frames of chunk ``slot`` to ``out[:count]``."""
        out[:count] = self._source(slot, count, remember=False)[:count]

    def _run(self, tasks: list[functools.partial[None]]) -> None:
        """Runs decoding tasks, split among the decoding threads."""
        workers = min(self.num_threads, len(tasks))
        if workers <= 1:
            for task in tasks:
                task()
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(
                self.num_threads, thread_name_prefix="delta-frame-decode"
            )
        shares = [tasks[w::workers] for w in range(workers)]
        list(self._executor.map(lambda share: [task() for task in share], shares))

    def gather(self, ids: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Reads frames by id, on the pool's device; each chunk involved is decoded at most once.

        The chunks are split among the decoding threads; each thread decodes its chunks
        and copies the requested frames straight into the output (or, for the chunks kept
        on the device, the decoded chunk into a buffer copied there).

        Args:
            ids: tensors of frame ids (any shape, all ids valid and referenced).

        Returns:
            For each id tensor, the frames on ``device``, of shape
            ``[*ids.shape, *frame_shape]``.
        """
        flat = torch.cat([i.reshape(-1).cpu() for i in ids]).to(torch.int64)
        chunk = torch.div(flat, self.chunk_len, rounding_mode="floor")
        offset = flat - chunk * self.chunk_len
        slots, inverse = torch.unique(chunk, return_inverse=True)
        if 0 < slots.numel() <= self._device_cache.max_rows:
            with self._device_lock:
                out = self._gather_through_device_cache(slots, inverse, offset)
        else:  # no device cache, or more chunks than it holds: keep what it holds
            out = self._gather_on_cpu(slots, inverse, offset).to(self.device)
        results, start = [], 0
        for i in ids:
            results.append(out[start : start + i.numel()].view(*i.shape, *self.frame_shape))
            start += i.numel()
        return results

    def _gather_on_cpu(
        self, slots: torch.Tensor, inverse: torch.Tensor, offset: torch.Tensor
    ) -> torch.Tensor:
        """``[n, frame_numel]`` frames of chunks ``slots[inverse]`` at ``offset``, on the CPU."""
        order = torch.argsort(inverse, stable=True)
        rows, offsets = order.numpy(), offset[order].numpy()
        counts = torch.bincount(inverse, minlength=slots.numel())
        out = torch.empty((offset.numel(), self.frame_numel), dtype=torch.uint8)
        out_np = out.numpy()
        tasks, start = [], 0
        for slot, stop in zip(slots.tolist(), torch.cumsum(counts, 0).tolist(), strict=True):
            task = functools.partial(
                self._copy_frames, out_np, slot, rows[start:stop], offsets[start:stop]
            )
            tasks.append(task)
            start = stop
        self._run(tasks)
        return out

    def _gather_through_device_cache(
        self, slots: torch.Tensor, inverse: torch.Tensor, offset: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`gather` through the device cache, for reads whose chunks it can hold.

        Chunks found in the cache with enough frames are read there; the others are decoded
        (up to the last frame needed), copied to the device in one transfer and kept,
        evicting the least recently used chunks; then one gather on the device reads every
        frame.
        """
        cache = self._device_cache
        needed = torch.zeros(slots.numel(), dtype=torch.int64)
        needed.scatter_reduce_(0, inverse, offset + 1, reduce="amax")
        slot_list, needed_list = slots.tolist(), needed.tolist()
        rows = cache.lookup(slot_list, needed_list)
        missing = [k for k, row in enumerate(rows) if row < 0]
        if missing:
            width = max(needed_list[k] for k in missing)
            decoded = torch.empty((len(missing), width, self.frame_numel), dtype=torch.uint8)
            decoded_np = decoded.numpy()
            self._run(
                [
                    functools.partial(
                        self._copy_prefix, decoded_np[n], slot_list[k], needed_list[k]
                    )
                    for n, k in enumerate(missing)
                ]
            )
            new_rows = cache.store(
                [slot_list[k] for k in missing], [needed_list[k] for k in missing], decoded
            )
            for k, row in zip(missing, new_rows, strict=True):
                rows[k] = row
        positions = torch.tensor(rows, dtype=torch.int64)[inverse] * self.chunk_len + offset
        return cache.gather(positions)

    # --------------------------------------------------------------- accounting
    def nbytes(self) -> int:
        """Bytes held: payloads, open chunks, decoded caches (LRU and device) and bookkeeping.

        An open chunk counts the frames written to it: its buffer is allocated for
        ``chunk_len`` frames but its pages are only touched as frames arrive.
        """
        bookkeeping = self._refcount.numel() * 8 + len(self._payloads) * 3 * 8
        cached = self._cached_bytes + self._device_cache.nbytes()
        return self.payload_bytes() + cached + bookkeeping

    def payload_bytes(self) -> int:
        """Bytes of encoded payloads and of the frames in open chunks."""
        open_frames = sum(self._lengths[slot] for slot in self._open)
        return self._payload_total + open_frames * self.frame_numel

    def cached_bytes(self) -> int:
        """Bytes of decoded chunks held by the LRU cache."""
        return self._cached_bytes

    def device_cached_bytes(self) -> int:
        """Bytes allocated on the device for decoded chunks (the device cache)."""
        return self._device_cache.nbytes()

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
        """Drops every decoded chunk, from the LRU cache and from the device cache."""
        self._cache.clear()
        self._cached_bytes = 0
        with self._device_lock:
            self._device_cache.clear()

    def num_chunks(self) -> int:
        """Number of live (open or sealed) chunks."""
        return sum(p is not None for p in self._payloads) + len(self._open)

    # -------------------------------------------------------------- persistence
    def state_dict(self) -> dict[str, Any]:
        """Returns every live chunk encoded, with CRC32 checksums, and the pool's layout.

        Open chunks are encoded too (empty ones included) and listed under ``"open_slots"``;
        the order of the free slots, the size of the reference-count table and the chunks
        already recompressed are kept, so that :meth:`load_state_dict` rebuilds a pool that
        holds the same bytes and hands out the same slots as this one.
        """
        slots, payloads, lengths, checksums = [], [], [], []
        for slot, length in enumerate(self._lengths):
            if slot in self._open:
                payload = self.codec.encode(self._open[slot][:length]) if length else b""
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
            "open_slots": torch.tensor(sorted(self._open), dtype=torch.int64),
            "free_slots": torch.tensor(self._free_slots, dtype=torch.int64),
            "recompressed": torch.tensor(sorted(self._recompressed), dtype=torch.int64),
            "refcount_size": int(self._refcount.numel()),
        }

    def load_state_dict(self, state_dict: dict[str, Any], *, references: torch.Tensor) -> None:
        """Restores the chunks of :meth:`state_dict`, verifying checksums.

        Chunks that were open come back open (raw, taking more frames); a state dict written
        before open chunks were listed restores every chunk sealed.

        Args:
            state_dict: the output of :meth:`state_dict`.

        Keyword Args:
            references: every frame id that references a chunk (index tables and stream
                tails); sealed chunks referenced by none are dropped.

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
        open_slots = set(state_dict.get("open_slots", torch.zeros(0, dtype=torch.int64)).tolist())
        blob = state_dict["payload"].numpy().tobytes()
        payloads: list[bytes | None] = [None] * num_slots
        lengths = [0] * num_slots
        checksums = [0] * num_slots
        opened: dict[int, torch.Tensor] = {}
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
            lengths[slot] = length
            if slot in open_slots:
                raw = torch.empty((self.chunk_len, *self.frame_shape), dtype=torch.uint8)
                if length:
                    frames = self.codec.decode(payload, length, self.frame_shape)
                    raw[:length] = torch.from_numpy(np.array(frames))
                opened[slot] = raw
            else:
                payloads[slot], checksums[slot] = payload, checksum
        if set(opened) != open_slots:
            raise ValueError(
                f"corrupted checkpoint: open frame chunks {sorted(open_slots - set(opened))} "
                "are missing"
            )
        self._payloads, self._lengths, self._checksums = payloads, lengths, checksums
        self._open = opened
        self.clear_cache()
        refcount_size = max(64, num_slots, int(state_dict.get("refcount_size", 0)))
        self._refcount = torch.zeros(refcount_size, dtype=torch.int64)
        self.incref(references)
        referenced = self._refcount[:num_slots] > 0
        for slot in range(num_slots):
            present = payloads[slot] is not None or slot in opened
            if bool(referenced[slot]) and not present:
                raise ValueError(f"corrupted checkpoint: frame chunk {slot} is missing")
            if payloads[slot] is not None and not bool(referenced[slot]):
                payloads[slot], lengths[slot], checksums[slot] = None, 0, 0
        self._payload_total = sum(len(p) for p in payloads if p is not None)
        free = [s for s in range(num_slots - 1, -1, -1) if payloads[s] is None and s not in opened]
        saved_free = state_dict.get("free_slots")
        if saved_free is not None and sorted(saved_free.tolist()) == sorted(free):
            free = saved_free.tolist()  # the same slots handed out in the same order
        self._free_slots = free
        recompressed = state_dict.get("recompressed", torch.zeros(0, dtype=torch.int64))
        self._recompressed = set(recompressed.tolist())

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_executor"] = None
        state.pop("_lock")
        state.pop("_device_lock")
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._device_lock = threading.Lock()

    def shutdown(self) -> None:
        """Stops the decoding threads."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    @staticmethod
    def default_num_threads() -> int:
        """Decoding threads used by default: up to 4, at most the CPU count."""
        return min(4, os.cpu_count() or 1)
