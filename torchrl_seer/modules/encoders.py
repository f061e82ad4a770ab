"""Pixel encoders with an explicit split into a part that freezes and a part that keeps training.

SEER (Chen et al., 2021) freezes the lower layers of a pixel encoder once they have converged and
stores their outputs ("latents") in the replay buffer instead of pixels. Every encoder here is a
:class:`SplitEncoder`: ``forward(x) == trainable_part(frozen_part(x))``, where ``frozen_part`` maps
uint8 pixels to the stored latent and ``trainable_part`` maps a latent to the features the heads
consume. The parameter names of the frozen layers all contain ``"frozen_part"``, which is how
:class:`~torchrl_seer.trainers.FreezeEncoderHook` finds them in every copy a loss module holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

__all__ = [
    "CURLPixelEncoder",
    "DataEfficientAtariEncoder",
    "NatureAtariEncoder",
    "PixelScale",
    "SplitEncoder",
]


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Puts ``module`` in eval mode and restores each submodule's training flag on exit."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class PixelScale(nn.Module):
    """Scales uint8 pixels to ``[0, 1]`` floats; float inputs pass through unchanged.

    The floats take the module's dtype: float32, or the dtype the encoder was cast to
    (``encoder.to(torch.bfloat16)``, as a low-precision loss does), so the next layer gets
    inputs of its own dtype.

    Examples:
        >>> import torch
        >>> PixelScale()(torch.full((1, 2), 255, dtype=torch.uint8))
        tensor([[1., 1.]])
        >>> PixelScale().to(torch.bfloat16)(torch.zeros(1, dtype=torch.uint8)).dtype
        torch.bfloat16
    """

    def __init__(self) -> None:
        super().__init__()
        # follows .to(dtype) casts of the encoder; not part of the state dict
        self.unit: torch.Tensor
        self.register_buffer("unit", torch.ones(()), persistent=False)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Returns ``pixels / 255`` in the module's dtype for uint8 input, ``pixels`` otherwise."""
        if pixels.dtype == torch.uint8:
            return pixels.to(self.unit.dtype).div_(255.0)
        return pixels


class SplitEncoder(nn.Module):
    """An encoder made of a part that freezes and a part that keeps training.

    Args:
        frozen_part (nn.Module): maps pixels to the latent that SEER stores after the freeze.
        trainable_part (nn.Module, optional): maps a latent to the output features; it keeps
            training after the freeze. Defaults to :class:`torch.nn.Identity`.

    Keyword Args:
        input_shape (sequence of int): the ``[C, H, W]`` shape of one observation, used to
            compute :attr:`latent_shape`.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> enc = SplitEncoder(nn.Sequential(PixelScale(), nn.Flatten()), input_shape=(1, 2, 2))
        >>> enc.latent_shape
        torch.Size([4])
        >>> enc(torch.zeros(3, 1, 2, 2, dtype=torch.uint8)).shape
        torch.Size([3, 4])
    """

    def __init__(
        self,
        frozen_part: nn.Module,
        trainable_part: nn.Module | None = None,
        *,
        input_shape: Sequence[int],
    ) -> None:
        super().__init__()
        self.frozen_part = frozen_part
        self.trainable_part = trainable_part if trainable_part is not None else nn.Identity()
        self.input_shape = torch.Size(input_shape)
        with torch.no_grad():
            probe = torch.zeros(1, *self.input_shape, dtype=torch.uint8)
            with eval_mode(frozen_part):
                latent = frozen_part(probe)
            self.latent_shape = latent.shape[1:]
            self.out_features = self.trainable_part(latent).shape[-1]

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Runs the full encoder on pixels of shape ``[*batch, C, H, W]``."""
        return self.encode_latent(self.frozen_part_forward(pixels))

    def frozen_part_forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Runs only the frozen part: pixels ``[*batch, C, H, W]`` → latent ``[*batch, *L]``."""
        if pixels.shape[-3:] != self.input_shape:
            raise ValueError(
                f"{type(self).__name__} expects observations of shape {tuple(self.input_shape)}, "
                f"got a tensor of shape {tuple(pixels.shape)}."
            )
        batch = pixels.shape[:-3]
        latent = self.frozen_part(pixels.reshape(-1, *self.input_shape))
        return latent.reshape(*batch, *latent.shape[1:])

    def save_frozen_part(self, path: str | Path) -> None:
        """Saves the frozen part (weights, input and latent shapes) for transfer to a new task.

        Args:
            path (str or Path): destination file.
        """
        torch.save(
            {
                "encoder": type(self).__name__,
                "input_shape": list(self.input_shape),
                "latent_shape": list(self.latent_shape),
                "frozen_part": self.frozen_part.state_dict(),
            },
            path,
        )

    def load_frozen_part(self, path: str | Path) -> None:
        """Loads a frozen part saved by :meth:`save_frozen_part` (SEER transfer).

        Combine with :class:`~torchrl_seer.trainers.FreezeEncoderHook` and ``freeze_at=0`` to
        start an agent on a new task with the encoder frozen from its first transition.

        Args:
            path (str or Path): a file written by :meth:`save_frozen_part`.

        Raises:
            ValueError: if the saved encoder has other input or latent shapes.
        """
        saved = torch.load(path, weights_only=True)
        for field, mine in (("input_shape", self.input_shape), ("latent_shape", self.latent_shape)):
            if list(mine) != saved[field]:
                raise ValueError(
                    f"the saved {saved['encoder']} has {field} {tuple(saved[field])}, this "
                    f"{type(self).__name__} has {tuple(mine)}."
                )
        self.frozen_part.load_state_dict(saved["frozen_part"])

    def encode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """Runs only the trainable part on a latent of shape ``[*batch, *latent_shape]``."""
        n = len(self.latent_shape)
        if latent.shape[latent.ndim - n :] != self.latent_shape:
            raise ValueError(
                f"{type(self).__name__} expects latents of shape {tuple(self.latent_shape)}, got a "
                f"tensor of shape {tuple(latent.shape)}."
            )
        batch = latent.shape[: latent.ndim - n]
        out = self.trainable_part(latent.reshape(-1, *self.latent_shape))
        return out.reshape(*batch, *out.shape[1:])


class DataEfficientAtariEncoder(SplitEncoder):
    """The data-efficient Rainbow CNN (van Hasselt et al., 2019) used by SEER on Atari.

    Conv(C→32, k5, s5)+ReLU, Conv(32→64, k5, s5)+ReLU, flattened: 576 features at 84x84. The
    whole convolutional stack freezes; the Q heads on top keep training.

    Args:
        in_channels (int, optional): stacked frames. Defaults to ``4``.

    Keyword Args:
        screen_size (int): square frame size. Defaults to ``84``.

    Examples:
        >>> import torch
        >>> enc = DataEfficientAtariEncoder()
        >>> enc.latent_shape
        torch.Size([576])
        >>> enc(torch.zeros(2, 4, 84, 84, dtype=torch.uint8)).shape
        torch.Size([2, 576])
    """

    def __init__(self, in_channels: int = 4, *, screen_size: int = 84) -> None:
        frozen = nn.Sequential(
            PixelScale(),
            nn.Conv2d(in_channels, 32, kernel_size=5, stride=5),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=5, stride=5),
            nn.ReLU(),
            nn.Flatten(),
        )
        super().__init__(frozen, input_shape=(in_channels, screen_size, screen_size))


class NatureAtariEncoder(SplitEncoder):
    """The Nature DQN CNN (Mnih et al., 2015): 3,136 features at 84x84.

    Conv(C→32, k8, s4), Conv(32→64, k4, s2), Conv(64→64, k3, s1), each with ReLU, flattened.
    The whole convolutional stack freezes.

    Args:
        in_channels (int, optional): stacked frames. Defaults to ``4``.

    Keyword Args:
        screen_size (int): square frame size. Defaults to ``84``.

    Examples:
        >>> import torch
        >>> NatureAtariEncoder().latent_shape
        torch.Size([3136])
    """

    def __init__(self, in_channels: int = 4, *, screen_size: int = 84) -> None:
        frozen = nn.Sequential(
            PixelScale(),
            nn.Conv2d(in_channels, 32, kernel_size=8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        super().__init__(frozen, input_shape=(in_channels, screen_size, screen_size))


class CURLPixelEncoder(SplitEncoder):
    """The CURL / SAC-AE pixel encoder (Laskin et al., 2020; Yarats et al., 2019).

    Four 3x3 conv layers with ``num_filters`` filters (stride 2 then 1, ReLU), a linear layer to
    ``feature_dim`` and a LayerNorm. As in SEER's DMC code the whole encoder freezes by default
    (``freeze="all"``). The reference stores the ``fc`` output and applies the frozen LayerNorm
    at training time; since that LayerNorm is frozen too, we store its output directly (same
    features, same 50 floats) and :attr:`trainable_part` is the identity.
    With ``freeze="convs"`` only the convolutions freeze and ``fc`` + LayerNorm keep training
    (the stored latent is then the 32x35x35 conv map, 39,200 floats).

    Args:
        in_channels (int, optional): stacked RGB channels. Defaults to ``9`` (3 frames).

    Keyword Args:
        image_size (int): square input size. Defaults to ``84``.
        num_filters (int): conv filters. Defaults to ``32``.
        feature_dim (int): output features. Defaults to ``50``.
        freeze (str): ``"all"`` or ``"convs"``. Defaults to ``"all"``.

    Examples:
        >>> import torch
        >>> enc = CURLPixelEncoder()
        >>> enc.latent_shape, enc.out_features
        (torch.Size([50]), 50)
        >>> enc(torch.zeros(2, 9, 84, 84, dtype=torch.uint8)).shape
        torch.Size([2, 50])
    """

    def __init__(
        self,
        in_channels: int = 9,
        *,
        image_size: int = 84,
        num_filters: int = 32,
        feature_dim: int = 50,
        freeze: str = "all",
    ) -> None:
        if freeze not in ("all", "convs"):
            raise ValueError(f"freeze must be 'all' or 'convs', got {freeze!r}.")
        convs: list[nn.Module] = [PixelScale()]
        channels, size = in_channels, image_size
        for stride in (2, 1, 1, 1):
            convs += [nn.Conv2d(channels, num_filters, kernel_size=3, stride=stride), nn.ReLU()]
            channels, size = num_filters, (size - 3) // stride + 1
        convs.append(nn.Flatten())
        fc = nn.Linear(num_filters * size * size, feature_dim)
        norm = nn.LayerNorm(feature_dim)
        trainable: nn.Module
        if freeze == "all":
            frozen, trainable = nn.Sequential(*convs, fc, norm), nn.Identity()
        else:
            frozen, trainable = nn.Sequential(*convs), nn.Sequential(fc, norm)
        super().__init__(frozen, trainable, input_shape=(in_channels, image_size, image_size))
        self.freeze = freeze
