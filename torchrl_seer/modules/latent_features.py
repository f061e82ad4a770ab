"""A TensorDict module that reads stored latents when present and pixels otherwise."""

from __future__ import annotations

import torch
from tensordict import NestedKey, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from torchrl_seer.modules.encoders import SplitEncoder

__all__ = ["LatentOrPixelFeatures"]


class LatentOrPixelFeatures(TensorDictModuleBase):
    """Encoder stage of a SEER network: features from a stored latent, or from pixels.

    Dispatch is on an explicit key, never on a tensor shape (which would break when the latent
    and pixel shapes coincide): if ``latent_key``
    is in the input (a batch sampled from a latent replay buffer after the freeze) only the
    encoder's :attr:`~torchrl_seer.modules.SplitEncoder.trainable_part` runs; otherwise (acting
    on environment observations, or learning before the freeze) the full encoder runs on
    ``pixels_key``. Put it first in the ``TensorDictSequential`` a TorchRL loss receives.

    Args:
        encoder (SplitEncoder): the encoder.

    Keyword Args:
        pixels_key (NestedKey): pixel observation key. Defaults to ``"pixels"``.
        latent_key (NestedKey): stored latent key. Defaults to ``"latent"``.
        out_key (NestedKey): output features key. Defaults to ``"features"``.
        pre_encoder (nn.Module, optional): applied to pixels before the encoder (e.g. a
            :class:`~torchrl_seer.modules.CenterCrop` for acting on DMC). Defaults to ``None``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_seer.modules import DataEfficientAtariEncoder
        >>> features = LatentOrPixelFeatures(DataEfficientAtariEncoder())
        >>> td = TensorDict({"pixels": torch.zeros(2, 4, 84, 84, dtype=torch.uint8)}, [2])
        >>> features(td)["features"].shape
        torch.Size([2, 576])
        >>> features(TensorDict({"latent": torch.zeros(2, 576)}, [2]))["features"].shape
        torch.Size([2, 576])
    """

    def __init__(
        self,
        encoder: SplitEncoder,
        *,
        pixels_key: NestedKey = "pixels",
        latent_key: NestedKey = "latent",
        out_key: NestedKey = "features",
        pre_encoder: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.pre_encoder = pre_encoder
        self.pixels_key = pixels_key
        self.latent_key = latent_key
        # both keys are listed so that losses which ``select(*in_keys, strict=False)`` (e.g.
        # SACLoss) forward whichever one the batch holds
        self.in_keys = [pixels_key, latent_key]
        self.out_keys = [out_key]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Writes ``out_key`` from ``latent_key`` if present, else from ``pixels_key``."""
        latent = tensordict.get(self.latent_key, None)
        features: torch.Tensor
        if latent is not None:
            features = self.encoder.encode_latent(latent)
        else:
            pixels = tensordict.get(self.pixels_key, None)
            if pixels is None:
                raise KeyError(
                    f"LatentOrPixelFeatures needs {self.latent_key!r} or {self.pixels_key!r} in "
                    f"the input; found keys {list(tensordict.keys(True, True))}."
                )
            if self.pre_encoder is not None:
                pixels = self.pre_encoder(pixels)
            features = self.encoder(pixels)
        tensordict.set(self.out_keys[0], features)
        return tensordict
