"""TorchRL's CompressedListStorage in the configurations the delta benchmarks compare against.

:class:`~torchrl.data.CompressedListStorage` (TorchRL 0.14) compresses each stored item's
**top-level** tensors one by one and keeps anything nested (such as ``("next", "pixels")``)
as it is. Its best use therefore gets *flat* transitions: :func:`flat_transitions` moves
every nested entry to the top level (``("next", "pixels")`` becomes ``"next_pixels"``), so
that both pixel stacks (and the small scalar entries) are compressed. Its default codec is
zlib on Python < 3.14; :class:`ZstdTensorCodec` plugs zstd (python-zstandard) in through
its ``compression_fn``/``decompression_fn`` arguments.
"""

from __future__ import annotations

from typing import Any

import torch
import zstandard
from tensordict import TensorDictBase
from torchrl.data import CompressedListStorage

__all__ = ["CLS_CONFIGS", "ZstdTensorCodec", "flat_transitions", "make_compressed_list"]


def flat_transitions(data: TensorDictBase) -> TensorDictBase:
    """Moves every nested entry to the top level, joining key parts with ``_``."""
    return data.flatten_keys("_")


class ZstdTensorCodec:
    """zstd ``compression_fn``/``decompression_fn`` pair for CompressedListStorage.

    Keyword Args:
        level: zstd level.
    """

    def __init__(self, *, level: int) -> None:
        self.level = level
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()

    def compress(self, tensor: torch.Tensor) -> torch.Tensor:
        """Compresses one tensor into a ``uint8`` tensor."""
        payload = self._compressor.compress(tensor.contiguous().numpy().tobytes())
        return torch.frombuffer(bytearray(payload), dtype=torch.uint8)

    def decompress(self, compressed: torch.Tensor, metadata: dict[str, Any]) -> torch.Tensor:
        """Inverse of :meth:`compress`, shaped by the storage's metadata."""
        raw = self._decompressor.decompress(compressed.numpy().tobytes())
        return torch.frombuffer(bytearray(raw), dtype=metadata["dtype"]).reshape(metadata["shape"])


def _zlib(level: int) -> dict[str, Any]:
    return {"compression_level": level}


def _zstd(level: int) -> dict[str, Any]:
    codec = ZstdTensorCodec(level=level)
    return {"compression_fn": codec.compress, "decompression_fn": codec.decompress}


# label -> (flat transitions?, keyword arguments factory)
CLS_CONFIGS: dict[str, tuple[bool, Any]] = {
    "nested, zlib-3 (default)": (False, lambda: _zlib(3)),
    "flat, zlib-1": (True, lambda: _zlib(1)),
    "flat, zlib-3": (True, lambda: _zlib(3)),
    "flat, zlib-9": (True, lambda: _zlib(9)),
    "flat, zstd-1": (True, lambda: _zstd(1)),
    "flat, zstd-3": (True, lambda: _zstd(3)),
    "flat, zstd-10": (True, lambda: _zstd(10)),
}


def make_compressed_list(max_size: int, config: str) -> tuple[CompressedListStorage, bool]:
    """Builds a CompressedListStorage in configuration ``config`` of :data:`CLS_CONFIGS`.

    Returns:
        The storage and whether it expects flat transitions (:func:`flat_transitions`).
    """
    flat, kwargs = CLS_CONFIGS[config]
    return CompressedListStorage(max_size, **kwargs()), flat
