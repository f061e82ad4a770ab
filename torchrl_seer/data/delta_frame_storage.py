"""A replay-buffer storage that keeps image observations once per frame, compressed."""

from __future__ import annotations

import copy
import threading
from collections.abc import Sequence
from multiprocessing.context import get_spawning_popen
from typing import Any

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase, is_tensor_collection, unravel_key
from torchrl.data import LazyTensorStorage

from torchrl_seer.data.checkpoint_checksums import seal_state, verify_state
from torchrl_seer.data.chunked_frame_pool import ChunkedFramePool
from torchrl_seer.data.delta_checkpointer import DeltaFrameStorageCheckpointer
from torchrl_seer.data.frame_codecs import FrameCodec, ZstdChunkCodec, make_frame_codec
from torchrl_seer.data.frame_stack_index import FrameStackIndex
from torchrl_seer.data.latent_replay_checkpointer import LatentReplayCheckpointer
from torchrl_seer.data.torchrl_internals import (
    relocate_tensor_rows,
    rewind_failed_write,
    storage_reader_kind,
)

__all__ = ["DeltaFrameStorage"]

# 2: every tensor and value of a checkpoint is checksummed
# 3: frame ids stored as newest id + padding counts, with verbatim exception rows
# 4: open chunks and write streams saved, so that a restored storage continues exactly
_FORMAT_VERSION = 4
# older formats this version restores (their index tables are converted; their chunks come
# back sealed and their write streams start afresh)
_READABLE_FORMAT_VERSIONS = (2, 3, 4)


class DeltaFrameStorage(LazyTensorStorage):
    """Lossless storage of stacked image observations, each distinct frame stored once.

    A drop-in replacement for :class:`~torchrl.data.LazyTensorStorage` for transitions whose
    observations are frame stacks (as :class:`~torchrl.envs.CatFrames` emits them): every
    read returns exactly what a ``LazyTensorStorage`` holding the same transitions returns
    (same keys, shapes, dtypes, bit-identical values), while the pixels take a small
    fraction of the memory.

    For each pixel key, the ``2 * frame_stack`` frames of a transition's observation and
    next observation are replaced by frame ids, kept as the newest frame id plus padding
    counts (6 bytes) when the frames are consecutive frames of one trajectory, verbatim
    (``int32`` ids) otherwise. A frame shared with the previous stack, the stack padding at
    an episode start, or the next observation is stored only once -- and only when the
    storage has *proven* it equal, byte for byte; the true final next observation of
    terminated and truncated steps is kept. Distinct frames go, in trajectory order, to
    chunks of ``chunk_len`` frames compressed by ``codec``. Chunks are reference counted:
    overwriting the oldest transitions frees the chunks nobody uses.
    Reads decode each chunk a batch touches once, on a thread pool, through a bounded LRU
    cache. All other keys (actions, rewards, done flags, trajectory ids, ...) are kept raw in
    a ``LazyTensorStorage`` layout, so samplers that read them decode nothing.

    Reads return every tensor on ``device``, as ``LazyTensorStorage(device=...)`` does: the
    raw keys live there, the compressed chunks stay in CPU memory, and the frames a read
    needs are moved there. With ``device_cache_bytes``, decoded chunks are copied to the
    device once and kept there in a bounded LRU cache, and the frame stacks are gathered
    on the device by index; a read touching more chunks than the cache holds is gathered on
    the CPU and moved in one copy, and leaves the cache as it was. The device cache is
    counted by :meth:`nbytes_held` and is not checkpointed. Writes accept tensors on any
    device (pixels are encoded on the CPU).

    The storage follows :class:`~torchrl.data.LazyTensorStorage`'s contract: writes at
    integer, slice, tensor or negative cursors, lists of transitions and tensorclasses are
    stored and returned as ``LazyTensorStorage`` stores and returns them, with the same casts
    (an integer or slice cursor copies with a cast, a tensor cursor requires the stored
    dtype). Every key of a batch is checked against what the storage holds before anything
    is written: a refused batch raises an error naming the key and what was expected, and
    leaves the storage bit-identical. ``ReplayBuffer.set_at_``, ``set_``, ``update_`` and
    ``update_if_present`` work on pixel keys too (the changed rows are re-encoded). Reads
    return new TensorDicts (decoded pixels are never kept), ``state_dict`` is a copy, and
    checkpoints carry a checksum for every tensor.

    Limits:
        * Pixels are stored as ``uint8``: the first write of a pixel key must be ``uint8``
          (later writes are cast as ``LazyTensorStorage`` would cast them into a ``uint8``
          key). Pixel keys need their ``("next", key)`` twin and one batch dimension.
        * The storage cannot be shared with another process: handing it (or a replay buffer
          holding it) to a spawned process raises ``RuntimeError``. Keep the buffer in one
          process and send it the collected batches, or use ``LazyMemmapStorage``. Pickling
          it otherwise (``copy.deepcopy``, ``pickle``, a ``torch.multiprocessing`` queue)
          gives an independent copy.
        * In-place edits of a TensorDict read from the storage reach the storage only through
          ``ReplayBuffer.set_at_`` / ``set_`` / ``update_`` / ``update_if_present`` (for raw
          keys, through any view of ``storage[:]``, as with ``LazyTensorStorage``).
        * ``device="auto"`` (the device of the first write) is refused: pass the device.
          A checkpoint or state dict loads onto the device of the storage that loads it,
          whatever device wrote it.
        * Checkpoints load only into a ``DeltaFrameStorage`` of the same configuration;
          TorchRL's save and load hooks and other checkpointers are refused
          (``NotImplementedError`` / ``TypeError``). Checkpoints of format version 2 (ids
          stored verbatim) are restored and converted; format version 1 (before checksums)
          raises ``ValueError`` naming its version. Loaded into one of TorchRL's storages
          instead, a checkpoint fails inside TorchRL's checkpointer
          (``KeyError: 'is_pytree'``): TorchRL does not check which storage wrote it.
        * Overlapping slice copies (``rb[2:6] = rb[0:4]``), which ``LazyTensorStorage``
          refuses, are accepted: the source is copied first.
        * A batch larger than the storage keeps its last ``max_size`` rows (a
          ``LazyTensorStorage`` given such a batch keeps an arbitrary mix of the rows that
          share a slot).

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
        device: where the raw keys live and where reads return every tensor (a CUDA
            device for a GPU learner). The compressed chunks stay on the CPU. Defaults to
            ``"cpu"``.
        device_cache_bytes: bound on the decoded chunks kept on ``device``, per pixel key
            (whole chunks: below one chunk nothing is kept); counted by :meth:`bytes`. It
            pays off when it holds every chunk of the buffer, or when reads revisit a few
            chunks (slices, a recent window); reads touching more chunks than it holds
            bypass it. ``0`` keeps none: every read is gathered on the CPU and moved to
            ``device`` in one copy. Defaults to ``0``.

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

        Frames gathered on the learner's device, through a device cache of decoded chunks:

        >>> device = "cuda" if torch.cuda.is_available() else "cpu"
        >>> storage = DeltaFrameStorage(
        ...     100, frame_stack=2, device=device, device_cache_bytes=2**20
        ... )
        >>> rb = ReplayBuffer(storage=storage, batch_size=3)
        >>> _ = rb.extend(data)
        >>> batch = rb.sample()
        >>> batch["pixels"].device == batch["next", "done"].device == storage.device
        True
        >>> storage.device_cached_bytes() > 0
        True
    """

    _default_checkpointer = DeltaFrameStorageCheckpointer
    # inherited from TensorStorage (the raw keys), annotated for type checkers
    _storage: Any
    initialized: bool

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
        device: torch.device | str = "cpu",
        device_cache_bytes: int = 0,
    ) -> None:
        if int(max_size) < 1:
            raise ValueError(f"max_size must be >= 1 transition, got {max_size}")
        if device == "auto":
            raise ValueError(
                "DeltaFrameStorage needs its device when it is created (its frame chunks are "
                "read there): pass device='cpu', 'cuda', ... rather than 'auto'"
            )
        if int(device_cache_bytes) < 0:
            raise ValueError(f"device_cache_bytes must be >= 0, got {device_cache_bytes}")
        # (thread, rows, TensorDict) of a full read that ReplayBuffer.set_at_ & co edit
        self._pending_edit: tuple[int, torch.Tensor, TensorDictBase] | None = None
        super().__init__(max_size, device=device)
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
        self.device_cache_bytes = int(device_cache_bytes)
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
    def _pixel_entries(self) -> list[NestedKey]:
        return [*self.pixel_keys, *[unravel_key(("next", k)) for k in self.pixel_keys]]

    def _pixel_twin(self, key: NestedKey) -> NestedKey | None:
        """The pixel key that ``key`` (a pixel key or its ``("next", key)`` twin) belongs to."""
        key = unravel_key(key)
        for pixel_key in self.pixel_keys:
            if key in (pixel_key, unravel_key(("next", pixel_key))):
                return pixel_key
        return None

    def _check_pixels(
        self, data: TensorDictBase, trial_index: Any
    ) -> dict[NestedKey, tuple[torch.Tensor, torch.Tensor]]:
        """Validates every pixel tensor and returns contiguous ``uint8`` (obs, next_obs) per key.

        Once a key is stored, a value that ``LazyTensorStorage`` would accept with a cast or a
        broadcast (an integer dtype, a non-contiguous tensor) is converted exactly as its index
        write converts it; what that write refuses is refused here with a clear error.
        """
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
                if value.device.type == "meta":
                    raise ValueError(
                        f"expected {full_key!r} on device cpu, got {value.device} (no data)"
                    )
                expected = self._pixel_shapes.get(key)
                if expected is None:
                    value = self._check_first_pixels(full_key, value)
                elif value.dtype != torch.uint8 or value.shape[1:] != expected:
                    value = self._cast_like_lazy_storage(full_key, value, expected, trial_index)
                value = value.to("cpu").contiguous()
                if pair and value.shape != pair[0].shape:
                    raise ValueError(
                        f"{full_key!r} has shape {tuple(value.shape[1:])} but {key!r} has "
                        f"{tuple(pair[0].shape[1:])}"
                    )
                pair.append(value)
            out[key] = (pair[0], pair[1])
        return out

    def _check_first_pixels(self, full_key: NestedKey, value: torch.Tensor) -> torch.Tensor:
        """Checks the pixels that define a key's layout (its first write)."""
        if value.dtype != torch.uint8:
            raise TypeError(
                f"expected {full_key!r} of dtype torch.uint8, got {value.dtype}: "
                "DeltaFrameStorage stores uint8 frames only"
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
        return value

    @staticmethod
    def _cast_like_lazy_storage(
        full_key: NestedKey, value: torch.Tensor, shape: torch.Size, trial_index: Any
    ) -> torch.Tensor:
        """Converts ``value`` as ``LazyTensorStorage``'s index write into a uint8 key would."""
        rows = value.shape[0] if value.ndim else 1
        converted = torch.empty((rows, *shape), dtype=torch.uint8)
        try:
            converted[trial_index] = value.cpu()
        except RuntimeError as error:
            kind = ValueError if value.dtype == torch.uint8 else TypeError
            raise kind(
                f"expected {full_key!r} of dtype torch.uint8 and shape {tuple(shape)} per "
                f"transition (what the storage holds), got {value.dtype} {tuple(value.shape)}: "
                f"{error}"
            ) from error
        return converted

    def _check_other(self, other: TensorDictBase, rows: int, trial_index: Any) -> None:
        """Tries every raw key's write on a scratch copy: refuses what the real write would.

        A key the storage holds must accept the value exactly as ``LazyTensorStorage``'s index
        write does (dtype, shape, device; with the same casts and broadcasts), so that a batch
        that passes cannot fail half-written.
        """
        if not self.initialized:
            return
        device = self._storage.device
        for key, value in other.items(True, True):
            stored = self._storage.get(key, None)
            if not isinstance(stored, torch.Tensor) or not isinstance(value, torch.Tensor):
                continue
            scratch = torch.empty(
                (rows, *stored.shape[1:]), dtype=stored.dtype, device=stored.device
            )
            index = trial_index
            if isinstance(index, torch.Tensor):
                index = index.to(stored.device)
            try:
                scratch[index] = value if device is None else value.to(device)
            except RuntimeError as error:
                raise ValueError(
                    f"expected {key!r} of dtype {stored.dtype} and shape "
                    f"{tuple(stored.shape[1:])} per transition (what the storage holds), got "
                    f"{value.dtype} {tuple(value.shape[1:])}: {error}"
                ) from error

    def _rollback_writers(self, cursor: torch.Tensor) -> None:
        """Undoes the cursor move of the writer executing a rejected write (if any)."""
        rewind_failed_write(self, cursor)

    # ------------------------------------------------------------------ writing
    def _slots(self, cursor: Any) -> tuple[torch.Tensor, bool, Any]:
        """The storage slots of ``cursor`` (torch indexing rules) and how to write one batch.

        Returns:
            The ``int64`` slots ``[B]``, whether the cursor addresses one transition, and the
            index that writes a ``[B]`` batch (``[1]`` for one transition) into a scratch
            tensor with the same semantics (cast and broadcast rules) as ``cursor`` into the
            storage: integers and slices copy, tensors and sequences index-put.
        """
        if isinstance(cursor, range):
            cursor = list(cursor)
        slots = torch.arange(self.max_size)[_on_cpu(cursor)]
        single = slots.ndim == 0
        slots = slots.reshape(-1)
        if isinstance(cursor, slice):
            return slots, single, slice(0, slots.numel())
        if single and not isinstance(cursor, torch.Tensor):
            return slots, single, slice(0, 1)
        return slots, single, torch.arange(slots.numel())

    def set(
        self,
        cursor: int | Sequence[int] | slice | torch.Tensor,
        data: Any,
        *,
        set_cursor: bool = True,
    ) -> None:
        """Writes transitions at ``cursor``; validates the whole batch before storing anything.

        ``cursor`` follows the indexing rules of :class:`~torchrl.data.LazyTensorStorage`
        (negative indices count from ``max_size``). Every key is checked against what the
        storage holds before anything is written: a refused batch raises and leaves the
        storage bit-identical.

        Args:
            cursor: the storage slot(s).
            data: a TensorDict (or tensorclass) of one transition (integer cursor) or of a
                batch ``[B]``, or a list of transitions.

        Keyword Args:
            set_cursor: whether to update the length and last cursor (``False`` for
                ``storage[index] = data``).
        """
        self._take_pending_edit()
        slots, single, trial_index = self._slots(cursor)
        try:
            if isinstance(data, list):
                if not data or not all(is_tensor_collection(d) for d in data):
                    raise TypeError(
                        "DeltaFrameStorage expected a non-empty list of TensorDicts, got "
                        f"{[type(d).__name__ for d in data]}"
                    )
                data = torch.stack(data)
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
            if slots.numel() == 0 and not self.initialized:
                raise ValueError("cannot initialize a DeltaFrameStorage from an empty batch")
            pixels = self._check_pixels(batch, trial_index)
            other = data.exclude(*self._pixel_entries())
            self._check_other(batch.exclude(*self._pixel_entries()), slots.numel(), trial_index)
            done = batch.get(self.done_key, None)
            done = (
                torch.zeros(slots.numel(), dtype=torch.bool)
                if done is None or slots.numel() == 0
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
        super().set(cursor, self._without_aliases(other), set_cursor=set_cursor)
        if slots.numel() == 0:
            return
        for key, (obs, _) in pixels.items():
            index = self._indices.get(key)
            if index is None:
                shape = obs.shape[1:]
                self._pixel_shapes[key] = shape
                index = self._indices[key] = self._make_index(self._frame_shape(shape))
            index.write(slots, *frames[key], done)

    def _without_aliases(self, other: TensorDictBase) -> TensorDictBase:
        """Clones ``other`` if it views the raw storage (``rb[:k] = rb[:k]``)."""
        if not self.initialized:
            return other
        held = {
            v.untyped_storage().data_ptr()
            for v in self._storage.values(True, True)
            if isinstance(v, torch.Tensor)
        }
        for value in other.values(True, True):
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() in held:
                return other.clone()
        return other

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
            device=self.device,
            device_cache_bytes=self.device_cache_bytes,
        )

    # ------------------------------------------------------------------ reading
    def get(self, index: Any) -> TensorDictBase:
        """Returns the transitions at ``index``, as :class:`~torchrl.data.LazyTensorStorage` does.

        The result is a new TensorDict: the decoded pixels never enter the raw storage. When
        a slice sampler reads the storage for keys only (the whole storage to find its
        trajectories, the sampled rows for their done flags), no pixel is decoded: see
        :func:`~torchrl_seer.data.torchrl_internals.storage_reader_kind`.

        Args:
            index: an integer, slice, sequence, tensor (any shape) or 1-tuple of those.

        Returns:
            A TensorDict (or the tensorclass written) with the raw keys and the rebuilt pixel
            stacks.
        """
        self._take_pending_edit()
        out = super().get(index).copy()
        caller = storage_reader_kind()
        if caller == "key-reader":
            return out
        if isinstance(index, range):
            index = list(index)
        positions = torch.arange(self._len_along_dim0)[_on_cpu(index)]
        flat = positions.reshape(-1)
        for key, frame_index in self._indices.items():
            obs, nxt = frame_index.read(flat)
            shape = self._pixel_shapes[key]
            out.set(key, self._from_frames(obs, shape).view(*positions.shape, *shape))
            out.set(("next", key), self._from_frames(nxt, shape).view(*positions.shape, *shape))
        if caller == "in-place-editor" and positions.ndim == 1:
            self._pending_edit = (threading.get_ident(), flat, out)
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

    # ---------------------------------------------------------- in-place updates
    def _take_pending_edit(self) -> tuple[torch.Tensor, TensorDictBase] | None:
        """Removes and returns this thread's pending in-place edit, if any."""
        pending = getattr(self, "_pending_edit", None)
        if pending is None or pending[0] != threading.get_ident():
            return None
        self._pending_edit = None
        return pending[1], pending[2]

    def _bump_mutation_revision(self) -> None:
        super()._bump_mutation_revision()
        pending = self._take_pending_edit()
        if pending is not None:
            self._write_back(*pending)

    def _write_back(self, positions: torch.Tensor, edited: TensorDictBase) -> None:
        """Re-encodes the rows whose pixels an in-place update changed.

        ``ReplayBuffer.set_at_``, ``set_`` and ``update_`` edit the TensorDict that a full
        read returned: raw keys are views of the storage, pixels are decoded copies. The rows
        whose pixels differ from what is stored are written back through :meth:`set`.
        """
        changed = torch.zeros(positions.numel(), dtype=torch.bool)
        for key, frame_index in self._indices.items():
            obs, nxt = frame_index.read(positions)
            for stored, full_key in ((obs, key), (nxt, unravel_key(("next", key)))):
                value = self._to_frames(edited.get(full_key))
                changed |= (value != stored).reshape(positions.numel(), -1).any(-1).cpu()
        if bool(changed.any()):
            self.set(positions[changed], edited[changed], set_cursor=False)

    def _conditional_patch_leaf(self, key: NestedKey) -> torch.Tensor:
        pixel_key = self._pixel_twin(key)
        if pixel_key is None or pixel_key not in self._pixel_shapes:
            return super()._conditional_patch_leaf(key)
        # dtype, shape and device of the pixel entry, without decoding anything
        shape = self._pixel_shapes[pixel_key]
        return torch.zeros((), dtype=torch.uint8, device=self.device).expand(self.max_size, *shape)

    def _apply_conditional_patch(
        self, index: torch.Tensor, patch: dict[NestedKey, torch.Tensor]
    ) -> None:
        if not any(self._pixel_twin(key) is not None for key in patch):
            super()._apply_conditional_patch(index, patch)
            return
        slots = index.reshape(-1)
        rows = self.get(slots)
        for key, value in patch.items():
            rows.set(key, value.reshape(slots.numel(), *value.shape[1:]))
        self.set(slots, rows, set_cursor=False)

    def __repr__(self) -> str:
        keys = []
        if self.initialized:
            keys = [
                f"{k}: {tuple(v.shape[1:])} {v.dtype}"
                for k, v in self._storage.items(True, True)
                if isinstance(v, torch.Tensor)
            ]
        for key, shape in self._pixel_shapes.items():
            keys += [f"{k}: {tuple(shape)} torch.uint8 (encoded)" for k in (key, ("next", key))]
        return (
            f"{type(self).__name__}(max_size={self.max_size}, len={len(self)}, "
            f"frame_stack={self.frame_stack}, keys=[{', '.join(keys)}])"
        )

    # ---------------------------------------------------------------- accounting
    def nbytes_held(self) -> int:
        """Bytes held: payloads, open chunks, caches, codec contexts, index tables, raw keys.

        The caches are the decoded-chunk LRU cache and the device cache
        (``device_cache_bytes``, counted as allocated on the device); the raw keys are
        counted on ``device``.

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

    def nbytes_transient(self) -> int:
        """The part of :meth:`nbytes_held` in decoded-chunk caches and codec contexts.

        It depends on the recent reads (and on the threads that decoded), and is not saved
        in a checkpoint.

        Returns:
            The byte count.
        """
        cached = sum(
            index.pool.cached_bytes() + index.pool.device_cached_bytes()
            for index in self._indices.values()
        )
        return self.codec.memory_bytes() + cached

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

    def recompress(self, level: int) -> int:
        """Re-encodes the sealed chunks at zstd ``level``: same frames, smaller payloads.

        Meant for off the write path (between collection phases, before a checkpoint): a
        higher level costs far more CPU per chunk than the default level 3 (64-frame Atari
        chunks: about 3 ms at level 9, 10 ms at level 15, 0.2-0.6 s at level 19, against
        0.6 ms at level 3). Chunks sealed later are encoded at ``compression_level`` again;
        each chunk is re-encoded once, and kept only if smaller. Reads stay exact throughout.

        Args:
            level: zstd compression level (1-22).

        Returns:
            The bytes saved.

        Raises:
            ValueError: the storage's codec is not zstd.
        """
        if not isinstance(self.codec, ZstdChunkCodec):
            raise ValueError(
                f"recompress re-encodes zstd chunks; this storage uses {self.codec.config()}"
            )
        codec = ZstdChunkCodec(level=level, frame_delta=self.codec.frame_delta)
        return sum(index.pool.recompress(codec) for index in self._indices.values())

    def device_cached_bytes(self) -> int:
        """Bytes allocated on ``device`` for decoded chunks (the device cache), over pixel keys."""
        return sum(index.pool.device_cached_bytes() for index in self._indices.values())

    def clear_cache(self) -> None:
        """Drops the decoded chunks of the LRU cache and of the device cache."""
        for index in self._indices.values():
            index.pool.clear_cache()

    def _empty(self) -> None:
        self._pending_edit = None
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
        """Returns a copy of the raw keys, index tables, encoded chunks and write streams.

        Nothing in the result shares memory with the storage: later writes do not change
        a state dict taken before them. Open chunks and the streams writing to them are saved
        too, so that a storage restored with :meth:`load_state_dict` holds the same bytes and
        goes on exactly as this one would.

        Returns:
            A dict of tensors and plain Python values (``torch.load(weights_only=True)``
            compatible), with a CRC32 of every tensor and a SHA-256 of the whole state under
            ``"checksums"``.
        """
        state = {
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
        return seal_state(_cloned(state))

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores :meth:`state_dict` bit-exactly, as a copy; verifies every checksum first.

        Restoring into a storage that already holds data replaces all of it (pixels and raw
        keys together); a storage that holds a tensorclass keeps returning that tensorclass.

        Args:
            state_dict: the output of :meth:`state_dict`.

        Raises:
            ValueError: the state dict was written by another storage, by an unsupported
                format version or for another configuration.
            CheckpointCorruptedError: a tensor or value does not match its checksum.
        """
        config = state_dict.get("config") if isinstance(state_dict, dict) else None
        if not isinstance(config, dict) or "format_version" not in config:
            raise ValueError(
                "this state dict was not written by DeltaFrameStorage.state_dict (keys "
                f"{sorted(state_dict) if isinstance(state_dict, dict) else type(state_dict)})"
            )
        version = config["format_version"]
        if version not in _READABLE_FORMAT_VERSIONS:
            raise ValueError(
                f"DeltaFrameStorage checkpoint format version {version} is not supported: this "
                f"version of torchrl_seer reads format versions {_READABLE_FORMAT_VERSIONS} "
                "(format 1 carried no checksums for raw keys and index tables); re-create the "
                "buffer"
            )
        verify_state(state_dict, what="DeltaFrameStorage checkpoint")
        if {**config, "format_version": _FORMAT_VERSION} != self._config():
            raise ValueError(
                f"checkpoint configuration {config} does not match this storage {self._config()}"
            )
        state_dict = _cloned(state_dict)
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
            other: Any = TensorDict(
                state_dict["other"], batch_size=[self.max_size], device=self.device
            )
            if self.initialized and not isinstance(self._storage, TensorDict):
                other = type(self._storage).from_tensordict(other)  # a tensorclass
            self._storage = other
            self.initialized = True
        else:
            self.initialized = False
        for replaced in self._indices.values():
            replaced.pool.shutdown()
        self._indices, self._pixel_shapes = indices, shapes
        self._pending_edit = None
        self._len = int(state_dict["len"])
        last_cursor = state_dict["last_cursor"]
        self._set_last_cursor(-1 if last_cursor is None else int(last_cursor))
        self._bump_mutation_revision()

    # ----------------------------------------------------------- processes/copies
    def __getstate__(self) -> dict[str, Any]:
        if get_spawning_popen() is not None:
            raise RuntimeError(
                "DeltaFrameStorage cannot be shared with another process: its frame chunks are "
                "allocated by the process that writes them, so two processes writing one "
                "buffer would corrupt each other's frames. Keep the replay buffer in one "
                "process and send it the collected batches (e.g. iterate a collector in the "
                "main process and call rb.extend), or use LazyTensorStorage / "
                "LazyMemmapStorage for a buffer shared between processes."
            )
        state = super().__getstate__()
        # a pickled copy is independent: no tensor of it may share memory with this storage
        state["_pending_edit"] = None
        if self.initialized:
            state["_storage"] = self._storage.clone()
        state["_indices"] = copy.deepcopy(self._indices)
        return state

    def register_save_hook(self, hook: Any) -> None:
        """Refused: see :class:`~torchrl_seer.data.DeltaFrameStorageCheckpointer`."""
        self.checkpointer.register_save_hook(hook)

    def register_load_hook(self, hook: Any) -> None:
        """Refused: see :class:`~torchrl_seer.data.DeltaFrameStorageCheckpointer`."""
        self.checkpointer.register_load_hook(hook)

    @property
    def checkpointer(self) -> DeltaFrameStorageCheckpointer | LatentReplayCheckpointer:
        """The checkpointer: a :class:`DeltaFrameStorageCheckpointer`, possibly wrapped.

        A :class:`~torchrl_seer.trainers.FreezeEncoderHook` watching the buffer wraps it in a
        :class:`~torchrl_seer.data.latent_replay_checkpointer.LatentReplayCheckpointer`, which
        saves and loads pixel checkpoints through it.
        """
        return self._checkpointer

    @checkpointer.setter
    def checkpointer(self, value: Any) -> None:
        if value is None:
            value = DeltaFrameStorageCheckpointer()
        inner = value.checkpointer if isinstance(value, LatentReplayCheckpointer) else value
        if not isinstance(inner, DeltaFrameStorageCheckpointer):
            raise TypeError(
                "DeltaFrameStorage is checkpointed in its compressed form by "
                f"DeltaFrameStorageCheckpointer; got {type(value).__name__}, which would "
                "save the raw keys without the pixels"
            )
        self._checkpointer = value


def _on_cpu(index: Any) -> Any:
    """``index`` with its tensors on the CPU (samplers of a device storage index on the device)."""
    if isinstance(index, torch.Tensor):
        return index.cpu()
    if isinstance(index, tuple):
        return tuple(_on_cpu(i) for i in index)
    return index


def _cloned(value: Any) -> Any:
    """A copy of a nested dict/list of tensors in which no tensor shares memory."""
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: _cloned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cloned(v) for v in value]
    return value
