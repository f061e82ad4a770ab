"""Seeding and random-number-generator state for recipes."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "seed_everything", "set_rng_state"]


def seed_everything(seed: int) -> dict[str, int]:
    """Seeds python's :mod:`random`, numpy's global generator and torch (CPU and CUDA).

    Environments are seeded separately, when they are created: a TorchRL collector resets its
    environment when it is built, so seed the environment before (``make_atari_env(...,
    seed=s)``, ``env.set_seed(s)``), and give every collector worker its own seed.

    Args:
        seed (int): the seed.

    Returns:
        ``{"python": seed, "numpy": seed, "torch": seed}``, for the run's report.

    Examples:
        >>> import torch
        >>> from torchrl_seer.trainers.helpers import seed_everything
        >>> _ = seed_everything(3)
        >>> a = torch.rand(2)
        >>> _ = seed_everything(3)
        >>> bool((torch.rand(2) == a).all())
        True
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 (the global generator other libraries use)
    torch.manual_seed(seed)
    return {"python": seed, "numpy": seed, "torch": seed}


def get_rng_state() -> dict[str, Any]:
    """The state of python's, numpy's and torch's global generators (CUDA ones included).

    Examples:
        >>> import torch
        >>> from torchrl_seer.trainers.helpers import get_rng_state, set_rng_state
        >>> state = get_rng_state()
        >>> a = torch.rand(3)
        >>> set_rng_state(state)
        >>> bool((torch.rand(3) == a).all())
        True
    """
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),  # noqa: NPY002
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`get_rng_state` returned.

    Args:
        state (dict): the saved generator states.
    """
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
