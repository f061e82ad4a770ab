"""Device choice and mixed precision for recipes."""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast", "resolve_device"]

_AUTOCAST_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The device a recipe runs its learner on.

    Args:
        device (str, torch.device or None): ``None``, ``"auto"`` or ``""`` pick CUDA when it is
            available and the CPU otherwise; anything else is passed to :class:`torch.device`.

    Returns:
        A :class:`torch.device`.

    Raises:
        ValueError: ``device`` names CUDA on a machine without it.

    Examples:
        >>> from torchrl_seer.trainers.helpers import resolve_device
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device(None).type in ("cpu", "cuda")
        True
    """
    if device is None or str(device) in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = torch.device(device)
    if out.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was asked for but CUDA is not available.")
    return out


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device``'s type for ``precision``, or a no-op for ``"none"``.

    Args:
        device (torch.device): the learner's device (its type selects CPU or CUDA autocast).
        precision (str): ``"none"``, ``"bf16"`` or ``"fp16"``.

    Returns:
        A context manager.

    Raises:
        ValueError: an unknown precision.

    Examples:
        >>> import torch
        >>> from torchrl_seer.trainers.helpers import autocast
        >>> with autocast(torch.device("cpu"), "bf16"):
        ...     out = torch.nn.Linear(2, 2)(torch.ones(1, 2))
        >>> out.dtype
        torch.bfloat16
    """
    if precision not in _AUTOCAST_DTYPES:
        raise ValueError(f"precision must be one of {list(_AUTOCAST_DTYPES)}, got {precision!r}.")
    dtype = _AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
