"""Replay capacity under a memory budget, and in-place growth of a replay buffer's capacity."""

from __future__ import annotations

import math

import torch
from tensordict import TensorDictBase
from torchrl.data import ReplayBuffer
from torchrl.data.replay_buffers.samplers import PrioritizedSampler, SamplerWithoutReplacement
from torchrl.data.replay_buffers.storages import Storage, TensorStorage

__all__ = [
    "chronological_indices",
    "equal_budget_capacity",
    "grow_replay_buffer",
    "install_storage",
    "reference_capacity_atari",
    "reference_capacity_dmc",
    "storage_nbytes",
    "transition_nbytes",
]


def storage_nbytes(storage: Storage) -> int:
    """Bytes a storage holds allocated, measured from its buffers.

    Storages that define ``nbytes()`` or ``bytes()`` (e.g.
    :class:`~torchrl_seer.data.QuantizedStorage`, :class:`~torchrl_seer.data.DeltaFrameStorage`)
    report themselves (a compressed storage reports what it holds); for a TorchRL
    :class:`~torchrl.data.TensorStorage` (lazy, memmap) the preallocated leaves are summed.

    Args:
        storage (Storage): the storage to measure.

    Returns:
        The allocated size in bytes (``0`` for a storage not yet initialized).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage
        >>> storage = LazyTensorStorage(10)
        >>> storage.set(0, TensorDict({"x": torch.zeros(4)}))
        >>> storage_nbytes(storage)
        160
    """
    for method in ("nbytes", "bytes"):
        measure = getattr(storage, method, None)
        if callable(measure):
            return int(measure())
    if isinstance(storage, TensorStorage):
        if not storage.initialized:
            return 0
        data = storage._storage
        leaves = data.values(True, True) if isinstance(data, TensorDictBase) else [data]
        return sum(leaf.numel() * leaf.element_size() for leaf in leaves)
    raise TypeError(
        f"cannot measure the bytes of a {type(storage).__name__}: give it an nbytes() method "
        "or pass an explicit budget."
    )


def transition_nbytes(data: TensorDictBase, storage: Storage | None = None) -> int:
    """Bytes one transition of ``data`` takes once written to ``storage``.

    Args:
        data (TensorDictBase): a batch of transitions (batch dimension first), as written.
        storage (Storage, optional): the target storage; one defining ``bytes_per_row`` (e.g. a
            :class:`~torchrl_seer.data.QuantizedStorage`) accounts for its encoding.

    Returns:
        The size of one transition, counting every stored field.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> transition_nbytes(TensorDict({"latent": torch.zeros(3, 576)}, [3]))
        2304
    """
    bytes_per_row = getattr(storage, "bytes_per_row", None)
    if callable(bytes_per_row):
        return int(bytes_per_row(data))
    return sum(leaf[0].numel() * leaf.element_size() for leaf in data.values(True, True))


def equal_budget_capacity(
    budget_bytes: int, bytes_per_transition: int, *, max_capacity: int | None = None
) -> int:
    """SEER's measured capacity rule: ``c' = min(cap_max, floor(budget / b_lat))``.

    Args:
        budget_bytes (int): memory budget for the latent buffer.
        bytes_per_transition (int): allocated bytes of one latent transition (``b_lat``).

    Keyword Args:
        max_capacity (int, optional): the user cap ``cap_max``.

    Returns:
        The latent capacity.

    Raises:
        ValueError: if not even one transition fits in the budget.

    Examples:
        >>> equal_budget_capacity(56_448 * 1000, 4608)
        12250
        >>> equal_budget_capacity(56_448 * 1000, 4608, max_capacity=5000)
        5000
    """
    if bytes_per_transition <= 0:
        raise ValueError(f"bytes_per_transition must be positive, got {bytes_per_transition}.")
    capacity = budget_bytes // bytes_per_transition
    if max_capacity is not None:
        capacity = min(capacity, max_capacity)
    if capacity < 1:
        raise ValueError(
            f"a memory budget of {budget_bytes} bytes cannot hold one latent transition of "
            f"{bytes_per_transition} bytes; raise the budget."
        )
    return int(capacity)


def reference_capacity_dmc(
    pixel_capacity: int,
    *,
    num_train_steps: int,
    num_copies: int = 4,
    latent_dim: int = 50,
    frame_bytes: int = 3 * 100 * 100,
    latent_sets: int = 2,
) -> int:
    """SEER's DMC reference formula ``min(T, floor(C p / (l 4 2 K)))`` (``seer_dmc/train.py``).

    Args:
        pixel_capacity (int): pixel buffer capacity ``C``.

    Keyword Args:
        num_train_steps (int): the cap ``T``.
        num_copies (int): crops per observation ``K``. Defaults to ``4``.
        latent_dim (int): latent size ``l``. Defaults to ``50``.
        frame_bytes (int): ``p``, one RGB frame. Defaults to ``30000``.
        latent_sets (int): critic and actor latents. Defaults to ``2``.

    Returns:
        The reference latent capacity.

    Examples:
        >>> reference_capacity_dmc(1000, num_train_steps=80_000)
        18750
        >>> reference_capacity_dmc(1000, num_train_steps=80_000, num_copies=1)
        75000
    """
    denominator = latent_dim * 4 * latent_sets * num_copies
    return min(num_train_steps, pixel_capacity * frame_bytes // denominator)


def reference_capacity_atari(
    pixel_capacity: int, *, t_max: int, latent_dim: int = 576, frame_bytes: int = 84 * 84
) -> int:
    """SEER's Atari reference formula ``min(floor(C * p / (4 l)), T_max)`` (``seer_atari``).

    Args:
        pixel_capacity (int): pixel buffer capacity ``C``.

    Keyword Args:
        t_max (int): the cap ``T_max``.
        latent_dim (int): latent size (576 data-efficient CNN, 3136 Nature CNN).
        frame_bytes (int): one stored frame (84x84 uint8).

    Returns:
        The reference latent capacity.

    Examples:
        >>> reference_capacity_atari(10_000, t_max=500_000)
        30625
        >>> reference_capacity_atari(10_000, t_max=500_000, latent_dim=3136)
        5625
    """
    return min(math.floor(pixel_capacity * frame_bytes / (latent_dim * 4)), t_max)


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


def _rebuild_sampler(replay_buffer: ReplayBuffer, old_slots: torch.Tensor, capacity: int) -> None:
    sampler = replay_buffer._sampler
    if isinstance(sampler, PrioritizedSampler):
        new = PrioritizedSampler(
            capacity,
            sampler.alpha,
            sampler.beta,
            eps=sampler._eps,
            dtype=sampler.dtype,
            reduction=sampler.reduction,
            max_priority_within_buffer=sampler._max_priority_within_buffer,
        )
        if len(old_slots):
            values = torch.as_tensor(sampler._sum_tree[old_slots.numpy()])
            new_slots = torch.arange(len(old_slots))
            new._sum_tree[new_slots.numpy()] = values.numpy()
            new._min_tree[new_slots.numpy()] = values.numpy()
        max_priority, max_index = sampler._max_priority
        if max_priority is not None:
            if max_index is not None and sampler._max_priority_within_buffer:
                matches = (old_slots == int(max_index)).nonzero()
                max_index = int(matches[0, 0]) if len(matches) else None
                if max_index is None:
                    max_priority = None
            new._max_priority = (max_priority, max_index) if max_priority is not None else None
        replay_buffer.set_sampler(new)
    elif isinstance(sampler, SamplerWithoutReplacement):
        sampler._empty()


def install_storage(
    replay_buffer: ReplayBuffer,
    storage: TensorStorage,
    *,
    old_slots: torch.Tensor,
    length: int,
) -> None:
    """Makes ``storage`` (rows ``0..length-1`` filled, oldest first) the buffer's storage.

    Wires writer, attachment, cursor and sampler as TorchRL's constructor would (``set_storage``
    alone does not; see torchrl_notes §1): the writer cursor becomes ``length % capacity`` and a
    :class:`~torchrl.data.PrioritizedSampler` is rebuilt for the new capacity with the priority
    of each row moved from its old slot (``old_slots[i]`` → ``i``).

    Args:
        replay_buffer (ReplayBuffer): the buffer to modify in place.
        storage (TensorStorage): the new, filled storage.

    Keyword Args:
        old_slots (torch.Tensor): the previous slot of each new row ``0..length-1``.
        length (int): rows written.
    """
    replay_buffer.set_storage(storage)
    replay_buffer._writer.register_storage(storage)
    storage.attach(replay_buffer)
    storage._len = length
    replay_buffer._writer._cursor = length % storage.max_size
    _rebuild_sampler(replay_buffer, old_slots, storage.max_size)


def grow_replay_buffer(replay_buffer: ReplayBuffer, capacity: int) -> None:
    """Changes the capacity of a replay buffer in place, keeping order, cursor and priorities.

    Rows are copied oldest first into slots ``0..n-1`` of a new storage of the same class and
    the writer resumes at ``n``; with a :class:`~torchrl.data.PrioritizedSampler` the sum/min
    trees are rebuilt at the new capacity and every row keeps its priority. Shrinking keeps the
    newest ``capacity`` rows (SEER spec R3).

    Args:
        replay_buffer (ReplayBuffer): a buffer whose storage is a
            :class:`~torchrl.data.LazyTensorStorage` (or subclass such as
            :class:`~torchrl_seer.data.QuantizedStorage`).
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
    storage = replay_buffer.storage
    if not isinstance(storage, TensorStorage):
        raise TypeError(f"grow_replay_buffer needs a TensorStorage, got {type(storage).__name__}.")
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity}.")
    slots = chronological_indices(len(storage), storage.max_size, replay_buffer._writer._cursor)
    slots = slots[-capacity:]
    if storage.initialized:
        if not isinstance(storage._storage, TensorDictBase):
            raise TypeError("grow_replay_buffer needs a storage of TensorDicts.")
        rows = storage._storage[slots]
        new_rows = torch.empty_like(rows[:1].expand(capacity))
        new_rows[: len(slots)] = rows
        storage._storage = new_rows
    storage.max_size = capacity
    storage.__dict__.pop("_total_shape_value", None)
    storage._len = len(slots)
    replay_buffer._writer._cursor = len(slots) % capacity
    storage._bump_mutation_revision()
    _rebuild_sampler(replay_buffer, slots, capacity)
