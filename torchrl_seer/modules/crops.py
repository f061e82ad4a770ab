"""Random and centre crops of image batches (the DMC crop augmentation of CURL / SEER)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CenterCrop", "RandomCrop"]


def _check_size(pixels: torch.Tensor, size: int) -> tuple[int, int]:
    height, width = pixels.shape[-2:]
    if height < size or width < size:
        raise ValueError(
            f"cannot crop {size}x{size} out of images of shape {tuple(pixels.shape[-3:])}."
        )
    return height, width


class RandomCrop(nn.Module):
    """Crops an independent random ``size x size`` window out of every image of a batch.

    Args:
        size (int): side of the output window.

    Examples:
        >>> import torch
        >>> RandomCrop(84)(torch.zeros(5, 9, 100, 100, dtype=torch.uint8)).shape
        torch.Size([5, 9, 84, 84])
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Crops ``pixels`` of shape ``[*batch, C, H, W]`` to ``[*batch, C, size, size]``."""
        height, width = _check_size(pixels, self.size)
        batch = pixels.shape[:-3]
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        n = flat.shape[0]
        if n == 0:
            return pixels[..., : self.size, : self.size]
        tops = torch.randint(0, height - self.size + 1, (n,), device=pixels.device).tolist()
        lefts = torch.randint(0, width - self.size + 1, (n,), device=pixels.device).tolist()
        # one slice view per image, copied once by ``stack``: ~30x faster on CPU than a
        # gather with broadcast index tensors
        out = torch.stack(
            [
                image[:, top : top + self.size, left : left + self.size]
                for image, top, left in zip(flat, tops, lefts, strict=True)
            ]
        )
        return out.reshape(*batch, *out.shape[1:])


class CenterCrop(nn.Module):
    """Crops the central ``size x size`` window (evaluation and acting in CURL / SEER).

    Args:
        size (int): side of the output window.

    Examples:
        >>> import torch
        >>> CenterCrop(84)(torch.zeros(9, 100, 100)).shape
        torch.Size([9, 84, 84])
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Crops ``pixels`` of shape ``[*batch, C, H, W]`` to ``[*batch, C, size, size]``."""
        height, width = _check_size(pixels, self.size)
        top, left = (height - self.size) // 2, (width - self.size) // 2
        return pixels[..., top : top + self.size, left : left + self.size]
