"""Typed protocols that the storages of this library implement, used instead of probing."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from tensordict import TensorDictBase

__all__ = ["EncodedRowStorage", "RowRelocatingStorage", "SizedStorage"]


@runtime_checkable
class SizedStorage(Protocol):
    """A storage that reports the bytes it holds.

    Every storage of this library implements it
    (:class:`~torchrl_seer.data.DeltaFrameStorage`, :class:`~torchrl_seer.data.QuantizedStorage`)
    and keeps TorchRL's ``bytes()`` as an alias; it also says which of those bytes are
    transient (caches, codec working memory).
    :func:`~torchrl_seer.data.torchrl_internals.storage_nbytes` measures any storage: this
    protocol first, then the allocated rows of a TorchRL :class:`~torchrl.data.TensorStorage`.

    Examples:
        >>> from torchrl.data import LazyTensorStorage
        >>> from torchrl_seer.data import QuantizedStorage
        >>> isinstance(QuantizedStorage(4, keys=["x"]), SizedStorage)
        True
        >>> isinstance(LazyTensorStorage(4), SizedStorage)
        False
    """

    def nbytes_held(self) -> int:
        """Bytes the storage holds: rows, side tables, caches, codec state."""
        ...

    def nbytes_transient(self) -> int:
        """The part of :meth:`nbytes_held` that reads and writes create and drop.

        Caches of decoded data and codec working memory: they depend on the recent reads and
        threads, and are not in a checkpoint. ``nbytes_held() - nbytes_transient()`` is the
        same in a run and in the same run stopped and resumed.
        """
        ...


@runtime_checkable
class RowRelocatingStorage(Protocol):
    """A storage with per-slot side structures that moves them itself when rows move.

    :func:`~torchrl_seer.data.torchrl_internals.relocate_rows` calls :meth:`relocate_rows`
    instead of moving the inner rows of a :class:`~torchrl.data.TensorStorage` itself (e.g.
    :class:`~torchrl_seer.data.DeltaFrameStorage` moves its frame ids with its raw keys).
    """

    def relocate_rows(self, slots: torch.Tensor, capacity: int) -> None:
        """Keeps the rows at ``slots`` (in that order) in slots ``0..n-1`` of ``capacity``."""
        ...


@runtime_checkable
class EncodedRowStorage(Protocol):
    """A storage that encodes rows on write, so a row's stored size differs from the data's.

    :class:`~torchrl_seer.data.QuantizedStorage` implements it; the latent migration sizes its
    buffer with it and calibrates it on the migrated rows.
    """

    def calibrate(self, data: TensorDictBase) -> None:
        """Fits the encoding to representative rows before they are written."""
        ...

    def bytes_per_row(self, data: TensorDictBase) -> int:
        """Bytes one row of ``data`` takes once encoded in this storage."""
        ...

    def fixed_nbytes(self, data: TensorDictBase) -> int:
        """Bytes held whatever the capacity (e.g. per-feature quantization parameters)."""
        ...
