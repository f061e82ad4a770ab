r"""Stochastically rounded in-place addition to fp16/bf16 tensors (no extra state)."""

from __future__ import annotations

import math

import torch

from torchrl_seer.optim.compensated_sum import aligned_slices, check_compensation_dtype

__all__ = ["stochastic_add_", "stochastic_store_"]

# the 16 fp32 significand bits that bf16 drops
_BF16_DROPPED = (1 << 16) - 1


def stochastic_add_(
    value: torch.Tensor,
    increment: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> None:
    r"""Add ``increment`` to a 16-bit ``value`` in place, rounding the sum stochastically.

    The sum :math:`x = t + \Delta` is formed in fp32 and rounded to one of its two
    neighbouring 16-bit floats, the farther one with probability proportional to its
    closeness, so that the stored value is :math:`x` **on average**: an increment smaller
    than half an ulp, which round-to-nearest drops every time, moves the weight by the right
    amount in expectation. Unlike Kahan summation it needs no buffer; the price is noise:
    after :math:`n` additions the value is off by a random walk of standard deviation at
    most :math:`\sqrt{n}\,\operatorname{ulp}/2` (Gupta et al., 2015; Zamirai et al., 2020,
    for bf16 training). For bf16 a uniform 16-bit integer is added to the fp32 bit pattern
    of :math:`x` and the low 16 bits are cleared (exact stochastic rounding of the
    magnitude); for fp16 the two neighbours are found with ``nextafter``. The work is done
    on slices of :math:`2^{18}` elements.

    Args:
        value (torch.Tensor): ``torch.float16`` or ``torch.bfloat16`` tensor, updated in place.
        increment (torch.Tensor): what to add, broadcastable to ``value`` (any floating dtype).

    Keyword Args:
        generator (torch.Generator, optional): source of the rounding decisions. Defaults to
            the global generator.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import stochastic_add_
        >>> _ = torch.manual_seed(0)
        >>> value = torch.ones(1000, dtype=torch.bfloat16)
        >>> for _ in range(100):
        ...     stochastic_add_(value, torch.tensor(1e-4))
        >>> round(value.double().mean().item(), 3)  # round-to-nearest would leave 1.0
        1.01
    """
    check_compensation_dtype(torch.int8, value.dtype)
    increment = increment.expand_as(value).contiguous()
    for v, inc in aligned_slices(value, increment):
        _ROUNDERS[value.dtype](v, v.float().add_(inc), generator)


def stochastic_store_(
    value: torch.Tensor,
    exact: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> None:
    r"""Store fp32 ``exact`` into a 16-bit ``value``, rounding stochastically.

    The rounding of :func:`stochastic_add_` applied to a value computed in fp32 by the
    caller (for instance :math:`\sqrt{\beta_2}\,s` in one multiplication, where
    ``stochastic_add_`` would need the increment :math:`(\sqrt{\beta_2} - 1)\,s` and a
    second pass).

    Args:
        value (torch.Tensor): ``torch.float16`` or ``torch.bfloat16`` destination.
        exact (torch.Tensor): ``torch.float32`` tensor of the shape of ``value``; used as
            scratch (overwritten).

    Keyword Args:
        generator (torch.Generator, optional): source of the rounding decisions. Defaults to
            the global generator.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import stochastic_store_
        >>> _ = torch.manual_seed(0)
        >>> value = torch.empty(10_000, dtype=torch.bfloat16)
        >>> stochastic_store_(value, torch.full((10_000,), 1.001))
        >>> sorted(set(value.tolist()))  # the two bf16 neighbours of 1.001
        [1.0, 1.0078125]
        >>> round(value.double().mean().item(), 3)
        1.001
    """
    check_compensation_dtype(torch.int8, value.dtype)
    if exact.dtype != torch.float32 or exact.shape != value.shape:
        raise ValueError(
            f"exact must be a torch.float32 tensor of shape {tuple(value.shape)}, got "
            f"{exact.dtype} of shape {tuple(exact.shape)}."
        )
    for v, x in aligned_slices(value, exact):
        _ROUNDERS[value.dtype](v, x, generator)


def _round_bf16_(value: torch.Tensor, exact: torch.Tensor, generator) -> None:
    """Store fp32 ``exact`` into bf16 ``value``, rounding the magnitude stochastically."""
    bits = exact.view(torch.int32)
    noise = _uniform_16_bit(bits.numel(), bits.device, generator).view_as(bits)
    # the bits are sign and magnitude: this rounds the magnitude up with the probability of
    # its dropped fraction; a carry into the exponent is that rounding up, and inf (and the
    # default NaN, whose top significand bit is set) keep their bits after the mask
    bits.add_(noise).bitwise_and_(~_BF16_DROPPED)
    value.copy_(exact)


def _uniform_16_bit(
    count: int, device: torch.device, generator: torch.Generator | None
) -> torch.Tensor:
    """``count`` int32 integers uniform in ``[0, 2**16)``, four per 64-bit draw."""
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device)
    words.random_(torch.iinfo(torch.int64).min, None, generator=generator)  # all 64 bits
    return words.view(torch.int16)[:count].to(torch.int32).bitwise_and_(_BF16_DROPPED)


def _round_nearest_neighbour_(value: torch.Tensor, exact: torch.Tensor, generator) -> None:
    """Store fp32 ``exact`` into ``value``, taking the farther neighbour with its probability."""
    value.copy_(exact)
    # the part round-to-nearest dropped (exact in fp32) and the gap to the other neighbour
    dropped = exact.sub_(value)
    other = torch.nextafter(value, torch.full_like(value, math.inf).copysign_(dropped))
    gap = other.float().sub_(value)
    threshold = dropped.div_(gap)  # in [0, 1/2]; NaN or 0 where nothing should move
    move = torch.empty_like(threshold).uniform_(generator=generator) < threshold
    value.copy_(torch.where(move, other, value))


_ROUNDERS = {torch.bfloat16: _round_bf16_, torch.float16: _round_nearest_neighbour_}
