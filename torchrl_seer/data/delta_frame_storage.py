"""A replay-buffer storage that keeps image observations once per frame, compressed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase, is_tensor_collection, unravel_key
from torchrl.data import LazyTensorStorage

from torchrl_seer.data.chunked_frame_pool import ChunkedFramePool
from torchrl_seer.data.delta_checkpointer import DeltaFrameStorageCheckpointer
from torchrl_seer.data.frame_codecs import FrameCodec, make_frame_codec
from torchrl_seer.data.frame_stack_index import FrameStackIndex
from torchrl_seer.data.replay_rewiring import relocate_tensor_rows, rewind_failed_write

__all__ = ["DeltaFrameStorage"]

_FORMAT_VERSION = 1


class DeltaFrameStorage(LazyTensorStorage):
    """Lossless storage of stacked image observations, each distinct frame stored once.

    A drop-in replacement for :class:`~torchrl.data.LazyTensorStorage` for transitions whose
    observations are frame stacks (as :class:`~torchrl.envs.CatFrames` emits them): every
    read returns exactly what a ``LazyTensorStorage`` holding the same transitions returns
    (same keys, shapes, dtypes, bit-identical values), while the pixels take a small
    fraction of the memory.

    For each pixel key, the ``2 * frame_stack`` frames of a transition's observation and
    next observation are replaced by ``int32`` frame ids. A frame shared with the previous
    stack, the stack padding at an episode start, or the next observation is stored only
    once -- and only when the storage has *proven* it equal, byte for byte; the true final
    next observation of terminated and truncated steps is kept. Distinct frames go, in
    trajectory order, to chunks of ``chunk_len`` frames compressed by ``codec``. Chunks are
    reference counted: overwriting the oldest transitions frees the chunks nobody uses.
    Reads decode each chunk a batch touches once, on a thread pool, through a bounded LRU
    cache. All other keys (actions, rewards, done flags, trajectory ids, ...) are kept raw in
    a ``LazyTensorStorage`` layout, so samplers that read them decode nothing.

    Args:
        max_size: capacity, in transitions.

    Keyword Args:
        pixel_keys: the image keys; each needs its ``("next", key)`` twin in the data.
            Defaults to ``("pixels",)``.
        frame_stack: frames concatenated in each observation. Defaults to ``1``.
        stack_dim: the dimension (negative, counted from the end of one transition's
            tensor) along which the frames are concatenated, each taking
            ``shape[stack_dim] // frame_stack`` slices. Defaults to ``-3`` (channels of
            ``[C, H, W]`` images).
        codec: ``"zstd"`` (chunked zstd, default), ``"keyframe-sparse"`` (the published
            keyframe + int16 sparse residual scheme, for comparison), ``"none"``
            (de-duplication only), or a :class:`~torchrl_seer.data.frame_codecs.FrameCodec`.
        chunk_len: consecutive frames of one trajectory encoded together. Defaults to 64.
        compression_level: zstd level. Defaults to 3.
        frame_delta: apply the frame-difference filter before zstd. Defaults to ``False``.
        done_key: the key whose ``True`` ends an episode (only used to group chunks).
            Defaults to ``("next", "done")``.
        max_streams: bound on concurrently open trajectory streams (open chunks) per pixel
            key. Defaults to 64.
        cache_bytes: bound on the decoded-chunk LRU cache, per pixel key; counted by
            :meth:`bytes`. It pays off when reads revisit chunks (slices, small buffers);
            uniform sampling from a large buffer rarely hits it. Defaults to 4 MiB.
        num_threads: decoding threads; ``0`` decodes on the calling thread. Defaults to
            ``min(4, cpu_count)``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import ReplayBuffer
        >>> frames = torch.randint(0, 255, (6, 1, 8, 8), dtype=torch.uint8)
        >>> obs = torch.cat([frames[[0, 0, 1, 2, 3]], frames[[0, 1, 2, 3, 4]]], 1)
        >>> nxt = torch.cat([frames[[0, 1, 2, 3, 4]], frames[[1, 2, 3, 4, 5]]], 1)
        >>> done = torch.zeros(5, 1, dtype=torch.bool)
        >>> data = TensorDict(
        ...     {"pixels": obs, "next": {"pixels": nxt, "done": done}}, batch_size=[5]
        ... )
        >>> rb = ReplayBuffer(storage=DeltaFrameStorage(100, frame_stack=2), batch_size=3)
        >>> _ = rb.extend(data)
        >>> bool((rb.storage[2]["next", "pixels"] == nxt[2]).all())
        True
        >>> rb.storage.num_frames()  # 6 distinct frames for 5 transitions of 2x2 frames
        6
    """

    _default_checkpointer = DeltaFrameStorageCheckpointer

    def __init__(
        self,
        max_size: int,
        *,
        pixel_keys: Sequence[NestedKey] = ("pixels",),
        frame_stack: int = 1,
        stack_dim: int = -3,
        codec: str | FrameCodec = "zstd",
        chunk_len: int = 64,
        compression_level: int = 3,
        frame_delta: bool = False,
        done_key: NestedKey = ("next", "done"),
        max_streams: int = 64,
        cache_bytes: int = 4 * 2**20,
        num_threads: int | None = None,
    ) -> None:
        super().__init__(max_size, device="cpu")
        if isinstance(pixel_keys, str):
            pixel_keys = [pixel_keys]
        self.pixel_keys = [unravel_key(k) for k in pixel_keys]
        if not self.pixel_keys:
            raise ValueError("pixel_keys must name at least one image key")
        if int(frame_stack) < 1:
            raise ValueError(f"frame_stack must be >= 1, got {frame_stack}")
        if stack_dim >= 0:
            raise ValueError(f"stack_dim must be negative (counted from the end), got {stack_dim}")
        self.frame_stack = int(frame_stack)
        self.stack_dim = int(stack_dim)
        self.done_key = unravel_key(done_key)
        if isinstance(codec, str):
            options: dict[str, Any] = {}
            if codec == "zstd":
                options = {"level": compression_level, "frame_delta": frame_delta}
            elif codec == "keyframe-sparse":
                options = {"group_size": self.frame_stack}
            codec = make_frame_codec(codec, **options)
        self.codec = codec
        self.chunk_len = int(chunk_len)
        self.max_streams = int(max_streams)
        self.cache_bytes = int(cache_bytes)
        self.num_threads = (
            ChunkedFramePool.default_num_threads() if num_threads is None else int(num_threads)
        )
        self._pixel_shapes: dict[NestedKey, torch.Size] = {}
        self._indices: dict[NestedKey, FrameStackIndex] = {}

    # ------------------------------------------------------------------- layout
    def _stack_axis(self, shape: torch.Size) -> int:
        return len(shape) + self.stack_dim

    def _to_frames(self, stacked: torch.Tensor) -> torch.Tensor:
        """``[B, *shape]`` stacks to contiguous ``[B, F, *frame_shape]`` frames."""
        axis = 1 + self._stack_axis(stacked.shape[1:])
        frames = stacked.unflatten(axis, (self.frame_stack, -1)).movedim(axis, 1)
        return frames.contiguous()

    def _from_frames(self, frames: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Inverse of :meth:`_to_frames`."""
        axis = 1 + self._stack_axis(shape)
        return frames.movedim(1, axis).flatten(axis, axis + 1).contiguous()

    def _frame_shape(self, shape: torch.Size) -> torch.Size:
        axis = self._stack_axis(shape)
        return torch.Size([*shape[:axis], shape[axis] // self.frame_stack, *shape[axis + 1 :]])

    # --------------------------------------------------------------- validation
    def _check_pixels(self, data: TensorDictBase) -> dict[NestedKey, tuple[torch.Tensor, ...]]:
        """Validates every pixel tensor and returns (obs, next_obs) per key."""
        out = {}
        for key in self.pixel_keys:
            pair: list[torch.Tensor] = []
            for full_key in (key, unravel_key(("next", key))):
                value = data.get(full_key, None)
                if value is None:
                    raise KeyError(
                        f"DeltaFrameStorage expected the pixel key {full_key!r} in the data "
                        f"(every pixel key needs its ('next', key) twin); got keys "
                        f"{sorted(map(str, data.keys(True, True)))}"
                    )
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"expected {full_key!r} to be a tensor, got {type(value)}")
                if value.dtype != torch.uint8:
                    raise TypeError(
                        f"expected {full_key!r} of dtype torch.uint8, got {value.dtype}"
                    )
                if value.device.type != "cpu":
                    raise ValueError(
                        f"expected {full_key!r} on device cpu, got {value.device}; "
                        "move the batch to the CPU before extending"
                    )
                if not value.is_contiguous():
                    raise ValueError(
                        f"expected {full_key!r} to be a contiguous tensor; call .contiguous()"
                    )
                shape = value.shape[1:]
                if len(shape) < -self.stack_dim:
                    raise ValueError(
                        f"expected {full_key!r} to have at least {-self.stack_dim} dimensions "
                        f"per transition (stack_dim={self.stack_dim}), got shape {tuple(shape)}"
                    )
                stacked = shape[self._stack_axis(shape)]
                if stacked % self.frame_stack:
                    raise ValueError(
                        f"{full_key!r} has {stacked} slices along stack_dim={self.stack_dim}, "
                        f"which is not a multiple of frame_stack={self.frame_stack}"
                    )
                expected = self._pixel_shapes.get(key)
                if expected is not None and shape != expected:
                    raise ValueError(
                        f"expected {full_key!r} of shape {tuple(expected)} per transition, "
                        f"got {tuple(shape)}"
                    )
                if pair and shape != pair[0].shape[1:]:
                    raise ValueError(
                        f"{full_key!r} has shape {tuple(shape)} but {key!r} has "
                        f"{tuple(pair[0].shape[1:])}"
                    )
                pair.append(value)
            out[key] = tuple(pair)
        return out

    def _check_other(self, other: TensorDictBase) -> None:
        """Checks that keys already stored keep their per-transition shape."""
        if not self.initialized:
            return
        for key, value in other.items(True, True):
            stored = self._storage.get(key, None)
            if stored is not None and stored.shape[1:] != value.shape[1:]:
                raise ValueError(
                    f"expected {key!r} of shape {tuple(stored.shape[1:])} per transition, "
                    f"got {tuple(value.shape[1:])}"
                )

    def _rollback_writers(self, cursor: torch.Tensor) -> None:
        """Undoes the cursor move of the writer executing a rejected write (if any)."""
        rewind_failed_write(self, cursor)

    # ------------------------------------------------------------------ writing
    def set(
        self,
        cursor: int | Sequence[int] | slice | torch.Tensor,
        data: Any,
        *,
        set_cursor: bool = True,
    ) -> None:
        """Writes transitions at ``cursor``; validates the whole batch before storing anything.

        Args:
            cursor: the storage slot(s).
            data: a TensorDict of one transition (integer cursor) or of a batch ``[B]``.

        Keyword Args:
            set_cursor: whether to update the length and last cursor (``False`` for
                ``storage[index] = data``).
        """
        if isinstance(cursor, slice):
            cursor = torch.arange(self.max_size)[cursor]
        single = isinstance(cursor, int) or (isinstance(cursor, torch.Tensor) and cursor.ndim == 0)
        slots = torch.as_tensor(cursor, dtype=torch.int64).reshape(-1)
        try:
            if not is_tensor_collection(data):
                raise TypeError(
                    f"DeltaFrameStorage expected a TensorDict of transitions, got {type(data)}"
                )
            batch = data.unsqueeze(0) if single else data
            if batch.batch_dims != 1 or batch.shape[0] != slots.numel():
                raise ValueError(
                    f"expected a batch of {slots.numel()} transitions with one batch "
                    f"dimension, got batch_size {tuple(data.batch_size)}"
                )
            if bool(((slots < 0) | (slots >= self.max_size)).any()):
                raise IndexError(f"slot out of range for max_size={self.max_size}")
            pixels = self._check_pixels(batch)
            pixel_entries = [*self.pixel_keys, *[("next", k) for k in self.pixel_keys]]
            other = data.exclude(*pixel_entries)
            self._check_other(batch.exclude(*pixel_entries))
            done = batch.get(self.done_key, None)
            done = (
                torch.zeros(slots.numel(), dtype=torch.bool)
                if done is None
                else done.reshape(slots.numel(), -1).any(-1).cpu()
            )
            frames = {
                key: (self._to_frames(obs), self._to_frames(nxt))
                for key, (obs, nxt) in pixels.items()
            }
        except (TypeError, ValueError, KeyError, IndexError):
            if set_cursor:
                self._rollback_writers(slots)
            raise
        super().set(cursor, other, set_cursor=set_cursor)
        for key, (obs, _) in pixels.items():
            index = self._indices.get(key)
            if index is None:
                shape = obs.shape[1:]
                self._pixel_shapes[key] = shape
                index = self._indices[key] = self._make_index(self._frame_shape(shape))
            index.write(slots, *frames[key], done)

    def _make_index(self, frame_shape: torch.Size) -> FrameStackIndex:
        return FrameStackIndex(
            self.max_size,
            frame_shape,
            frame_stack=self.frame_stack,
            codec=self.codec,
            chunk_len=self.chunk_len,
            max_streams=self.max_streams,
            cache_bytes=self.cache_bytes,
            num_threads=self.num_threads,
        )

    # ------------------------------------------------------------------ reading
    def get(self, index: Any) -> TensorDictBase:
        """Returns the transitions at ``index``, as :class:`~torchrl.data.LazyTensorStorage` does.

        Args:
            index: an integer, slice, sequence, tensor (any shape) or 1-tuple of those.

        Returns:
            A TensorDict with the raw keys and the rebuilt pixel stacks.
        """
        out = super().get(index)
        if isinstance(index, range):
            index = list(index)
        positions = torch.arange(self._len_along_dim0)[index]
        flat = positions.reshape(-1)
        for key, frame_index in self._indices.items():
            obs, nxt = frame_index.read(flat)
            shape = self._pixel_shapes[key]
            out.set(key, self._from_frames(obs, shape).view(*positions.shape, *shape))
            out.set(("next", key), self._from_frames(nxt, shape).view(*positions.shape, *shape))
        return out

    def relocate_rows(self, slots: torch.Tensor, capacity: int) -> None:
        """Keeps the transitions at ``slots`` (in order) in slots ``0..n-1`` of ``capacity``.

        The raw keys and the frame ids move together, so a resized storage returns exactly
        the transitions it held (see :class:`~torchrl_seer.data.ResizableRoundRobinWriter`).

        Args:
            slots: distinct slots, in the order they take.
            capacity: the new capacity.
        """
        for index in self._indices.values():
            index.relocate(slots, capacity)
        relocate_tensor_rows(self, slots, capacity)

    # ---------------------------------------------------------------- accounting
    def nbytes_held(self) -> int:
        """Bytes held: payloads, open chunks, caches, codec contexts, index tables, raw keys.

        Returns:
            The byte count.
        """
        total = self.codec.memory_bytes()
        total += sum(index.nbytes() for index in self._indices.values())
        if self.initialized:
            total += sum(
                v.numel() * v.element_size()
                for v in self._storage.values(True, True)
                if isinstance(v, torch.Tensor)
            )
        return total

    def bytes(self) -> int:
        """Alias of :meth:`nbytes_held` (the name TorchRL's storages use)."""
        return self.nbytes_held()

    def num_frames(self) -> int:
        """Number of distinct frames referenced by the stored transitions, over pixel keys."""
        return sum(index.num_frames() for index in self._indices.values())

    def flush(self) -> None:
        """Seals every open chunk (compressing it); later writes open new chunks."""
        for index in self._indices.values():
            index.flush()

    def clear_cache(self) -> None:
        """Drops the decoded chunks of the LRU cache."""
        for index in self._indices.values():
            index.pool.clear_cache()

    def _empty(self) -> None:
        super()._empty()
        for index in self._indices.values():
            index.clear()

    # -------------------------------------------------------------- persistence
    def _config(self) -> dict[str, Any]:
        return {
            "format_version": _FORMAT_VERSION,
            "max_size": self.max_size,
            "pixel_keys": [list(k) if isinstance(k, tuple) else k for k in self.pixel_keys],
            "frame_stack": self.frame_stack,
            "stack_dim": self.stack_dim,
            "chunk_len": self.chunk_len,
        }

    def state_dict(self) -> dict[str, Any]:
        """Returns the raw keys, index tables and encoded chunks (checksummed).

        Returns:
            A dict of tensors and plain Python values (``torch.load(weights_only=True)``
            compatible).
        """
        return {
            "config": self._config(),
            "len": len(self),
            "last_cursor": self._last_cursor_index,
            "other": self._storage.to_dict() if self.initialized else None,
            "pixels": [
                {
                    "key": list(key) if isinstance(key, tuple) else key,
                    "shape": list(self._pixel_shapes[key]),
                    "index": index.state_dict(),
                }
                for key, index in self._indices.items()
            ],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` bit-exactly; corrupted payloads raise ``ValueError``.

        Args:
            state_dict: the output of :meth:`state_dict`.
        """
        config = state_dict["config"]
        if config != self._config():
            raise ValueError(
                f"checkpoint configuration {config} does not match this storage {self._config()}"
            )
        indices, shapes = {}, {}
        for entry in state_dict["pixels"]:
            key = unravel_key(
                tuple(entry["key"]) if isinstance(entry["key"], list) else entry["key"]
            )
            shape = torch.Size(entry["shape"])
            index = self._make_index(self._frame_shape(shape))
            index.load_state_dict(entry["index"])
            indices[key], shapes[key] = index, shape
        if state_dict["other"] is not None:
            self._storage = TensorDict(state_dict["other"], batch_size=[self.max_size])
            self.initialized = True
        for replaced in self._indices.values():
            replaced.pool.shutdown()
        self._indices, self._pixel_shapes = indices, shapes
        self._len = int(state_dict["len"])
        last_cursor = state_dict["last_cursor"]
        self._set_last_cursor(-1 if last_cursor is None else int(last_cursor))
        self._bump_mutation_revision()
