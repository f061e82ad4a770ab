"""Migration of a pixel replay buffer to frozen-encoder latents at the SEER freeze."""

from __future__ import annotations

import ctypes
import gc
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import ReplayBuffer
from torchrl.data.replay_buffers.storages import (
    LazyMemmapStorage,
    LazyTensorStorage,
    Storage,
    TensorStorage,
)
from tqdm.auto import tqdm

from torchrl_seer.data.latent_capacity import (
    chronological_indices,
    equal_budget_capacity,
    install_storage,
    storage_nbytes,
    transition_nbytes,
)
from torchrl_seer.data.latent_encode_transform import LatentEncodeTransform

__all__ = ["LatentMigrationReport", "migrate_to_latent_replay", "process_rss_bytes"]


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
        pixel_storage_bytes (int): allocated bytes of the released pixel storage.
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


def _release(storage: Storage) -> None:
    """Frees the buffers of a storage that is no longer used."""
    storage._empty()  # storages with side structures (e.g. frame pools) free them here
    if isinstance(storage, LazyMemmapStorage) and getattr(storage, "_auto_cleanup", False):
        storage.cleanup()  # TorchRL's own policy: only storages that own their files
    if isinstance(storage, TensorStorage):
        storage._storage = None
        storage.initialized = False
    _return_freed_memory()


def migrate_to_latent_replay(
    replay_buffer: ReplayBuffer,
    transform: LatentEncodeTransform,
    *,
    budget_bytes: int | None = None,
    max_capacity: int | None = None,
    capacity: int | None = None,
    storage_factory: Callable[[int], TensorStorage] | None = None,
    batch_size: int = 512,
    progress: bool = True,
) -> LatentMigrationReport:
    """Replaces a pixel replay buffer's contents by frozen-encoder latents, in place.

    Every stored transition is read oldest first (``cursor..C-1`` then ``0..cursor-1``), encoded
    in batches by ``transform`` (eval, ``no_grad``) and written to slots ``0..n-1`` of a new
    latent storage of capacity ``c'``; the writer resumes at ``n`` (SEER spec R2). If ``c' < N``
    the newest ``c'`` transitions are kept (R3). The pixel storage is then released (R4) and
    ``transform`` is appended to the buffer so later writes are encoded on arrival. Non-pixel
    fields (actions, rewards, n-step returns, done flags) are copied bit for bit, so the
    transition written at the freeze step and every bootstrap mask survive (R1, R5).

    Args:
        replay_buffer (ReplayBuffer): the pixel buffer; its storage is any TorchRL storage whose
            ``get(index)`` returns a TensorDict (``LazyTensorStorage``, ``LazyMemmapStorage``,
            :class:`~torchrl_seer.data.DeltaFrameStorage`...).
        transform (LatentEncodeTransform): the encode-on-write transform of the frozen encoder.

    Keyword Args:
        budget_bytes (int, optional): memory budget of the latent buffer. Defaults to the
            allocated bytes of the pixel storage (measured).
        max_capacity (int, optional): cap on ``c'``.
        capacity (int, optional): an explicit ``c'`` (e.g. from the reference formulas); overrides
            the budget rule.
        storage_factory (callable, optional): ``capacity -> TensorStorage`` for the latents, e.g.
            ``lambda c: QuantizedStorage(c, keys=[...])``. Defaults to ``LazyTensorStorage``.
        batch_size (int): transitions encoded per batch. Defaults to ``512``.
        progress (bool): show a tqdm progress bar. Defaults to ``True``.

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
    start = time.perf_counter()
    rss_before = process_rss_bytes()
    old_storage = replay_buffer.storage
    num_transitions = len(old_storage)
    pixel_capacity = int(old_storage.max_size)
    cursor = int(replay_buffer._writer._cursor)
    try:
        pixel_bytes = storage_nbytes(old_storage)
    except TypeError:
        if budget_bytes is None and capacity is None:
            raise
        pixel_bytes = -1
    if budget_bytes is None:
        budget_bytes = pixel_bytes
    factory = storage_factory if storage_factory is not None else LazyTensorStorage

    slots = chronological_indices(num_transitions, pixel_capacity, cursor)
    latent_storage = factory(1)
    if num_transitions:
        probe = transform.inv(old_storage.get(slots[:1]))
        latent_bytes = transition_nbytes(probe, latent_storage)
    elif capacity is None:
        raise ValueError(
            "cannot size a latent buffer from an empty pixel buffer with the measured rule: "
            "pass capacity= (a latent buffer from the first transition)."
        )
    else:
        latent_bytes = 0
    if capacity is None:
        fixed_nbytes = getattr(latent_storage, "fixed_nbytes", None)
        overhead = int(fixed_nbytes(probe)) if callable(fixed_nbytes) else 0
        new_capacity = equal_budget_capacity(
            budget_bytes - overhead, latent_bytes, max_capacity=max_capacity
        )
        rule = "measured"
    else:
        new_capacity = min(capacity, max_capacity) if max_capacity is not None else capacity
        rule = "reference"
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
        calibrate = getattr(latent_storage, "calibrate", None)
        if callable(calibrate):
            calibrate(latents)
        latent_storage.set(torch.arange(len(kept)), latents)
        del latents
    install_storage(replay_buffer, latent_storage, old_slots=kept, length=len(kept))
    replay_buffer.append_transform(transform)
    _release(old_storage)
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
