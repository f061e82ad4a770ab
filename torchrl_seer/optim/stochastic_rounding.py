r"""Stochastically rounded in-place addition to fp16/bf16 tensors (no extra state)."""

from __future__ import annotations

import math

import torch

from torchrl_seer.optim.compensated_sum import aligned_slices, check_compensation_dtype

__all__ = ["stochastic_add_"]

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
    round_ = _round_bf16_ if value.dtype == torch.bfloat16 else _round_nearest_neighbour_
    for v, inc in aligned_slices(value, increment):
        round_(v, v.float().add_(inc), generator)


def _round_bf16_(value: torch.Tensor, exact: torch.Tensor, generator) -> None:
    """Store fp32 ``exact`` into bf16 ``value``, rounding the magnitude stochastically."""
    bits = exact.view(torch.int32)
    noise = torch.empty_like(bits).random_(generator=generator).bitwise_and_(_BF16_DROPPED)
    # the bits are sign and magnitude: this rounds the magnitude up with the probability of
    # its dropped fraction; a carry into the exponent is that rounding up, and inf (and the
    # default NaN, whose top significand bit is set) keep their bits after the mask
    bits.add_(noise).bitwise_and_(~_BF16_DROPPED)
    value.copy_(exact)


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
