"""SEER's latent replay capacity: the measured budget rule and the reference formulas."""

from __future__ import annotations

import math

__all__ = [
    "equal_budget_capacity",
    "reference_capacity_atari",
    "reference_capacity_dmc",
]


def equal_budget_capacity(
    budget_bytes: int, bytes_per_transition: int, *, max_capacity: int | None = None
) -> int:
    """SEER's measured capacity rule: ``c' = min(cap_max, floor(budget / b_lat))``.

    Args:
        budget_bytes (int): memory budget for the latent buffer.
        bytes_per_transition (int): allocated bytes of one latent transition (``b_lat``).

    Keyword Args:
        max_capacity (int, optional): the user cap ``cap_max``.

    Returns:
        The latent capacity.

    Raises:
        ValueError: if not even one transition fits in the budget.

    Examples:
        >>> equal_budget_capacity(56_448 * 1000, 4608)
        12250
        >>> equal_budget_capacity(56_448 * 1000, 4608, max_capacity=5000)
        5000
    """
    if bytes_per_transition <= 0:
        raise ValueError(f"bytes_per_transition must be positive, got {bytes_per_transition}.")
    capacity = budget_bytes // bytes_per_transition
    if max_capacity is not None:
        capacity = min(capacity, max_capacity)
    if capacity < 1:
        raise ValueError(
            f"a memory budget of {budget_bytes} bytes cannot hold one latent transition of "
            f"{bytes_per_transition} bytes; raise the budget."
        )
    return int(capacity)


def reference_capacity_dmc(
    pixel_capacity: int,
    *,
    num_train_steps: int,
    num_copies: int = 4,
    latent_dim: int = 50,
    frame_bytes: int = 3 * 100 * 100,
    latent_sets: int = 2,
) -> int:
    """SEER's DMC reference formula ``min(T, floor(C p / (l 4 2 K)))`` (``seer_dmc/train.py``).

    Args:
        pixel_capacity (int): pixel buffer capacity ``C``.

    Keyword Args:
        num_train_steps (int): the cap ``T``.
        num_copies (int): crops per observation ``K``. Defaults to ``4``.
        latent_dim (int): latent size ``l``. Defaults to ``50``.
        frame_bytes (int): ``p``, one RGB frame. Defaults to ``30000``.
        latent_sets (int): critic and actor latents. Defaults to ``2``.

    Returns:
        The reference latent capacity.

    Examples:
        >>> reference_capacity_dmc(1000, num_train_steps=80_000)
        18750
        >>> reference_capacity_dmc(1000, num_train_steps=80_000, num_copies=1)
        75000
    """
    denominator = latent_dim * 4 * latent_sets * num_copies
    return min(num_train_steps, pixel_capacity * frame_bytes // denominator)


def reference_capacity_atari(
    pixel_capacity: int, *, t_max: int, latent_dim: int = 576, frame_bytes: int = 84 * 84
) -> int:
    """SEER's Atari reference formula ``min(floor(C * p / (4 l)), T_max)`` (``seer_atari``).

    Args:
        pixel_capacity (int): pixel buffer capacity ``C``.

    Keyword Args:
        t_max (int): the cap ``T_max``.
        latent_dim (int): latent size (576 data-efficient CNN, 3136 Nature CNN).
        frame_bytes (int): one stored frame (84x84 uint8).

    Returns:
        The reference latent capacity.

    Examples:
        >>> reference_capacity_atari(10_000, t_max=500_000)
        30625
        >>> reference_capacity_atari(10_000, t_max=500_000, latent_dim=3136)
        5625
    """
    return min(math.floor(pixel_capacity * frame_bytes / (latent_dim * 4)), t_max)
