"""A TensorDict storage that keeps chosen float keys in 8 or 16 bits."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from tensordict import NestedKey, TensorDictBase, is_tensor_collection
from torchrl.data.replay_buffers.storages import LazyTensorStorage

from torchrl_seer.data.checkpoint_checksums import (
    verify_checksum_manifest,
    write_checksum_manifest,
)
from torchrl_seer.data.torchrl_internals import relocate_tensor_rows, rewind_failed_write

__all__ = ["QuantizedStorage"]

_FORMATS = {"int8": torch.uint8, "bf16": torch.bfloat16, "fp16": torch.float16}
# Unit round-off of round-to-nearest casts: 2**-p for a p-bit significand.
_RELATIVE_ERROR = {"bf16": 2.0**-8, "fp16": 2.0**-11}
# int8 codes: 0..252 are the finite grid, the last three store non-finite values exactly.
_GRID_STEPS = 252
_CODE_NEG_INF, _CODE_POS_INF, _CODE_NAN = 253, 254, 255
# Bound on the float64 affine arithmetic of encoding, decoding and re-quantizing, relative to
# the largest magnitude of a feature (a few float64 units per operation, well below this).
_FLOAT64_ARITHMETIC = 2.0**-40
# int8 keys accept finite values up to this magnitude, so that a range twice as wide still fits
# the dtype its endpoints are kept in (float64 for float64 keys, float32 for the others).
_INT8_LIMIT = {torch.float64: 2.0**1020, torch.float32: 2.0**125}


def _key_name(key: NestedKey) -> str:
    return ".".join(key) if isinstance(key, tuple) else key


def _smallest_subnormal(dtype: torch.dtype) -> float:
    info = torch.finfo(dtype)
    return info.eps * info.smallest_normal


def _range_dtype(source: torch.dtype) -> torch.dtype:
    return torch.float64 if source == torch.float64 else torch.float32


def _round_outward(
    low: torch.Tensor, high: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """The smallest ``dtype`` interval holding the float64 interval ``[low, high]``."""
    low_r, high_r = low.to(dtype), high.to(dtype)
    low_r = torch.where(
        low_r.double() > low, torch.nextafter(low_r, low_r.new_tensor(-torch.inf)), low_r
    )
    high_r = torch.where(
        high_r.double() < high, torch.nextafter(high_r, high_r.new_tensor(torch.inf)), high_r
    )
    return low_r.double(), high_r.double()


def _ulp(magnitude: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Spacing of ``dtype`` at ``magnitude`` (float64 tensor), subnormals included."""
    _, exponent = torch.frexp(magnitude)
    spacing = torch.ldexp(torch.full_like(magnitude, torch.finfo(dtype).eps), exponent - 1)
    return spacing.clamp_min(_smallest_subnormal(dtype))


class QuantizedStorage(LazyTensorStorage):
    r"""A :class:`~torchrl.data.LazyTensorStorage` storing chosen float keys as int8, bf16 or fp16.

    Values are encoded in :meth:`set` and decoded back to their stored float dtype in
    :meth:`get`, so samplers, writers, transforms and losses see ordinary float tensors. The
    first write of a key fixes its dtype and row shape, as in ``LazyTensorStorage``: later
    writes of another float dtype are cast to it first, and the error bounds below are
    measured against that cast value (what ``LazyTensorStorage`` would return).

    * ``"int8"``: each feature (last dimension of a row) keeps the running range
      :math:`[\ell, h]` of every finite value written so far (or passed to
      :meth:`calibrate`), and a value is stored as the code
      :math:`q = \mathrm{round}((x - \ell) / s)` in ``0..252`` with :math:`s = (h - \ell)/252`.
      Codes 253, 254 and 255 store :math:`-\infty`, :math:`+\infty` and NaN exactly; they are
      counted in :attr:`num_nonfinite` and never enter a range. A write holding a finite value
      outside the range widens it, at least doubling its width, and re-quantizes the stored
      rows of that feature to the new grid (:attr:`num_requantizations` counts the passes).
      Rows are never clipped. Every stored finite value decodes within
      :meth:`max_abs_error`:

      .. math::

          |\hat x - x| \le g\,s + \mathrm{ulp}(m) + 2^{-40} m,

      with :math:`m = \max(|\ell|, |h|)`, :math:`\mathrm{ulp}(m)` the spacing of the key's
      dtype at :math:`m` (subnormals included: the final cast back to that dtype), and
      :math:`g = 1/2` for a feature whose rows were never re-quantized, :math:`g = 1`
      otherwise (the doubling makes the re-quantization errors a geometric series below
      :math:`s`). The range endpoints are kept in float32 (float64 for float64 keys,
      rounded outward) and the scale and arithmetic are float64, so the bound holds for
      fp16, bf16, fp32 and float64 keys. The int8 domain is :math:`|x| \le 2^{125}`
      (:math:`2^{1020}` for float64 keys), so that a doubled range still fits; larger finite
      values are refused.
    * ``"bf16"`` / ``"fp16"``: a round-to-nearest cast, :math:`|\hat x - x| \le u|x| +
      \sigma/2` with :math:`u = 2^{-8}` / :math:`2^{-11}` (:meth:`max_abs_error`) and
      :math:`\sigma` the format's smallest subnormal (below the normal range the error is
      absolute); :meth:`error_bound` gives it element-wise. A finite value that the format
      cannot hold (beyond :math:`\pm 65504` in fp16) is refused; NaN and :math:`\pm\infty`
      are stored as they are and counted in :attr:`num_nonfinite`. On CPU bf16 is the fast
      path.

    Keys not listed are stored unchanged. The quantization state (ranges, dtypes, counters)
    is part of :meth:`state_dict` and of :meth:`dumps` / :meth:`loads` checkpoints.

    Limits:
        * Quantized keys must be floating point at their first write (``TypeError``); a later
          write with another row shape is refused (``ValueError``), as
          ``LazyTensorStorage`` refuses it. Data must be a TensorDict or tensorclass (or a
          list of them, stacked); bare tensors are refused (``TypeError``).
        * Multi-dimensional storages (``ndim > 1``) are not supported.
        * A write is validated before anything is stored (the row shapes of every key
          included): a refused write leaves rows, length, ranges and counters untouched, and
          the writer executing it where it was.
        * Resizing (:func:`~torchrl_seer.data.grow_replay_buffer`) moves the encoded rows
          with their ranges unchanged.
        * Sharing with other processes: the ranges are tensors updated in place, so every
          process that received the storage after its first write decodes with the current
          ranges and re-quantized rows. Writes must all come from one process (the write
          bookkeeping is per process), and a write that widens a range re-encodes stored
          rows, so no process should read while it runs.

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
        >>> for row in obs:  # one row at a time: the range grows with the data
        ...     _ = rb.add(TensorDict({"observation": row}, []))
        >>> storage.nbytes_held()  # 1,000 rows x 17 features x 1 B + 9 B of range per feature
        17153
        >>> err = (storage.get(torch.arange(100))["observation"] - obs).abs()
        >>> bool((err <= storage.max_abs_error("observation")).all())
        True
        >>> _ = rb.add(TensorDict({"observation": torch.full((17,), float("nan"))}, []))
        >>> bool(storage.get(100)["observation"].isnan().all()), storage.num_nonfinite
        (True, 17)
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
        self._keys_by_name = {_key_name(k): k for k in self.quantized_keys}
        self.format = dtype
        #: per key: running range of the finite values (per feature; float32, float64 for
        #: float64 keys); ``+inf`` / ``-inf`` where no finite value was seen yet.
        self.lows: dict[str, torch.Tensor] = {}
        self.highs: dict[str, torch.Tensor] = {}
        #: per key and feature: whether stored rows were re-quantized to a wider range.
        self.requantized: dict[str, torch.Tensor] = {}
        self.source_dtypes: dict[str, torch.dtype] = {}
        self.row_shapes: dict[str, torch.Size] = {}
        self.num_nonfinite = 0
        self.num_requantizations = 0
        self._rows_written = 0  # one past the highest row index ever written

    @property
    def calibrated(self) -> bool:
        """Whether every quantized key has a range (always ``True`` for bf16/fp16)."""
        return self.format != "int8" or len(self.lows) == len(self.quantized_keys)

    # ------------------------------------------------------------------ validation
    def _rows(self, data: Any) -> TensorDictBase:
        if isinstance(data, list) and data and all(is_tensor_collection(d) for d in data):
            data = torch.stack(data)
        if not is_tensor_collection(data):
            raise TypeError(
                "QuantizedStorage stores TensorDicts (or tensorclasses); got "
                f"{type(data).__name__}."
            )
        return data

    def _source_values(self, data: TensorDictBase, key: NestedKey) -> torch.Tensor:
        """``data[key]`` validated and cast to the key's stored dtype (LazyTensorStorage's cast)."""
        value = data.get(key, None)
        if not isinstance(value, torch.Tensor):
            raise KeyError(
                f"QuantizedStorage expected key {key!r} in the written data; found "
                f"{list(data.keys(True, True))}."
            )
        name = _key_name(key)
        row_shape = value.shape[data.batch_dims :]
        dtype = self.source_dtypes.get(name, value.dtype)
        if not dtype.is_floating_point:
            raise TypeError(
                f"QuantizedStorage can only quantize float keys; {key!r} is {value.dtype}."
            )
        expected = self.row_shapes.get(name, row_shape)
        if row_shape != expected:
            raise ValueError(
                f"QuantizedStorage stores {key!r} rows of shape {tuple(expected)}; got rows of "
                f"shape {tuple(row_shape)}."
            )
        value = value.to(dtype)
        finite = torch.isfinite(value)
        limit = _INT8_LIMIT[_range_dtype(dtype)]
        if self.format == "int8" and bool((value.abs() > limit).logical_and(finite).any()):
            raise ValueError(
                f"{key!r} holds finite values beyond ±{limit:g}, the int8 domain of "
                f"QuantizedStorage for {dtype} keys."
            )
        if self.format != "int8":
            overflow = finite & ~torch.isfinite(value.to(_FORMATS[self.format]))
            if bool(overflow.any()):
                limit = torch.finfo(_FORMATS[self.format]).max
                raise ValueError(
                    f"{key!r} holds {int(overflow.sum())} finite value(s) beyond the "
                    f"{self.format} range (±{limit:g}); they would be stored as ±inf."
                )
        return value

    # ------------------------------------------------------------------ int8 ranges
    @staticmethod
    def _feature_view(value: torch.Tensor, row_ndim: int) -> torch.Tensor:
        """``value`` as ``[n, features]`` (``[n]`` for scalar rows)."""
        return value.reshape(-1, value.shape[-1]) if row_ndim else value.reshape(-1)

    def _batch_range(
        self, value: torch.Tensor, row_ndim: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        flat = self._feature_view(value.to(torch.float64), row_ndim)
        if flat.shape[0] == 0:
            return None
        finite = torch.isfinite(flat)
        low = torch.where(finite, flat, torch.inf).amin(0)
        high = torch.where(finite, flat, -torch.inf).amax(0)
        return low, high

    def _widened_range(
        self, name: str, low: torch.Tensor, high: torch.Tensor, has_rows: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """New range covering ``[low, high]``, and the features whose stored rows re-quantize."""
        old_low, old_high = self.lows[name].double(), self.highs[name].double()
        new_low, new_high = torch.minimum(old_low, low), torch.maximum(old_high, high)
        seen = old_low <= old_high  # a finite value of the feature was stored before
        grown = seen & ((new_low < old_low) | (new_high > old_high)) & has_rows
        old_width = (old_high - old_low).where(seen, 0.0)
        shortfall = (2 * old_width - (new_high - new_low)).clamp_min(0.0).where(grown, 0.0)
        grew_low, grew_high = new_low < old_low, new_high > old_high
        both = grew_low & grew_high
        new_low = new_low - torch.where(both, shortfall / 2, shortfall.where(grew_low, 0.0))
        new_high = new_high + torch.where(both, shortfall / 2, shortfall.where(~grew_low, 0.0))
        new_low, new_high = _round_outward(
            new_low, new_high, _range_dtype(self.source_dtypes[name])
        )
        return new_low, new_high, grown

    @staticmethod
    def _encode_int8(value: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        x = value.to(torch.float64)
        low, high = low.to(x.device), high.to(x.device)
        scale = (high - low) / _GRID_STEPS
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        codes = torch.round((x - low) / scale).clamp(0, _GRID_STEPS)
        codes = torch.where(torch.isnan(x), _CODE_NAN, codes)
        codes = torch.where(x == torch.inf, _CODE_POS_INF, codes)
        codes = torch.where(x == -torch.inf, _CODE_NEG_INF, codes)
        return codes.to(torch.uint8)

    @staticmethod
    def _decode_int8(
        codes: torch.Tensor, low: torch.Tensor, high: torch.Tensor, dtype: torch.dtype
    ) -> torch.Tensor:
        """Decodes to float64, clamped to the range and to ``dtype``'s finite range."""
        limit = torch.finfo(dtype).max
        low, high = low.to(codes.device), high.to(codes.device)
        scale = (high - low) / _GRID_STEPS
        values = low + codes.to(torch.float64) * scale
        values = torch.minimum(torch.maximum(values, low.clamp_min(-limit)), high.clamp_max(limit))
        values = torch.where(codes == _CODE_NAN, torch.nan, values)
        values = torch.where(codes == _CODE_POS_INF, torch.inf, values)
        return torch.where(codes == _CODE_NEG_INF, -torch.inf, values)

    # ------------------------------------------------------------------ public API
    def calibrate(self, data: TensorDictBase) -> None:
        """Widens the int8 per-feature ranges to cover the finite values of ``data``.

        Ranges only grow: the first call (or write) sets them, later ones widen them and
        re-quantize the stored rows as a write would. Non-finite values are ignored. A no-op
        for bf16/fp16.

        Args:
            data (TensorDictBase): representative rows holding every quantized key.
        """
        if self.format != "int8":
            return
        data = self._rows(data)
        values = {key: self._source_values(data, key) for key in self.quantized_keys}
        self._register(data, values)
        self._commit(self._new_ranges(data, values), written=None)

    def _register(self, data: TensorDictBase, values: dict[NestedKey, torch.Tensor]) -> list[str]:
        """Records the dtype, row shape and (int8) empty range of keys written for the first time.

        Returns:
            The names registered, so that a refused write can forget them.
        """
        registered = []
        for key, value in values.items():
            name = _key_name(key)
            if name in self.source_dtypes:
                continue
            registered.append(name)
            self.source_dtypes[name] = value.dtype
            row_shape = value.shape[data.batch_dims :]
            self.row_shapes[name] = row_shape
            if self.format == "int8":
                shape = row_shape[-1:]
                low = torch.full(
                    shape, torch.inf, dtype=_range_dtype(value.dtype), device=value.device
                )
                self.lows[name], self.highs[name] = low, -low
                self.requantized[name] = torch.zeros(shape, dtype=torch.bool, device=low.device)
        return registered

    def _forget(self, names: list[str]) -> None:
        for name in names:
            for table in (self.lows, self.highs, self.requantized, self.source_dtypes):
                table.pop(name, None)
            self.row_shapes.pop(name, None)

    def _new_ranges(
        self, data: TensorDictBase, values: dict[NestedKey, torch.Tensor]
    ) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per int8 key: the range after this write and the features whose rows re-quantize."""
        ranges = {}
        for key, value in values.items():
            name = _key_name(key)
            batch = self._batch_range(value, value.ndim - data.batch_dims)
            if batch is None:
                low, high = self.lows[name].double(), self.highs[name].double()
                ranges[name] = (low, high, torch.zeros_like(self.requantized[name]))
            else:
                ranges[name] = self._widened_range(name, *batch, self._rows_written > 0)
        return ranges

    def _commit(
        self,
        ranges: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        written: torch.Tensor | None,
    ) -> None:
        """Re-quantizes the stored rows of grown features and installs the new ranges."""
        for name, (low, high, grown) in ranges.items():
            if bool(grown.any()):
                rows_written = min(self._rows_written, self.max_size)
                stored = torch.ones(rows_written, dtype=torch.bool)
                if written is not None:
                    stored &= ~written[:rows_written]
                rows = stored.nonzero().squeeze(-1)
                codes = self._storage.get(self._keys_by_name[name])
                old = codes[rows]
                values = self._decode_int8(
                    old, self.lows[name].double(), self.highs[name].double(), torch.float64
                )
                reencoded = self._encode_int8(values, low, high)
                codes[rows] = torch.where(grown.to(codes.device), reencoded, old)
                self.requantized[name] |= grown
                self.num_requantizations += 1
            self.lows[name].copy_(low)
            self.highs[name].copy_(high)

    def max_abs_error(self, key: NestedKey) -> torch.Tensor:
        """Bound on ``|decode(encode(x)) - x|`` for the finite values of ``key``.

        Args:
            key (NestedKey): a quantized key.

        Returns:
            int8: the absolute bound per feature (float64; ``0`` for a feature holding no
            finite value). bf16/fp16: the relative bound ``2**-8`` / ``2**-11`` as a scalar
            tensor (multiply by ``|x|``; see :meth:`error_bound` for values below the normal
            range).
        """
        if self.format != "int8":
            return torch.tensor(_RELATIVE_ERROR[self.format], dtype=torch.float64)
        name = _key_name(key)
        low, high = self.lows[name].double(), self.highs[name].double()
        seen = low <= high
        magnitude = torch.maximum(low.abs(), high.abs()).where(seen, 0.0)
        magnitude = magnitude.clamp_max(torch.finfo(self.source_dtypes[name]).max)
        grid = torch.where(self.requantized[name], 1.0, 0.5) * (high - low) / _GRID_STEPS
        bound = grid + _ulp(magnitude, self.source_dtypes[name]) + _FLOAT64_ARITHMETIC * magnitude
        return bound.where(seen, 0.0)

    def error_bound(self, key: NestedKey, values: torch.Tensor) -> torch.Tensor:
        """Element-wise bound on the decoding error of ``values`` of ``key``.

        Args:
            key (NestedKey): a quantized key.
            values (torch.Tensor): values as written (rows of ``key``).

        Returns:
            A float64 tensor shaped like ``values``: :meth:`max_abs_error` (int8), or
            ``u * |x| + smallest_subnormal / 2`` (bf16/fp16); ``0`` where ``values`` is not
            finite (stored exactly).
        """
        x = values.to(self.source_dtypes.get(_key_name(key), values.dtype)).to(torch.float64)
        if self.format == "int8":
            bound = self.max_abs_error(key).expand_as(x)
        else:
            subnormal = _smallest_subnormal(_FORMATS[self.format])
            bound = _RELATIVE_ERROR[self.format] * x.abs() + subnormal / 2
        return bound.where(torch.isfinite(x), 0.0)

    def _encode(
        self,
        data: TensorDictBase,
        values: dict[NestedKey, torch.Tensor],
        ranges: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    ) -> Any:
        out = data.copy()
        for key, value in values.items():
            if self.format == "int8":
                low, high, _ = ranges[_key_name(key)]
                out.set(key, self._encode_int8(value, low, high))
            else:
                out.set(key, value.to(_FORMATS[self.format]))
        return out

    def _decode(self, data: Any) -> Any:
        for key in self.quantized_keys:
            name = _key_name(key)
            codes = data.get(key)
            dtype = self.source_dtypes.get(name, torch.float32)
            if self.format == "int8":
                low, high = self.lows[name].double(), self.highs[name].double()
                values = self._decode_int8(codes, low, high, dtype)
                data.set(key, values.to(dtype))
            else:
                data.set(key, codes.to(dtype))
        return data

    def set(
        self,
        cursor: int | Sequence[int] | slice | torch.Tensor,
        data: Any,
        *,
        set_cursor: bool = True,
    ) -> None:
        """Validates ``data``, encodes its quantized keys and writes it at ``cursor``.

        With int8, a finite value outside a feature's range widens it and the rows already
        stored are re-quantized to the new grid once the write has succeeded.
        """
        slots = self._slots(cursor)
        length = len(self)
        registered: list[str] = []
        try:
            data = self._rows(data)
            values = {key: self._source_values(data, key) for key in self.quantized_keys}
            self._check_other_rows(data)
            registered = self._register(data, values)
            ranges = self._new_ranges(data, values) if self.format == "int8" else {}
            super().set(cursor, self._encode(data, values, ranges), set_cursor=set_cursor)
        except Exception:
            # a refused write leaves no trace: no new key, the same length, and the writer
            # executing it back where it was
            self._forget(registered)
            self._len = length
            rewind_failed_write(self, slots)
            raise
        written = torch.zeros(self.max_size, dtype=torch.bool)
        written[slots] = True
        self._commit(ranges, written)
        indices = written.nonzero()
        if len(indices):
            self._rows_written = max(self._rows_written, int(indices.max()) + 1)
        self.num_nonfinite += sum(int((~torch.isfinite(v)).sum()) for v in values.values())

    def _slots(self, cursor: int | Sequence[int] | slice | torch.Tensor) -> torch.Tensor:
        """The slots a write at ``cursor`` touches, in write order (CPU)."""
        if isinstance(cursor, slice):
            return torch.arange(self.max_size)[cursor]
        return torch.as_tensor(cursor).reshape(-1).cpu().long()

    def _check_other_rows(self, data: TensorDictBase) -> None:
        """Refuses a key whose row shape differs from the stored one, before any write."""
        if not self.initialized:
            return
        quantized = {_key_name(k) for k in self.quantized_keys}
        stored = self._storage
        for key, value in data.items(True, True):
            name = _key_name(key)
            if name in quantized or key not in stored.keys(True, True):
                continue
            expected = stored.get(key).shape[1:]
            if value.shape[data.batch_dims :] != expected:
                raise ValueError(
                    f"QuantizedStorage stores {key!r} rows of shape {tuple(expected)}; got rows "
                    f"of shape {tuple(value.shape[data.batch_dims :])}."
                )

    def relocate_rows(self, slots: torch.Tensor, capacity: int) -> None:
        """Keeps the rows at ``slots`` (in order) in slots ``0..n-1`` of ``capacity`` slots.

        The encoded rows move with their ranges unchanged (see
        :class:`~torchrl_seer.data.ResizableRoundRobinWriter`).

        Args:
            slots: distinct slots, in the order they take.
            capacity: the new capacity.
        """
        relocate_tensor_rows(self, slots, capacity)
        self._rows_written = int(slots.numel())

    def get(self, index: int | Sequence[int] | slice | torch.Tensor) -> Any:
        """Reads rows at ``index`` and decodes the quantized keys to their float dtype."""
        # a shallow copy: on a full storage TorchRL returns its own tensordict for ``[:]``
        # (what SliceSampler reads), which decoding in place would turn into floats
        return self._decode(super().get(index).copy())

    def _empty(self) -> None:
        super()._empty()
        self._rows_written = 0
        for flags in self.requantized.values():
            flags.zero_()

    def bytes_per_row(self, data: TensorDictBase) -> int:
        """Bytes one row of ``data`` takes in this storage (quantized keys encoded).

        Args:
            data (TensorDictBase): a batch of float rows (batch dimension first).

        Returns:
            The stored size of one row, in bytes.
        """
        row = data[0]
        quantized = set(self.quantized_keys)
        code_size = torch.empty((), dtype=_FORMATS[self.format]).element_size()
        return sum(
            leaf.numel() * (code_size if key in quantized else leaf.element_size())
            for key, leaf in row.items(True, True)
        )

    def fixed_nbytes(self, data: TensorDictBase) -> int:
        """Bytes this storage holds whatever its capacity: the int8 ranges.

        Args:
            data (TensorDictBase): a batch of float rows holding every quantized key.

        Returns:
            ``9 * features`` per quantized key for int8 (float32 low and high, one flag;
            ``17`` for float64 keys, whose range is float64), ``0`` for bf16/fp16.
        """
        if self.format != "int8":
            return 0
        data = self._rows(data)
        total = 0
        for key in self.quantized_keys:
            value = data.get(key)
            row = value.shape[data.batch_dims :]
            dtype = self.source_dtypes.get(_key_name(key), value.dtype)
            endpoint = 8 if _range_dtype(dtype) == torch.float64 else 4
            total += (2 * endpoint + 1) * (row[-1] if row else 1)
        return total

    def bytes(self) -> int:
        """Alias of :meth:`nbytes_held` (the name TorchRL's storages use)."""
        return self.nbytes_held()

    def nbytes_held(self) -> int:
        """Allocated bytes: encoded rows plus the per-feature int8 ranges."""
        params = sum(
            t.numel() * t.element_size()
            for table in (self.lows, self.highs, self.requantized)
            for t in table.values()
        )
        if not self.initialized:
            return params
        rows = sum(t.numel() * t.element_size() for t in self._storage.values(True, True))
        return rows + params

    def nbytes_transient(self) -> int:
        """Bytes of caches and working memory: none (every byte held is a stored row or range)."""
        return 0

    def _quantization_state(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "layout": "int8-range-v2",
            "lows": {k: v.clone() for k, v in self.lows.items()},
            "highs": {k: v.clone() for k, v in self.highs.items()},
            "requantized": {k: v.clone() for k, v in self.requantized.items()},
            "source_dtypes": {k: str(v) for k, v in self.source_dtypes.items()},
            "row_shapes": {k: list(v) for k, v in self.row_shapes.items()},
            "num_nonfinite": self.num_nonfinite,
            "num_requantizations": self.num_requantizations,
            "rows_written": self._rows_written,
        }

    def _load_quantization_state(self, state: dict[str, Any]) -> None:
        if state.get("layout") != "int8-range-v2":
            raise ValueError(
                "this checkpoint was written by an earlier QuantizedStorage whose int8 codes "
                "have another meaning (255 finite levels, calibrated once); it cannot be read "
                "by this version."
            )
        if state["format"] != self.format:
            raise ValueError(
                f"checkpoint holds {state['format']!r} data but this storage is {self.format!r}."
            )
        self.lows = {k: v.clone() for k, v in state["lows"].items()}
        self.highs = {k: v.clone() for k, v in state["highs"].items()}
        self.requantized = {k: v.clone() for k, v in state["requantized"].items()}
        self.source_dtypes = {
            k: getattr(torch, v.replace("torch.", "")) for k, v in state["source_dtypes"].items()
        }
        self.row_shapes = {k: torch.Size(v) for k, v in state["row_shapes"].items()}
        self.num_nonfinite = state["num_nonfinite"]
        self.num_requantizations = state["num_requantizations"]
        self._rows_written = state["rows_written"]

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
