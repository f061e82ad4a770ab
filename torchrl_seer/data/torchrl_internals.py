"""The one module of this library that touches TorchRL's private state.

TorchRL has no public API to change a replay buffer's capacity, to swap its storage for one of
another kind with the writer, sampler and attachments kept consistent, to undo a writer's cursor
move after a refused write, to hard-copy a loss's online parameters into its targets without
registering a target updater, or to ask a collector whether it forwards weights through its own
sync schemes. Every such operation of this library goes through the functions below, so that
what depends on TorchRL's private state (writer cursors and write counts, a storage's length,
inner rows and cached shape, the trees of a :class:`~torchrl.data.PrioritizedSampler`, the
buffers attached to a storage, the private methods through which its samplers read a storage,
a loss's target-updater bookkeeping, a collector's weight-sync schemes) lives in one place.

Functions:

* reading a buffer: :func:`writer_position`, :func:`oldest_first_slots`,
  :func:`chronological_indices`, :func:`attached_replay_buffers`, :func:`storage_nbytes`,
  :func:`storage_reader_kind` (which TorchRL code is reading a storage, and for what);
* changing capacity: :func:`resize_round_robin` (rows kept oldest first, cursor, priorities),
  built from :func:`relocate_rows` and :func:`relocate_sampler_state`;
  :func:`adopt_loaded_capacity` after a checkpoint of another capacity was loaded;
* switching storage: :func:`install_storage`, :func:`switch_to_latent_replay`,
  :func:`is_latent_replay`, :func:`watch_for_latent_checkpoint`, :func:`release_storage`,
  :func:`drop_prefetched_samples`;
* refused writes: :func:`write_transaction` (a writer's own writes) and
  :func:`rewind_failed_write` (the writer that moved for a write a storage refuses);
* losses and collectors: :func:`hard_copy_targets` (online parameters into target copies),
  :func:`forwards_weight_packets` (whether a collector has weight-sync schemes of its own).
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from types import CodeType

import torch
from tensordict import is_tensor_collection
from torch.utils._pytree import tree_flatten, tree_map
from torchrl.data import HERReplayBuffer, ReplayBuffer
from torchrl.data.replay_buffers.samplers import (
    PrioritizedSampler,
    PrioritizedSliceSampler,
    Sampler,
    SliceSampler,
)
from torchrl.data.replay_buffers.storages import LazyMemmapStorage, Storage, TensorStorage
from torchrl.data.replay_buffers.writers import RoundRobinWriter, Writer
from torchrl.envs.transforms import Transform
from torchrl.objectives import HardUpdate, LossModule

from torchrl_seer.data.latent_replay_checkpointer import latent_replay_checkpointer
from torchrl_seer.data.storage_protocols import RowRelocatingStorage, SizedStorage

__all__ = [
    "adopt_loaded_capacity",
    "attached_replay_buffers",
    "chronological_indices",
    "drop_prefetched_samples",
    "forwards_weight_packets",
    "hard_copy_targets",
    "install_storage",
    "is_latent_replay",
    "oldest_first_slots",
    "release_storage",
    "relocate_rows",
    "relocate_sampler_state",
    "relocate_tensor_rows",
    "resize_round_robin",
    "rewind_failed_write",
    "set_writer_position",
    "storage_nbytes",
    "storage_reader_kind",
    "switch_to_latent_replay",
    "watch_for_latent_checkpoint",
    "write_transaction",
    "writer_position",
]


# --------------------------------------------------------------------------------- reading
def writer_position(writer: Writer) -> tuple[int, int]:
    """The next slot and the number of rows written of a round-robin writer.

    Args:
        writer (Writer): a :class:`~torchrl.data.RoundRobinWriter` (or subclass).

    Returns:
        ``(cursor, write_count)``.

    Examples:
        >>> import torch
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> rb = ReplayBuffer(storage=LazyTensorStorage(4))
        >>> _ = rb.extend(torch.arange(6))
        >>> writer_position(rb.writer)
        (2, 6)
    """
    if not isinstance(writer, RoundRobinWriter):
        raise TypeError(f"expected a RoundRobinWriter, got {type(writer).__name__}.")
    return int(writer._cursor), int(writer._write_count)


def set_writer_position(writer: Writer, cursor: int, write_count: int | None = None) -> None:
    """Moves a round-robin writer's cursor (and write count).

    Args:
        writer (Writer): a :class:`~torchrl.data.RoundRobinWriter` (or subclass).
        cursor (int): the next slot to write.
        write_count (int, optional): rows written so far; unchanged if omitted.
    """
    if not isinstance(writer, RoundRobinWriter):
        raise TypeError(f"expected a RoundRobinWriter, got {type(writer).__name__}.")
    writer._cursor = int(cursor)
    if write_count is not None:
        writer._write_count = int(write_count)


def chronological_indices(length: int, capacity: int, cursor: int) -> torch.Tensor:
    """Storage slots from oldest to newest for a round-robin buffer.

    Args:
        length (int): rows held.
        capacity (int): slots.
        cursor (int): the writer's next slot.

    Returns:
        ``arange(length)`` before the first wrap, else
        ``cat(arange(cursor, C), arange(0, cursor))``.

    Examples:
        >>> chronological_indices(5, 5, 2)
        tensor([2, 3, 4, 0, 1])
    """
    if length < capacity:
        return torch.arange(length)
    return torch.cat([torch.arange(cursor, capacity), torch.arange(0, cursor)])


def oldest_first_slots(replay_buffer: ReplayBuffer) -> torch.Tensor:
    """The slots of a round-robin buffer's rows, oldest first.

    Args:
        replay_buffer (ReplayBuffer): a buffer written by a round-robin writer.

    Returns:
        A 1-D ``int64`` tensor of ``len(replay_buffer.storage)`` slots.

    Examples:
        >>> import torch
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> rb = ReplayBuffer(storage=LazyTensorStorage(4))
        >>> _ = rb.extend(torch.arange(6))
        >>> oldest_first_slots(rb)
        tensor([2, 3, 0, 1])
    """
    storage = replay_buffer.storage
    cursor, _ = writer_position(replay_buffer.writer)
    return chronological_indices(len(storage), int(storage.max_size), cursor)


def attached_replay_buffers(storage: Storage) -> list[ReplayBuffer]:
    """The replay buffers reading from ``storage`` (those ``storage.attach`` registered).

    Args:
        storage (Storage): a TorchRL storage.

    Returns:
        The attached :class:`~torchrl.data.ReplayBuffer` objects.
    """
    return [entity for entity in storage._attached_entities if isinstance(entity, ReplayBuffer)]


def storage_nbytes(storage: Storage, *, transient: bool = True) -> int:
    """Bytes a storage holds allocated.

    A :class:`SizedStorage` (every storage of this library) reports itself; for a TorchRL
    :class:`~torchrl.data.TensorStorage` (lazy, memmap) the preallocated rows are summed.

    Args:
        storage (Storage): the storage to measure.

    Keyword Args:
        transient (bool): count the caches and codec working memory of a
            :class:`SizedStorage` (:meth:`~SizedStorage.nbytes_transient`), which depend on
            recent reads. Defaults to ``True``.

    Returns:
        The allocated size in bytes (``0`` for a storage not yet initialized).

    Raises:
        TypeError: for a storage that is neither.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage
        >>> storage = LazyTensorStorage(10)
        >>> storage.set(0, TensorDict({"x": torch.zeros(4)}))
        >>> storage_nbytes(storage)
        160
    """
    if isinstance(storage, SizedStorage):
        held = int(storage.nbytes_held())
        return held if transient else held - int(storage.nbytes_transient())
    if isinstance(storage, TensorStorage):
        if not storage.initialized:
            return 0
        data = storage._storage
        leaves = data.values(True, True) if is_tensor_collection(data) else [data]
        return sum(leaf.numel() * leaf.element_size() for leaf in leaves)
    raise TypeError(
        f"cannot measure the bytes of a {type(storage).__name__}: implement the SizedStorage "
        "protocol (nbytes_held) or pass an explicit budget."
    )


def _own_code(owner: type | None, names: Sequence[str]) -> list[CodeType]:
    """The code of the methods ``owner`` itself defines under ``names`` (absent ones skipped)."""
    functions = [vars(owner).get(name) for name in names] if owner is not None else []
    return [inspect.unwrap(f).__code__ for f in functions if inspect.isfunction(f)]


def _torchrl_class(module: str, name: str) -> type | None:
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


# Code that reads a storage for its non-pixel keys only: SliceSampler's search for trajectories
# (trajectory ids or done flags of ``storage[:]``, or the trajectory and step keys through its
# fragmented-trajectory index), its reading of the sampled rows' done, terminated and init
# flags, PrioritizedSliceSampler's own reading of them, and HERReplayBuffer's search for
# episode ends ...
_KEY_READERS = [
    *_own_code(HERReplayBuffer, ("_build_episode_cache",)),
    *_own_code(SliceSampler, ("_get_stop_and_length", "_end_signal_from_keys", "_finalize_index")),
    *_own_code(PrioritizedSliceSampler, ("sample",)),
    *_own_code(
        _torchrl_class(
            "torchrl.data.replay_buffers.samplers._trajectory", "_FragmentedTrajectoryIndex"
        ),
        ("_read_records",),
    ),
]
_IN_PLACE_EDITORS = _own_code(ReplayBuffer, ("set_at_", "set_", "update_"))
_READER_KINDS: dict[CodeType, str] = {
    **{code: "key-reader" for code in _KEY_READERS},
    **{code: "in-place-editor" for code in _IN_PLACE_EDITORS},
}
_GETITEM_CODE = Storage.__getitem__.__code__


def storage_reader_kind() -> str | None:
    """What the TorchRL code reading a storage will do with what the read returns.

    Call it directly from a storage's ``get``. TorchRL's slice samplers, ``HERReplayBuffer``
    and ``set_at_`` read the storage (often all of it, ``storage[:]``) and no argument says
    why: :class:`~torchrl.data.SliceSampler` (its trajectory index too),
    :class:`~torchrl.data.PrioritizedSliceSampler` and ``HERReplayBuffer``'s search for
    episode ends then read only trajectory, step, done, terminated and init keys (a storage may
    leave its expensive keys out of what it returns them), while ``ReplayBuffer.set_at_``,
    ``set_`` and ``update_`` edit the returned TensorDict in place. The caller is found on the
    call stack (through ``Storage.__getitem__`` if the read went through it).

    Returns:
        ``"key-reader"`` (only non-pixel keys are read), ``"in-place-editor"`` (the result is
        edited in place and must be written back) or ``None`` (an ordinary read).
    """
    frame = sys._getframe(2)  # 0: this function, 1: get, 2: Storage.__getitem__ or the caller
    if frame.f_code is _GETITEM_CODE and frame.f_back is not None:
        frame = frame.f_back
    return _READER_KINDS.get(frame.f_code)


# ------------------------------------------------------------------------ changing capacity
def _check_resizable(storage: Storage) -> TensorStorage:
    if not isinstance(storage, TensorStorage):
        raise TypeError(
            f"resizing needs a TensorStorage (LazyTensorStorage, LazyMemmapStorage or a storage "
            f"of this library), got {type(storage).__name__}."
        )
    if storage.ndim != 1:
        raise ValueError(f"resizing needs a storage with ndim=1, got ndim={storage.ndim}.")
    return storage


def relocate_rows(storage: Storage, slots: torch.Tensor, capacity: int) -> None:
    """Keeps the rows at ``slots`` (in that order) in slots ``0..n-1`` of ``capacity`` slots.

    The storage keeps its identity (buffers, writers and samplers still point at it); its
    capacity becomes ``capacity``, its length ``n = len(slots)`` and every other row is dropped.
    A :class:`RowRelocatingStorage` moves its own side structures; for a TorchRL
    :class:`~torchrl.data.TensorStorage` the inner rows are copied into a new allocation (a
    memory-mapped one stays memory-mapped) and the per-slot write generations follow their rows.

    Args:
        storage (Storage): a :class:`~torchrl.data.TensorStorage` with ``ndim=1``.
        slots (torch.Tensor): distinct slots, in the order they take.
        capacity (int): the new capacity, at least ``len(slots)``.

    Examples:
        >>> import torch
        >>> from torchrl.data import LazyTensorStorage
        >>> storage = LazyTensorStorage(4)
        >>> storage.set(torch.arange(4), torch.arange(10, 14))
        >>> relocate_rows(storage, torch.tensor([2, 3, 0]), 6)
        >>> storage.max_size, len(storage), storage.get(torch.arange(3))
        (6, 3, tensor([12, 13, 10]))
    """
    storage = _check_resizable(storage)
    slots = torch.as_tensor(slots, dtype=torch.int64).reshape(-1)
    if capacity < max(1, slots.numel()):
        raise ValueError(f"capacity {capacity} cannot hold {slots.numel()} rows (nor be < 1).")
    if isinstance(storage, RowRelocatingStorage):
        storage.relocate_rows(slots, capacity)
        return
    relocate_tensor_rows(storage, slots, capacity)


def relocate_tensor_rows(storage: TensorStorage, slots: torch.Tensor, capacity: int) -> None:
    """:func:`relocate_rows` for the inner rows of a :class:`~torchrl.data.TensorStorage`.

    Storages implementing :class:`RowRelocatingStorage` call it for their TensorDict part.

    Args:
        storage (TensorStorage): the storage (``ndim=1``).
        slots (torch.Tensor): distinct slots, in the order they take.
        capacity (int): the new capacity.
    """
    num_rows = slots.numel()
    if storage.initialized:
        data = storage._storage

        def move(leaf: torch.Tensor) -> torch.Tensor:
            moved = leaf.new_zeros((capacity, *leaf.shape[1:]))
            moved[:num_rows] = leaf[slots]
            return moved

        if is_tensor_collection(data):
            moved = data.apply(move, batch_size=[capacity], call_on_nested=False)
            if data.is_memmap():
                moved = moved.memmap_()
        else:
            moved = tree_map(move, data)
        storage._storage = moved
    storage.max_size = int(capacity)
    storage.__dict__.pop("_total_shape_value", None)
    storage._len = num_rows
    storage._set_last_cursor(num_rows - 1 if num_rows else -1)
    generations = getattr(storage, "_slot_generations", None)
    if generations is not None:
        moved_generations = torch.full(
            (capacity,), -1, dtype=generations.dtype, device=generations.device
        )
        in_range = slots < generations.numel()
        moved_generations[:num_rows][in_range] = generations[slots[in_range]]
        storage._slot_generations = moved_generations
    storage._bump_mutation_revision()


def relocate_sampler_state(sampler: Sampler, slots: torch.Tensor, capacity: int) -> None:
    """Moves a sampler's per-slot state with rows that :func:`relocate_rows` moved.

    A :class:`~torchrl.data.PrioritizedSampler` (or prioritized slice sampler) gets sum/min
    trees of the new capacity, each row keeping its priority (``slots[i]`` → ``i``) and the
    running maximum priority following its row; a :class:`~torchrl.data.SliceSampler` drops
    its cached trajectory boundaries; other samplers reset what they derived from the storage
    (e.g. :class:`~torchrl.data.SamplerWithoutReplacement` starts a new epoch).

    Args:
        sampler (Sampler): the sampler of a buffer reading the storage.
        slots (torch.Tensor): the previous slot of each new row ``0..n-1``.
        capacity (int): the new capacity.
    """
    slots = torch.as_tensor(slots, dtype=torch.int64).reshape(-1)
    if isinstance(sampler, PrioritizedSampler):
        values = (
            torch.as_tensor(sampler._sum_tree[slots.numpy()], dtype=torch.float64)
            if slots.numel()
            else None
        )
        max_priority, max_index = sampler._max_priority
        sampler._max_capacity = int(capacity)
        sampler._init()  # new trees of the new capacity, no maximum yet
        if values is not None:
            new_slots = torch.arange(slots.numel()).numpy()
            sampler._sum_tree[new_slots] = values.numpy()
            sampler._min_tree[new_slots] = values.numpy()
        if max_priority is not None and max_index is not None:
            if sampler._max_priority_within_buffer:
                matches = (slots == int(max_index)).nonzero()
                max_index = int(matches[0, 0]) if len(matches) else None
                max_priority = max_priority if max_index is not None else None
        if max_priority is not None:
            sampler._max_priority = (max_priority, max_index)
    if isinstance(sampler, SliceSampler):
        sampler._cache.clear()
    if not isinstance(sampler, PrioritizedSampler):
        sampler._empty()


def resize_round_robin(writer: Writer, capacity: int) -> torch.Tensor:
    """Changes the capacity of the storage a round-robin writer fills, in place.

    The newest ``min(len, capacity)`` rows move, oldest first, to slots ``0..n-1``; the writer
    resumes at ``n % capacity`` (its write count is kept) and the sampler of every buffer
    attached to the storage follows (:func:`relocate_sampler_state`).

    Args:
        writer (Writer): a :class:`~torchrl.data.RoundRobinWriter` with a registered storage.
        capacity (int): the new capacity (``>= 1``).

    Returns:
        The previous slot of each kept row, oldest first.

    Examples:
        >>> import torch
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> rb = ReplayBuffer(storage=LazyTensorStorage(4))
        >>> _ = rb.extend(torch.arange(6))
        >>> resize_round_robin(rb.writer, 3)
        tensor([3, 0, 1])
        >>> rb.storage.get(torch.arange(3)), writer_position(rb.writer)
        (tensor([3, 4, 5]), (0, 6))
    """
    if int(capacity) < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}.")
    storage = writer._storage
    if storage is None:
        raise RuntimeError("the writer has no storage: register it with a buffer first.")
    storage = _check_resizable(storage)
    for buffer in attached_replay_buffers(storage):
        drop_prefetched_samples(buffer)
    cursor, _ = writer_position(writer)
    slots = chronological_indices(len(storage), int(storage.max_size), cursor)[-int(capacity) :]
    relocate_rows(storage, slots, int(capacity))
    for buffer in attached_replay_buffers(storage):
        relocate_sampler_state(buffer.sampler, slots, int(capacity))
    set_writer_position(writer, slots.numel() % int(capacity))
    return slots


def adopt_loaded_capacity(storage: Storage) -> int | None:
    """Sets ``max_size`` to the number of rows a checkpoint loaded into ``storage``.

    TorchRL's ``load_state_dict`` of a lazy storage that was not initialized assigns the
    checkpoint's rows as they are and keeps the constructor's ``max_size`` (and a
    :class:`~torchrl.data.PrioritizedSampler` its constructor's capacity with the
    checkpoint's trees): both take the checkpoint's capacity.

    Args:
        storage (Storage): a :class:`~torchrl.data.TensorStorage`.

    Returns:
        The number of allocated rows, or ``None`` when the storage holds none.
    """
    storage = _check_resizable(storage)
    if not storage.initialized:
        return None
    data = storage._storage
    rows = data.shape[0] if is_tensor_collection(data) else tree_flatten(data)[0][0].shape[0]
    storage.max_size = int(rows)
    storage.__dict__.pop("_total_shape_value", None)
    for buffer in attached_replay_buffers(storage):
        if isinstance(buffer.sampler, PrioritizedSampler):
            buffer.sampler._max_capacity = int(rows)
    return int(rows)


# ------------------------------------------------------------------------ switching storage
def install_storage(
    replay_buffer: ReplayBuffer,
    storage: TensorStorage,
    *,
    old_slots: torch.Tensor,
    length: int,
) -> None:
    """Makes ``storage`` (rows ``0..length-1`` filled, oldest first) the buffer's storage.

    Wires writer, attachment, cursor and sampler as TorchRL's constructor would
    (``ReplayBuffer.set_storage`` alone does neither): batches a prefetching buffer sampled
    ahead are dropped, the writer cursor becomes
    ``length % capacity`` (its write count is kept), the previous storage no longer notifies
    the buffer, and the sampler's per-slot state moves with the rows (``old_slots[i]`` → ``i``,
    :func:`relocate_sampler_state`).

    Args:
        replay_buffer (ReplayBuffer): the buffer to modify in place.
        storage (TensorStorage): the new, filled storage.

    Keyword Args:
        old_slots (torch.Tensor): the previous slot of each new row ``0..length-1``.
        length (int): rows written.
    """
    drop_prefetched_samples(replay_buffer)
    with replay_buffer._replay_lock:
        previous = replay_buffer.storage
        if replay_buffer in previous._attached_entities:
            previous._attached_entities.remove(replay_buffer)
        replay_buffer.set_storage(storage)
        replay_buffer.writer.register_storage(storage)
        storage.attach(replay_buffer)
        storage._len = int(length)
        storage._set_last_cursor(int(length) - 1 if length else -1)
        set_writer_position(replay_buffer.writer, int(length) % int(storage.max_size))
        relocate_sampler_state(replay_buffer.sampler, old_slots, int(storage.max_size))


def drop_prefetched_samples(replay_buffer: ReplayBuffer) -> None:
    """Waits for and discards the batches a ``ReplayBuffer(prefetch=n)`` sampled ahead.

    Called before the storage or the slots of a buffer change, so that no batch of the
    previous layout (pixels before a switch to latents, slot indices before a resize) is
    returned afterwards.

    Args:
        replay_buffer (ReplayBuffer): the buffer.
    """
    with replay_buffer._futures_lock:
        replay_buffer._clear_prefetch_queue_locked()


def is_latent_replay(replay_buffer: ReplayBuffer, transform: Transform) -> bool:
    """Whether ``transform`` already encodes the buffer's writes (the buffer was switched).

    Args:
        replay_buffer (ReplayBuffer): the buffer.
        transform (Transform): the encode-on-write transform.

    Returns:
        ``True`` if ``transform`` is one of the buffer's transforms.
    """
    return any(t is transform for t in replay_buffer.transform)


def switch_to_latent_replay(
    replay_buffer: ReplayBuffer,
    storage: TensorStorage,
    transform: Transform,
    *,
    old_slots: torch.Tensor,
    length: int,
) -> None:
    """Switches a pixel buffer to latent replay: the one path for migration and restore.

    Installs ``storage`` (:func:`install_storage`) and appends the encode-on-write
    ``transform``, so later writes are encoded on arrival.

    Args:
        replay_buffer (ReplayBuffer): the pixel buffer.
        storage (TensorStorage): the latent storage, rows ``0..length-1`` filled (or empty).
        transform (Transform): the encode-on-write transform.

    Keyword Args:
        old_slots (torch.Tensor): the pixel slot of each latent row (for the sampler state).
        length (int): latent rows written.

    Raises:
        RuntimeError: if the buffer is already in latent replay with this transform.
    """
    if is_latent_replay(replay_buffer, transform):
        raise RuntimeError("the replay buffer is already in latent replay with this transform.")
    storage.checkpointer = latent_replay_checkpointer(storage.checkpointer)
    install_storage(replay_buffer, storage, old_slots=old_slots, length=length)
    replay_buffer.append_transform(transform)


def watch_for_latent_checkpoint(
    replay_buffer: ReplayBuffer, on_latent_checkpoint: Callable[[int], Storage]
) -> None:
    """Lets a pixel buffer load a latent-replay checkpoint (``rb.loads``) by switching first.

    Gives the pixel storage a
    :class:`~torchrl_seer.data.latent_replay_checkpointer.LatentReplayCheckpointer` (or its
    delta variant) carrying the same state as its checkpointer; storages with a checkpointer
    of another class are left as they are.

    Args:
        replay_buffer (ReplayBuffer): the pixel buffer.
        on_latent_checkpoint (callable): ``capacity -> Storage``: switches the buffer to an
            empty latent storage of that capacity and returns it.
    """
    storage = replay_buffer.storage
    storage.checkpointer = latent_replay_checkpointer(
        storage.checkpointer, on_latent_checkpoint=on_latent_checkpoint
    )


def release_storage(storage: Storage) -> None:
    """Frees the buffers of a storage that is no longer used.

    Args:
        storage (Storage): a storage no buffer reads any more.
    """
    storage._empty()  # storages with side structures (e.g. frame pools) free them here
    if isinstance(storage, LazyMemmapStorage) and getattr(storage, "_auto_cleanup", False):
        storage.cleanup()  # TorchRL's own policy: only storages that own their files
    if isinstance(storage, TensorStorage):
        storage._storage = None
        storage.initialized = False
    gc.collect()


# ---------------------------------------------------------------------------- refused writes
@contextlib.contextmanager
def write_transaction(writer: RoundRobinWriter) -> Iterator[None]:
    """Restores a round-robin writer's position if the write inside does not reach storage.

    TorchRL writers move their cursor before writing (so that concurrent writers never take
    the same slots); if the storage then refuses the write, the cursor and write count are
    put back, unless the storage did change (the write landed and a later step failed).

    Args:
        writer (RoundRobinWriter): the writer about to write.
    """
    position = writer_position(writer)
    storage = writer._storage
    revision = storage._mutation_revision if storage is not None else None
    try:
        yield
    except BaseException:
        if storage is None or storage._mutation_revision == revision:
            set_writer_position(writer, *position)
        raise


def rewind_failed_write(
    storage: Storage, slots: int | slice | Sequence[int] | torch.Tensor
) -> bool:
    """Puts back the cursor of the writer that moved for a write ``storage`` refuses.

    Call it from a storage's ``set`` before raising. Only the writer whose ``add``/``extend``
    (or ``write_at``) is executing this very write is rewound -- found on the call stack, so a
    direct ``storage.set`` by the user moves no writer, and the writers of other buffers
    attached to the same storage are left alone.

    Args:
        storage (Storage): the storage refusing the write.
        slots (int, slice, sequence or torch.Tensor): the cursor of the refused write.

    Returns:
        ``True`` if a writer was rewound.
    """
    if isinstance(slots, slice):
        slots = torch.arange(int(storage.max_size))[slots]
    slots = torch.as_tensor(slots).reshape(-1)
    frame = inspect.currentframe()
    frame = frame.f_back if frame is not None else None
    while frame is not None and frame.f_locals.get("self") is storage:
        frame = frame.f_back
    if frame is None or slots.numel() == 0:
        return False
    writer = frame.f_locals.get("self")
    method = frame.f_code.co_name
    if not isinstance(writer, RoundRobinWriter) or writer._storage is not storage:
        return False
    cursor, write_count = writer_position(writer)
    if method in ("add", "extend"):
        set_writer_position(writer, int(slots[0]), write_count - slots.numel())
        return True
    if method == "write_at":
        set_writer_position(writer, cursor, write_count - slots.numel())
        return True
    return False


# ---------------------------------------------------------------------- losses and collectors
def hard_copy_targets(loss: LossModule) -> int:
    """Hard-copies a loss's online parameters into its targets (see ``sync_targets``).

    A :class:`~torchrl.objectives.HardUpdate` built on the loss does the copy and is discarded;
    the loss's target-updater bookkeeping, which that construction sets, is put back.

    Args:
        loss (LossModule): a TorchRL loss.

    Returns:
        The number of target tensors overwritten (0 when the loss has none of its own).
    """
    associated = dict(loss._has_update_associated)
    try:
        with torch.no_grad():
            updater = HardUpdate(loss)
    except RuntimeError:  # no target parameters, or targets that share the online storage
        return 0
    finally:
        loss._has_update_associated.update(associated)
    return sum(len(list(getattr(loss, name).keys(True, True))) for name in updater._target_names)


def forwards_weight_packets(collector: object) -> bool:
    """Whether a collector passes weights on to processes of its own through sync schemes.

    True for a multi-process TorchRL collector built with ``weight_sync_schemes``: its
    ``update_policy_weights_`` forwards a weight packet to its workers.

    Args:
        collector (object): a TorchRL collector, or any object.
    """
    return bool(getattr(collector, "_weight_sync_schemes", None))
