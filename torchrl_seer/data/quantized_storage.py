"""A TensorDict storage that keeps chosen float keys in 8 or 16 bits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import NestedKey, TensorDictBase
from torchrl.data.replay_buffers.storages import LazyTensorStorage

from torchrl_seer.data.checkpoint_checksums import (
    verify_checksum_manifest,
    write_checksum_manifest,
)

__all__ = ["QuantizedStorage"]

_FORMATS = {"int8": torch.uint8, "bf16": torch.bfloat16, "fp16": torch.float16}
# Unit round-off of round-to-nearest casts: 2**-p for a p-bit significand.
_RELATIVE_ERROR = {"bf16": 2.0**-8, "fp16": 2.0**-11}
_FP16_MAX = 65504.0


def _key_name(key: NestedKey) -> str:
    return ".".join(key) if isinstance(key, tuple) else key


class QuantizedStorage(LazyTensorStorage):
    """A :class:`~torchrl.data.LazyTensorStorage` storing chosen float keys as int8, bf16 or fp16.

    Values are encoded in :meth:`set` and decoded back to their original float dtype in
    :meth:`get`, so samplers, writers, transforms and losses see ordinary float tensors.

    * ``"int8"``: affine 8-bit codes ``q = round((x - offset) / scale)`` in ``[0, 255]`` with one
      ``scale`` and ``offset`` per feature (last dimension), calibrated from data: explicitly with
      :meth:`calibrate` (SEER calibrates on the migrated latents at the freeze), or else from the
      first batch written. In-range values are decoded with an absolute error of at most
      ``scale / 2 = (max - min) / 510`` per feature (:meth:`max_abs_error`); values outside the
      calibrated range are clipped to it and counted in :attr:`num_clipped`.
    * ``"bf16"`` / ``"fp16"``: a cast with relative error at most ``2**-8`` / ``2**-11``
      (round to nearest); fp16 rejects values beyond ±65504. On CPU bf16 is the fast path.

    Keys not listed are stored unchanged. The per-feature parameters are part of
    :meth:`state_dict` and of :meth:`dumps` / :meth:`loads` checkpoints.

    Args:
        max_size (int): capacity (number of rows).

    Keyword Args:
        keys (sequence of NestedKey): the float keys to quantize.
        dtype (str): ``"int8"``, ``"bf16"`` or ``"fp16"``. Defaults to ``"int8"``.
        device (torch.device or str): storage device. Defaults to ``"cpu"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import ReplayBuffer
        >>> storage = QuantizedStorage(1000, keys=["observation"], dtype="int8")
        >>> rb = ReplayBuffer(storage=storage, batch_size=8)
        >>> obs = torch.randn(100, 17)
        >>> storage.calibrate(TensorDict({"observation": obs}, [100]))
        >>> _ = rb.extend(TensorDict({"observation": obs}, [100]))
        >>> storage._storage["observation"].dtype
        torch.uint8
        >>> err = (storage.get(torch.arange(100))["observation"] - obs).abs()
        >>> bool((err <= storage.max_abs_error("observation") + 1e-6).all())
        True
    """

    def __init__(
        self,
        max_size: int,
        *,
        keys: Sequence[NestedKey],
        dtype: str = "int8",
        device: torch.device | str = "cpu",
    ) -> None:
        if dtype not in _FORMATS:
            raise ValueError(f"dtype must be one of {sorted(_FORMATS)}, got {dtype!r}.")
        if not keys:
            raise ValueError("QuantizedStorage needs at least one key to quantize.")
        super().__init__(max_size, device=device)
        self.quantized_keys = [tuple(k) if isinstance(k, list) else k for k in keys]
        self.format = dtype
        self.scales: dict[str, torch.Tensor] = {}
        self.offsets: dict[str, torch.Tensor] = {}
        self.source_dtypes: dict[str, torch.dtype] = {}
        self.num_clipped = 0

    @property
    def calibrated(self) -> bool:
        """Whether the int8 scales and offsets are set (always ``True`` for bf16/fp16)."""
        return self.format != "int8" or len(self.scales) == len(self.quantized_keys)

    def calibrate(self, data: TensorDictBase) -> None:
        """Sets the int8 per-feature ``scale`` and ``offset`` from the range of ``data``.

        Args:
            data (TensorDictBase): representative data holding every quantized key; the range is
                taken per feature (last dimension) over all other dimensions.
        """
        if self.format != "int8":
            return
        for key in self.quantized_keys:
            values = self._get_float(data, key)
            flat = values.reshape(-1, values.shape[-1]) if values.ndim else values.reshape(1, 1)
            low, high = flat.min(0).values, flat.max(0).values
            self.offsets[_key_name(key)] = low.to(torch.float32)
            self.scales[_key_name(key)] = ((high - low) / 255.0).to(torch.float32)

    def max_abs_error(self, key: NestedKey) -> torch.Tensor:
        """Per-feature bound on ``|decode(encode(x)) - x|`` for int8 in-range values.

        Args:
            key (NestedKey): a quantized key.

        Returns:
            ``scale / 2`` for int8 (absolute); for bf16/fp16 the relative bound ``2**-8`` /
            ``2**-11`` as a scalar tensor (multiply by ``|x|``).
        """
        if self.format == "int8":
            return self.scales[_key_name(key)] / 2
        return torch.tensor(_RELATIVE_ERROR[self.format])

    def _get_float(self, data: TensorDictBase, key: NestedKey) -> torch.Tensor:
        value = data.get(key, None)
        if value is None:
            raise KeyError(
                f"QuantizedStorage expected key {key!r} in the written data; found "
                f"{list(data.keys(True, True))}."
            )
        if not value.is_floating_point():
            raise TypeError(
                f"QuantizedStorage can only quantize float keys; {key!r} is {value.dtype}."
            )
        return value

    def encode(self, data: TensorDictBase) -> TensorDictBase:
        """Returns a copy of ``data`` with the quantized keys encoded.

        Args:
            data (TensorDictBase): float data.

        Returns:
            A new TensorDict (``data`` is not modified).
        """
        if not self.calibrated:
            self.calibrate(data)
        out = data.exclude(*self.quantized_keys)
        for key in self.quantized_keys:
            value = self._get_float(data, key)
            self.source_dtypes.setdefault(_key_name(key), value.dtype)
            if self.format == "int8":
                name = _key_name(key)
                offset = self.offsets[name].to(value.device)
                scale = (
                    self.scales[name].to(value.device).clamp_min(torch.finfo(torch.float32).tiny)
                )
                codes = torch.round((value.float() - offset) / scale)
                clipped = (codes < 0) | (codes > 255)
                self.num_clipped += int(clipped.sum())
                out.set(key, codes.clamp_(0, 255).to(torch.uint8))
            else:
                if self.format == "fp16" and bool(value.abs().max() > _FP16_MAX):
                    raise ValueError(f"{key!r} holds values beyond the fp16 range (±65504).")
                out.set(key, value.to(_FORMATS[self.format]))
        return out

    def decode(self, data: TensorDictBase) -> TensorDictBase:
        """Decodes the quantized keys of ``data`` (as stored) back to float, in place.

        Args:
            data (TensorDictBase): rows read from the underlying storage.

        Returns:
            ``data`` with float values.
        """
        for key in self.quantized_keys:
            name = _key_name(key)
            codes = data.get(key)
            dtype = self.source_dtypes.get(name, torch.float32)
            if self.format == "int8":
                scale = self.scales[name].to(codes.device)
                offset = self.offsets[name].to(codes.device)
                data.set(key, (codes.to(torch.float32) * scale + offset).to(dtype))
            else:
                data.set(key, codes.to(dtype))
        return data

    def set(
        self,
        cursor: int | Sequence[int] | slice,
        data: TensorDictBase,
        *,
        set_cursor: bool = True,
    ) -> None:
        """Encodes the quantized keys of ``data`` and writes it at ``cursor``."""
        super().set(cursor, self.encode(data), set_cursor=set_cursor)

    def get(self, index: int | Sequence[int] | slice) -> Any:
        """Reads rows at ``index`` and decodes the quantized keys to float."""
        return self.decode(super().get(index))

    def bytes_per_row(self, data: TensorDictBase) -> int:
        """Bytes one row of ``data`` takes in this storage (quantized keys encoded).

        Args:
            data (TensorDictBase): a batch of float rows (batch dimension first).

        Returns:
            The stored size of one row, in bytes.
        """
        row = data[:1]
        if self.format == "int8" and not self.calibrated:
            return sum(
                (1 if key in self.quantized_keys else leaf.element_size()) * leaf[0].numel()
                for key, leaf in row.items(True, True)
            )
        encoded = self.encode(row) if self.calibrated else row
        return sum(leaf[0].numel() * leaf.element_size() for leaf in encoded.values(True, True))

    def fixed_nbytes(self, data: TensorDictBase) -> int:
        """Bytes this storage holds whatever its capacity: the int8 scales and offsets.

        Args:
            data (TensorDictBase): a batch of float rows holding every quantized key.

        Returns:
            ``2 * 4 * features`` per quantized key for int8, ``0`` for bf16/fp16.
        """
        if self.format != "int8":
            return 0
        return sum(2 * 4 * self._get_float(data, key).shape[-1] for key in self.quantized_keys)

    def bytes(self) -> int:
        """Alias of :meth:`nbytes_held` (the name TorchRL's storages use)."""
        return self.nbytes_held()

    def nbytes_held(self) -> int:
        """Allocated bytes: encoded rows plus the per-feature int8 parameters."""
        params = sum(
            t.numel() * t.element_size() for t in (*self.scales.values(), *self.offsets.values())
        )
        if not self.initialized:
            return params
        rows = sum(t.numel() * t.element_size() for t in self._storage.values(True, True))
        return rows + params

    def _quantization_state(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "scales": dict(self.scales),
            "offsets": dict(self.offsets),
            "source_dtypes": {k: str(v) for k, v in self.source_dtypes.items()},
            "num_clipped": self.num_clipped,
        }

    def _load_quantization_state(self, state: dict[str, Any]) -> None:
        if state["format"] != self.format:
            raise ValueError(
                f"checkpoint holds {state['format']!r} data but this storage is {self.format!r}."
            )
        self.scales = dict(state["scales"])
        self.offsets = dict(state["offsets"])
        self.source_dtypes = {
            k: getattr(torch, v.replace("torch.", "")) for k, v in state["source_dtypes"].items()
        }
        self.num_clipped = state["num_clipped"]

    def state_dict(self) -> dict[str, Any]:
        """TorchRL storage state plus the quantization parameters."""
        state = super().state_dict()
        state["quantization"] = self._quantization_state()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned."""
        state_dict = dict(state_dict)
        self._load_quantization_state(state_dict.pop("quantization"))
        super().load_state_dict(state_dict)

    def dumps(self, path: str | Path) -> None:
        """Writes the encoded rows (TorchRL memmap checkpoint) and the quantization parameters.

        A ``CHECKSUMS.sha256`` manifest with the SHA-256 of every file written is added.
        """
        super().dumps(path)
        torch.save(self._quantization_state(), Path(path) / "quantization.pt")
        write_checksum_manifest(path)

    def loads(self, path: str | Path) -> None:
        """Reads a checkpoint written by :meth:`dumps`, after verifying every file's checksum.

        Raises:
            CheckpointCorruptedError: a file does not match the checksum written with it.
        """
        verify_checksum_manifest(path)
        super().loads(path)
        self._load_quantization_state(torch.load(Path(path) / "quantization.pt", weights_only=True))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(max_size={self.max_size}, len={len(self)}, "
            f"keys={self.quantized_keys}, dtype={self.format!r})"
        )
