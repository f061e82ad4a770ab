r"""Kahan-compensated in-place addition with a 16-bit or a compact int8 compensation."""

from __future__ import annotations

from collections.abc import Iterator

import torch

__all__ = [
    "COMPENSATION_FRACTION_BITS",
    "aligned_slices",
    "check_compensation_dtype",
    "compensated_add_",
    "compensated_lerp_",
    "compensated_value",
    "residual_quantum",
    "store_compensated_",
]

#: :math:`k`: an int8 compensation counts in units of :math:`\operatorname{ulp}(t) / 2^k`.
#: A residual is at most half an ulp, :math:`2^{k-1}` units; with :math:`k = 7` the
#: stochastically rounded residual, in :math:`[-64, 64]`, always fits in int8.
COMPENSATION_FRACTION_BITS = 7

# elements per slice of the int8 paths: bounds their fp32 temporaries (~5 of them) to a few MiB
_SLICE = 1 << 18


def aligned_slices(*tensors: torch.Tensor) -> Iterator[tuple[torch.Tensor, ...]]:
    """Yields aligned flat slices of same-shaped tensors, a few MiB of elements each.

    The int8 compensation paths work slice by slice to bound their fp32 temporaries.
    Non-contiguous tensors are yielded whole.

    Args:
        *tensors (torch.Tensor): tensors of one shape.

    Yields:
        Tuples of matching slices, one per tensor.
    """
    if not all(t.is_contiguous() for t in tensors):
        yield tensors
        return
    flat = [t.view(-1) for t in tensors]
    for start in range(0, flat[0].numel(), _SLICE):
        yield tuple(t[start : start + _SLICE] for t in flat)


# exponent-field masks of the 16-bit formats (sign bit excluded)
_EXPONENT_MASK = {torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


def check_compensation_dtype(
    compensation_dtype: torch.dtype | None, value_dtype: torch.dtype | None = None
) -> None:
    """Raise a clear error if ``compensation_dtype`` is not a supported compensation format.

    Args:
        compensation_dtype (torch.dtype or None): ``None`` (the value's own dtype, classic
            Kahan) or ``torch.int8`` (the compact format).
        value_dtype (torch.dtype, optional): dtype of the compensated values; with int8 it
            must be ``torch.float16`` or ``torch.bfloat16``. Not checked when ``None``.

    Raises:
        ValueError: for any other combination.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import check_compensation_dtype
        >>> check_compensation_dtype(torch.int8, torch.bfloat16)
        >>> check_compensation_dtype(None, torch.float32)
    """
    if compensation_dtype is None:
        return
    if compensation_dtype != torch.int8:
        raise ValueError(
            "compensation_dtype must be None (the value's dtype, classic Kahan) or torch.int8 "
            f"(compact residual), got {compensation_dtype}."
        )
    if value_dtype is not None and value_dtype not in _EXPONENT_MASK:
        raise ValueError(
            "an int8 compensation stores the residual relative to the ulp of a 16-bit value: "
            f"the values must be torch.float16 or torch.bfloat16, got {value_dtype}."
        )


def residual_quantum(value: torch.Tensor) -> torch.Tensor:
    r"""Return the unit of an int8 compensation of ``value``: :math:`\operatorname{ulp}(t) / 2^k`.

    :math:`\operatorname{ulp}(t)` is the spacing of the 16-bit floats in the binade of
    :math:`t` (:math:`2^{E-p+1}` for :math:`2^E \le |t| < 2^{E+1}` and a :math:`p`-bit
    significand; the subnormal spacing for zero and subnormals), computed exactly from the
    exponent bits: the float with :math:`t`'s exponent and a zero significand, and its
    successor, differ by exactly that spacing. Round-to-nearest leaves a residual
    :math:`|x - t| \le \operatorname{ulp}(t)/2` for every real :math:`x` that rounds to a
    finite :math:`t` (at :math:`t = 2^E` from below it is at most a quarter), so the
    residual in these units lies in :math:`[-2^{k-1}, 2^{k-1}]`. The quantum is exact in
    fp32 (bf16 subnormals give :math:`2^{-140}`, an fp32 subnormal). Non-finite values give
    NaN (their residual is stored as zero).

    Args:
        value (torch.Tensor): a ``torch.float16`` or ``torch.bfloat16`` tensor.

    Returns:
        A ``torch.float32`` tensor of the shape of ``value``.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import residual_quantum
        >>> residual_quantum(torch.tensor([1.0, 1.5, 0.0], dtype=torch.bfloat16)) * 2**7
        tensor([7.8125e-03, 7.8125e-03, 9.1835e-41])
    """
    check_compensation_dtype(torch.int8, value.dtype)
    binade = value.view(torch.int16) & _EXPONENT_MASK[value.dtype]
    spacing = (binade + 1).view(value.dtype).float()
    spacing -= binade.view(value.dtype).float()
    return spacing.mul_(2.0**-COMPENSATION_FRACTION_BITS)


def compensated_value(value: torch.Tensor, compensation: torch.Tensor) -> torch.Tensor:
    r"""Return the value that a (value, compensation) pair represents, :math:`t - c`.

    Args:
        value (torch.Tensor): the 16-bit (or fp32) running sum :math:`t`.
        compensation (torch.Tensor): its Kahan compensation :math:`c`, either in
            ``value.dtype`` or int8 (in units of :func:`residual_quantum`).

    Returns:
        :math:`t - c` in ``torch.float32`` (float64 if ``value`` is float64).

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import compensated_value
        >>> value = torch.tensor([1.0], dtype=torch.bfloat16)
        >>> compensated_value(value, torch.tensor([-32], dtype=torch.int8))
        tensor([1.0020])
    """
    exact = value.to(torch.promote_types(value.dtype, torch.float32))
    if compensation.dtype == torch.int8:
        return exact.sub_(compensation.float().mul_(residual_quantum(value)))
    return exact.sub_(compensation)


def compensated_add_(
    value: torch.Tensor,
    compensation: torch.Tensor,
    increment: torch.Tensor,
    *,
    scratch: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> None:
    r"""Add ``increment`` to ``value`` in place, carrying the rounding error in ``compensation``.

    The pair :math:`(t, c)` represents :math:`t - c`. With a compensation in ``value``'s
    dtype this is Kahan summation in that dtype (the reference's arithmetic)::

        y = increment - c;  t' = t + y;  c = (t' - t) - y;  t = t'

    With an **int8** compensation (values in fp16 or bf16) the sum is formed in fp32 and
    split: :math:`x = t - c + \Delta` (exact but for fp32's own rounding,
    :math:`\le 2^{-24}|x|`), :math:`t' = \operatorname{round}_{16}(x)`, and the residual is
    stored as :math:`q = \lfloor (t' - x)/u + U \rfloor` with :math:`U \sim
    \mathcal{U}[0, 1)` (stochastic rounding), where :math:`u = \operatorname{ulp}(t') / 2^7`
    (:func:`residual_quantum`). As :math:`|t' - x| \le \operatorname{ulp}(t')/2`,
    :math:`q \in [-64, 64]`: it always fits in int8, no clamp ever biases the sum (with
    :math:`2^8` units per ulp, :math:`q = 128` would not fit). The part of the sum lost per
    addition is below :math:`u` and zero on average, so after :math:`n` additions the pair
    is off by a random walk of standard deviation at most :math:`\sqrt{n}\,u/2`
    (plus fp32 rounding), never a drift: round-to-nearest would instead lose the same
    fraction of a quantum at every step of a steady increment. The pair carries
    :math:`p + 7` significant bits (15 for bf16, 18 for fp16; a 16-bit compensation carries
    about :math:`2p`) at half the memory. A non-finite :math:`t'` stores :math:`q = 0`.

    Args:
        value (torch.Tensor): the running sum :math:`t`, updated in place.
        compensation (torch.Tensor): :math:`c`, same shape, in ``value.dtype`` or int8;
            updated in place.
        increment (torch.Tensor): what to add, broadcastable to ``value`` (any floating
            dtype; fp32 keeps its low bits in the int8 path). With a 16-bit compensation
            and ``scratch`` given, its contents are overwritten.

    Keyword Args:
        scratch (torch.Tensor, optional): a buffer like ``value`` for the classic Kahan
            path's intermediate sum (otherwise one is allocated). Unused with int8.
        generator (torch.Generator, optional): source of the stochastic rounding of the
            int8 path. Defaults to the global generator.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import compensated_add_, compensated_value
        >>> _ = torch.manual_seed(0)
        >>> value = torch.ones(1, dtype=torch.bfloat16)
        >>> residual = torch.zeros(1, dtype=torch.int8)
        >>> for _ in range(100):
        ...     compensated_add_(value, residual, torch.tensor([1e-4]))
        >>> value  # plain bf16 additions of 1e-4 would leave 1.0
        tensor([1.0078], dtype=torch.bfloat16)
        >>> abs(compensated_value(value, residual).item() - 1.01) < 1e-3
        True
    """
    if compensation.dtype != torch.int8:
        # classic Kahan in the value's dtype
        y = increment.sub_(compensation) if scratch is not None else increment - compensation
        total = torch.add(value, y, out=scratch) if scratch is not None else value + y
        torch.sub(total, value, out=compensation).sub_(y)
        value.copy_(total)
        return
    increment = increment.expand_as(value)
    for v, c, inc in aligned_slices(value, compensation, increment.contiguous()):
        store_compensated_(v, c, compensated_value(v, c).add_(inc), generator=generator)


def compensated_lerp_(
    value: torch.Tensor,
    compensation: torch.Tensor,
    end: torch.Tensor,
    weight: float,
    *,
    generator: torch.Generator | None = None,
) -> None:
    r"""Move an (fp16/bf16 value, int8 compensation) pair a fraction ``weight`` towards ``end``.

    The Polyak step :math:`\bar x \leftarrow \bar x + w(e - \bar x)` is taken from the value
    the pair represents, :math:`\bar x = t - c` (:func:`compensated_value`), in fp32, and
    the result is stored back with :func:`store_compensated_`. Works on slices of
    :math:`2^{18}` elements, so its fp32 temporaries stay small.

    Args:
        value (torch.Tensor): fp16 or bf16 :math:`t`, updated in place.
        compensation (torch.Tensor): its int8 compensation :math:`c`, updated in place.
        end (torch.Tensor): the tensor to move towards (same shape, any floating dtype).
        weight (float): the fraction :math:`w` (the soft-update :math:`\tau`).

    Keyword Args:
        generator (torch.Generator, optional): source of the stochastic rounding.
            Defaults to the global generator.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import compensated_lerp_, compensated_value
        >>> target = torch.zeros(1, dtype=torch.bfloat16)
        >>> residual = torch.zeros(1, dtype=torch.int8)
        >>> for _ in range(200):
        ...     compensated_lerp_(target, residual, torch.ones(1), 0.005)
        >>> round(compensated_value(target, residual).item(), 3)  # 1 - 0.995 ** 200
        0.633
    """
    for v, c, e in aligned_slices(value, compensation, end.contiguous()):
        exact = compensated_value(v, c).lerp_(e.float(), weight)
        store_compensated_(v, c, exact, generator=generator)


def store_compensated_(
    value: torch.Tensor,
    compensation: torch.Tensor,
    exact: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> None:
    r"""Store an fp32 tensor as a 16-bit value and its int8 residual, in place.

    :math:`t = \operatorname{round}_{16}(x)` goes to ``value`` and
    :math:`q = \lfloor (t - x)/u + U \rfloor \in [-64, 64]` (:math:`u` =
    :func:`residual_quantum` of :math:`t`) to ``compensation``, so that
    :func:`compensated_value` returns :math:`x` to within :math:`u` (and exactly on
    average). See :func:`compensated_add_` for the bound.

    Args:
        value (torch.Tensor): fp16 or bf16 destination of :math:`t`.
        compensation (torch.Tensor): int8 destination of :math:`q`, same shape.
        exact (torch.Tensor): :math:`x`, ``torch.float32``; used as scratch (overwritten).

    Keyword Args:
        generator (torch.Generator, optional): source of the stochastic rounding.
            Defaults to the global generator.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import compensated_value, store_compensated_
        >>> value = torch.empty(1, dtype=torch.bfloat16)
        >>> residual = torch.empty(1, dtype=torch.int8)
        >>> store_compensated_(value, residual, torch.tensor([1.001]))
        >>> value.item(), abs(compensated_value(value, residual).item() - 1.001) < 2**-14
        (1.0, True)
    """
    value.copy_(exact)
    # t - x is exact in fp32: both lie within ulp(t) / 2 of each other
    residual = torch.sub(value, exact, out=exact).div_(residual_quantum(value))
    # stochastic rounding: floor(r + U[0, 1)) is r on average, so steady increments that
    # are not multiples of the quantum are not rounded the same way at every step
    residual.add_(torch.empty_like(residual).uniform_(generator=generator)).floor_()
    compensation.copy_(residual.nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0))
