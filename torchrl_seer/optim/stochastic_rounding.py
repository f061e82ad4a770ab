r"""Stochastically rounded in-place addition to fp16/bf16 tensors (no extra state)."""

from __future__ import annotations

import math

import torch

from torchrl_seer.optim.compensated_sum import check_compensation_dtype

__all__ = ["stochastic_add_"]


def stochastic_add_(
    value: torch.Tensor,
    increment: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
) -> None:
    r"""Add ``increment`` to a 16-bit ``value`` in place, rounding the sum stochastically.

    The sum :math:`x = t + \Delta` is formed in fp32 and rounded to one of its two
    neighbouring 16-bit floats, the farther one :math:`t''` with probability
    :math:`|x - t'| / |t'' - t'|` (:math:`t'` the nearer one), so that the stored value is
    :math:`x` **on average**: an increment smaller than half an ulp, which round-to-nearest
    drops every time, moves the weight by the right amount in expectation. Unlike Kahan
    summation it needs no buffer; the price is noise: after :math:`n` additions the value is
    off by a random walk of standard deviation at most :math:`\sqrt{n}\,\operatorname{ulp}/2`
    (Gupta et al., 2015; Zamirai et al., 2020, for bf16 training).

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
    exact = value.float().add_(increment)
    value.copy_(exact)
    # the part round-to-nearest dropped (exact in fp32) and the gap to the other neighbour
    dropped = exact.sub_(value)
    other = torch.nextafter(value, torch.full_like(value, math.inf).copysign_(dropped))
    gap = other.float().sub_(value)
    threshold = dropped.div_(gap)  # in [0, 1/2]; NaN or 0 where nothing should move
    move = torch.empty_like(threshold).uniform_(generator=generator) < threshold
    value.copy_(torch.where(move, other, value))
