"""Migration of a pixel replay buffer to frozen-encoder latents at the SEER freeze."""

from __future__ import annotations

import ctypes
import gc
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import ReplayBuffer
from torchrl.data.replay_buffers.storages import LazyTensorStorage, Storage, TensorStorage
from tqdm.auto import tqdm

from torchrl_seer.data.latent_capacity import equal_budget_capacity
from torchrl_seer.data.latent_encode_transform import LatentEncodeTransform
from torchrl_seer.data.storage_protocols import EncodedRowStorage
from torchrl_seer.data.torchrl_internals import (
    oldest_first_slots,
    release_storage,
    storage_nbytes,
    switch_to_latent_replay,
)

__all__ = [
    "LatentMigrationReport",
    "LatentReplayOptions",
    "migrate_to_latent_replay",
    "process_rss_bytes",
    "transition_nbytes",
]


def process_rss_bytes() -> int:
    """Resident set size of this process in bytes (Linux ``/proc``; ``-1`` elsewhere).

    Returns:
        The current RSS in bytes.

    Examples:
        >>> process_rss_bytes() > 0
        True
    """
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return -1


def transition_nbytes(data: TensorDictBase, storage: Storage | None = None) -> int:
    """Bytes one transition of ``data`` takes once written to ``storage``.

    Args:
        data (TensorDictBase): a batch of transitions (batch dimension first), as written.
        storage (Storage, optional): the target storage; an
            :class:`~torchrl_seer.data.storage_protocols.EncodedRowStorage` (e.g. a
            :class:`~torchrl_seer.data.QuantizedStorage`) accounts for its encoding.

    Returns:
        The size of one transition, counting every stored field.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> transition_nbytes(TensorDict({"latent": torch.zeros(3, 576)}, [3]))
        2304
    """
    if isinstance(storage, EncodedRowStorage):
        return int(storage.bytes_per_row(data))
    return sum(leaf[0].numel() * leaf.element_size() for leaf in data.values(True, True))


@dataclass(frozen=True)
class LatentReplayOptions:
    """How :func:`migrate_to_latent_replay` sizes and fills the latent buffer.

    The fields are its keyword arguments, so ``migrate_to_latent_replay(rb, t, **vars(o))``
    and :class:`~torchrl_seer.trainers.FreezeEncoderHook` ``(replay_options=o)`` do the same.

    Attributes:
        budget_bytes (int, optional): memory budget of the latent buffer. Defaults to the
            bytes the pixel storage holds (measured), without its caches and codec working
            memory (``SizedStorage.nbytes_transient``).
        max_capacity (int, optional): cap on the latent capacity ``c'``.
        capacity (int or callable, optional): an explicit ``c'``, or ``pixel_capacity -> c'``
            (e.g. ``functools.partial(reference_capacity_atari, t_max=500_000)``); overrides the
            budget rule.
        storage_factory (callable, optional): ``capacity -> TensorStorage`` for the latents,
            e.g. ``lambda c: QuantizedStorage(c, keys=[...])``. Defaults to
            ``LazyTensorStorage``.
        batch_size (int): transitions encoded per batch. Defaults to ``512``.
        progress (bool): show a tqdm progress bar. Defaults to ``True``.

    Examples:
        >>> options = LatentReplayOptions(max_capacity=10_000, progress=False)
        >>> options.max_capacity, options.batch_size
        (10000, 512)
    """

    budget_bytes: int | None = None
    max_capacity: int | None = None
    capacity: int | Callable[[int], int] | None = None
    storage_factory: Callable[[int], TensorStorage] | None = None
    batch_size: int = 512
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        for name in ("budget_bytes", "max_capacity"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}.")
        if isinstance(self.capacity, int) and self.capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {self.capacity}.")

    def as_kwargs(self) -> dict[str, Any]:
        """The options as keyword arguments of :func:`migrate_to_latent_replay`."""
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def latent_capacity(self, pixel_capacity: int) -> int | None:
        """The explicit latent capacity for a pixel buffer of ``pixel_capacity`` (or ``None``).

        Args:
            pixel_capacity (int): the capacity of the pixel buffer.

        Returns:
            ``capacity`` (called with ``pixel_capacity`` if callable), capped by
            ``max_capacity``; ``None`` under the budget rule.
        """
        if self.capacity is None:
            return None
        capacity = self.capacity(pixel_capacity) if callable(self.capacity) else self.capacity
        if self.max_capacity is not None:
            capacity = min(capacity, self.max_capacity)
        return int(capacity)


def _return_freed_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class LatentMigrationReport:
    """What a migration did; every byte figure is measured on the allocated buffers.

    Attributes:
        num_transitions (int): transitions in the pixel buffer (N).
        num_migrated (int): transitions written to the latent buffer.
        num_dropped (int): oldest transitions dropped because ``c' < N``.
        pixel_capacity (int): C.
        latent_capacity (int): c'.
        pixel_bytes_per_transition (float): b_pix, allocated pixel bytes / C.
        latent_bytes_per_transition (int): b_lat, allocated latent bytes / c'.
        budget_bytes (int): the memory budget used for c'.
        pixel_storage_bytes (int): bytes of the released pixel storage (caches and codec
            working memory left out).
        latent_storage_bytes (int): allocated bytes of the latent storage.
        rss_before_bytes (int): process RSS right before the migration.
        rss_after_bytes (int): process RSS after the pixel storage was released.
        seconds (float): wall time of the migration.
        capacity_rule (str): ``"measured"`` or ``"reference"``.
    """

    num_transitions: int
    num_migrated: int
    num_dropped: int
    pixel_capacity: int
    latent_capacity: int
    pixel_bytes_per_transition: float
    latent_bytes_per_transition: int
    budget_bytes: int
    pixel_storage_bytes: int
    latent_storage_bytes: int
    rss_before_bytes: int
    rss_after_bytes: int
    seconds: float
    capacity_rule: str

    def as_dict(self) -> dict[str, Any]:
        """The report as a plain dict (for loggers and JSON)."""
        return asdict(self)


def migrate_to_latent_replay(
    replay_buffer: ReplayBuffer,
    transform: LatentEncodeTransform,
    *,
    budget_bytes: int | None = None,
    max_capacity: int | None = None,
    capacity: int | Callable[[int], int] | None = None,
    storage_factory: Callable[[int], TensorStorage] | None = None,
    batch_size: int = 512,
    progress: bool = True,
) -> LatentMigrationReport:
    """Replaces a pixel replay buffer's contents by frozen-encoder latents, in place.

    Every stored transition is read oldest first (``cursor..C-1`` then ``0..cursor-1``), encoded
    in batches by ``transform`` (eval, ``no_grad``) and written to slots ``0..n-1`` of a new
    latent storage of capacity ``c'``; the writer resumes at ``n``. If ``c' < N`` the newest
    ``c'`` transitions are kept. The buffer is then switched to the latent storage
    (:func:`~torchrl_seer.data.torchrl_internals.switch_to_latent_replay`: writer, sampler
    priorities, attachment, and ``transform`` appended so later writes are encoded on arrival)
    and the pixel storage is released. Non-pixel fields (actions, rewards, n-step returns, done
    flags) are copied bit for bit, so the transition written at the freeze step and every
    bootstrap mask survive.

    The migration is atomic: everything is encoded and written to the new storage before the
    buffer changes, so an error (encoder, budget, storage) leaves the buffer as it was.

    Args:
        replay_buffer (ReplayBuffer): the pixel buffer, written by a round-robin writer; its
            storage is any TorchRL storage whose ``get(index)`` returns a TensorDict
            (``LazyTensorStorage``, ``LazyMemmapStorage``,
            :class:`~torchrl_seer.data.DeltaFrameStorage`...).
        transform (LatentEncodeTransform): the encode-on-write transform of the frozen encoder.

    Keyword Args:
        budget_bytes (int, optional): memory budget of the latent buffer. Defaults to the
            bytes the pixel storage holds (measured), without its caches and codec working
            memory (``SizedStorage.nbytes_transient``).
        max_capacity (int, optional): cap on ``c'``.
        capacity (int or callable, optional): an explicit ``c'``, or ``pixel_capacity -> c'``
            (e.g. from the reference formulas); overrides the budget rule. An empty pixel
            buffer without it keeps its capacity (capped by ``max_capacity``).
        storage_factory (callable, optional): ``capacity -> TensorStorage`` for the latents, e.g.
            ``lambda c: QuantizedStorage(c, keys=[...])``. Defaults to ``LazyTensorStorage``.
        batch_size (int): transitions encoded per batch. Defaults to ``512``.
        progress (bool): show a tqdm progress bar. Defaults to ``True``.

    These keyword arguments are the fields of :class:`LatentReplayOptions`.

    Returns:
        A :class:`LatentMigrationReport`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> from torchrl_seer.modules import DataEfficientAtariEncoder
        >>> rb = ReplayBuffer(storage=LazyTensorStorage(100), batch_size=8)
        >>> pixels = torch.randint(0, 255, (30, 4, 84, 84), dtype=torch.uint8)
        >>> _ = rb.extend(TensorDict({"pixels": pixels, ("next", "pixels"): pixels}, [30]))
        >>> encoder = DataEfficientAtariEncoder()
        >>> report = migrate_to_latent_replay(rb, LatentEncodeTransform(encoder), progress=False)
        >>> report.num_migrated, report.latent_capacity
        (30, 1225)
        >>> rb.sample()["latent"].shape
        torch.Size([8, 576])
    """
    options = LatentReplayOptions(
        budget_bytes=budget_bytes,
        max_capacity=max_capacity,
        capacity=capacity,
        storage_factory=storage_factory,
        batch_size=batch_size,
        progress=progress,
    )
    start = time.perf_counter()
    rss_before = process_rss_bytes()
    old_storage = replay_buffer.storage
    num_transitions = len(old_storage)
    pixel_capacity = int(old_storage.max_size)
    slots = oldest_first_slots(replay_buffer)
    try:
        # caches and codec contexts left out: they depend on recent reads, so a resumed run
        # would size its latent buffer differently from the uninterrupted run
        pixel_bytes = storage_nbytes(old_storage, transient=False)
    except TypeError:
        if budget_bytes is None and capacity is None:
            raise
        pixel_bytes = -1
    if budget_bytes is None:
        budget_bytes = pixel_bytes
    factory = storage_factory if storage_factory is not None else LazyTensorStorage

    new_capacity = options.latent_capacity(pixel_capacity)
    rule = "reference"
    latent_bytes = 0
    if new_capacity is None and num_transitions == 0:
        new_capacity = min(pixel_capacity, max_capacity or pixel_capacity)
        rule = "pixel capacity"
    elif new_capacity is None:
        probe_storage = factory(1)
        probe = transform.inv(old_storage.get(slots[:1]))
        latent_bytes = transition_nbytes(probe, probe_storage)
        overhead = (
            int(probe_storage.fixed_nbytes(probe))
            if isinstance(probe_storage, EncodedRowStorage)
            else 0
        )
        new_capacity = equal_budget_capacity(
            budget_bytes - overhead, latent_bytes, max_capacity=max_capacity
        )
        rule = "measured"
    kept = slots[max(0, num_transitions - new_capacity) :]

    chunks: list[TensorDictBase] = []
    for begin in tqdm(
        range(0, len(kept), batch_size),
        desc="SEER: encoding replay buffer",
        disable=not progress,
        unit="batch",
    ):
        chunks.append(transform.inv(old_storage.get(kept[begin : begin + batch_size])))
    latent_storage = factory(new_capacity)
    if chunks:
        latents = torch.cat(chunks)
        chunks.clear()
        if latent_bytes == 0:
            latent_bytes = transition_nbytes(latents, latent_storage)
        if isinstance(latent_storage, EncodedRowStorage):
            latent_storage.calibrate(latents)
        latent_storage.set(torch.arange(len(kept)), latents)
        del latents
    switch_to_latent_replay(
        replay_buffer, latent_storage, transform, old_slots=kept, length=len(kept)
    )
    release_storage(old_storage)
    del old_storage
    _return_freed_memory()
    latent_storage_bytes = storage_nbytes(latent_storage)
    if latent_storage.initialized:
        latent_bytes = latent_storage_bytes // new_capacity
    return LatentMigrationReport(
        num_transitions=num_transitions,
        num_migrated=len(kept),
        num_dropped=num_transitions - len(kept),
        pixel_capacity=pixel_capacity,
        latent_capacity=new_capacity,
        pixel_bytes_per_transition=pixel_bytes / pixel_capacity
        if pixel_bytes >= 0
        else float("nan"),
        latent_bytes_per_transition=latent_bytes,
        budget_bytes=budget_bytes,
        pixel_storage_bytes=pixel_bytes,
        latent_storage_bytes=latent_storage_bytes,
        rss_before_bytes=rss_before,
        rss_after_bytes=process_rss_bytes(),
        seconds=time.perf_counter() - start,
        capacity_rule=rule,
    )
