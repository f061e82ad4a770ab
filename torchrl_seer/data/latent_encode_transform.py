"""Replay-buffer transform that stores frozen-encoder latents instead of pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tensordict import NestedKey, TensorDictBase
from torch import nn
from torchrl.envs.transforms import Transform

from torchrl_seer.modules.encoders import SplitEncoder, eval_mode

__all__ = ["LatentEncodeTransform"]


class LatentEncodeTransform(Transform):
    """Encodes pixels into frozen-encoder latents on write; picks one augmented copy on read.

    Append it to a replay buffer (``rb.append_transform(t)``): ``ReplayBuffer.extend`` runs
    :meth:`inv` before writing, so the storage only ever allocates the latent keys. Encoding runs
    under ``torch.no_grad`` in eval mode (each submodule's training mode is restored
    afterwards) with the encoder's frozen part **as it is at write time**: the transform shares
    that module instead of copying it, so a transform built before training, or before a
    checkpoint is loaded, still encodes with the trained weights. :class:`FreezeEncoderHook`
    stops those weights from changing at the freeze, so every latent comes from one encoder.

    With ``num_copies = K > 1`` every observation gets ``K`` independently augmented copies (CURL
    crop augmentation, as SEER does on DMC) stored as ``[*batch, K, *latent_shape]``; on
    sampling one copy
    index per element is drawn and used for every latent key of that element.

    Args:
        encoder (SplitEncoder or nn.Module): the frozen encoder. For a
            :class:`~torchrl_seer.modules.SplitEncoder` its ``frozen_part`` is used; any other
            module must map ``[N, C, H, W]`` pixels to ``[N, *latent]``.
        in_keys (sequence of NestedKey, optional): pixel keys to encode (and drop). Defaults to
            ``["pixels", ("next", "pixels")]``.
        out_keys (sequence of NestedKey, optional): latent keys to write. Defaults to
            ``["latent", ("next", "latent")]``.

    Keyword Args:
        num_copies (int): augmented copies per observation (K). Defaults to ``1``.
        augmentation (nn.Module, optional): applied to pixels before encoding each copy (e.g.
            :class:`~torchrl_seer.modules.RandomCrop`). Required when ``num_copies > 1``.
        latent_shape (sequence of int, optional): expected latent shape; an encoder producing
            another shape raises a :class:`ValueError`. Defaults to the encoder's
            ``latent_shape`` for a :class:`~torchrl_seer.modules.SplitEncoder`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> from torchrl_seer.modules import DataEfficientAtariEncoder
        >>> rb = ReplayBuffer(storage=LazyTensorStorage(100), batch_size=4)
        >>> _ = rb.append_transform(LatentEncodeTransform(DataEfficientAtariEncoder()))
        >>> pixels = torch.zeros(8, 4, 84, 84, dtype=torch.uint8)
        >>> td = TensorDict({"pixels": pixels, ("next", "pixels"): pixels}, [8])
        >>> _ = rb.extend(td)
        >>> set(rb.storage[:].keys(True, True)) == {"latent", ("next", "latent")}
        True
        >>> rb.sample()["latent"].shape
        torch.Size([4, 576])
    """

    def __init__(
        self,
        encoder: nn.Module,
        in_keys: Sequence[NestedKey] | None = None,
        out_keys: Sequence[NestedKey] | None = None,
        *,
        num_copies: int = 1,
        augmentation: nn.Module | None = None,
        latent_shape: Sequence[int] | None = None,
    ) -> None:
        in_keys = list(in_keys) if in_keys is not None else ["pixels", ("next", "pixels")]
        out_keys = list(out_keys) if out_keys is not None else ["latent", ("next", "latent")]
        if len(in_keys) != len(out_keys):
            raise ValueError(
                f"in_keys and out_keys must have the same length, got {in_keys} and {out_keys}."
            )
        if num_copies < 1:
            raise ValueError(f"num_copies must be >= 1, got {num_copies}.")
        if num_copies > 1 and augmentation is None:
            raise ValueError(
                "num_copies > 1 needs an augmentation (e.g. RandomCrop): without one the "
                "copies would be identical."
            )
        super().__init__(in_keys=in_keys, out_keys=out_keys)
        if isinstance(encoder, SplitEncoder):
            frozen: nn.Module = encoder.frozen_part
            latent_shape = latent_shape if latent_shape is not None else encoder.latent_shape
        else:
            frozen = encoder
        self.frozen_encoder = frozen
        self.augmentation = augmentation
        self.num_copies = num_copies
        self.latent_shape = torch.Size(latent_shape) if latent_shape is not None else None

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Encodes pixels ``[*batch, C, H, W]`` into ``[*batch, (K,) *latent_shape]``.

        Args:
            pixels (torch.Tensor): observations, uint8 or float.

        Returns:
            The latents (float), with a copy dimension ``K`` after the batch when
            ``num_copies > 1``.
        """
        batch = pixels.shape[:-3]
        flat = pixels.reshape(-1, *pixels.shape[-3:])
        with torch.no_grad(), eval_mode(self.frozen_encoder):
            if self.num_copies == 1:
                views = [self.augmentation(flat) if self.augmentation is not None else flat]
            else:
                assert self.augmentation is not None
                views = [self.augmentation(flat) for _ in range(self.num_copies)]
            latents = [self.frozen_encoder(view) for view in views]
        latent_shape = latents[0].shape[1:]
        if self.latent_shape is not None and latent_shape != self.latent_shape:
            raise ValueError(
                f"the frozen encoder produced latents of shape {tuple(latent_shape)} but "
                f"{tuple(self.latent_shape)} was expected (check that the encoder matches the "
                "network heads and the observation size)."
            )
        if self.num_copies == 1:
            return latents[0].reshape(*batch, *latent_shape)
        return torch.stack(latents, 1).reshape(*batch, self.num_copies, *latent_shape)

    def _inv_call(self, tensordict: TensorDictBase) -> TensorDictBase:
        missing = [key for key in self.in_keys if key not in tensordict.keys(True)]
        if missing:
            raise KeyError(
                f"LatentEncodeTransform expected pixel keys {missing} in the written data; found "
                f"{list(tensordict.keys(True, True))}."
            )
        out = tensordict.exclude(*self.in_keys)
        for in_key, out_key in zip(self.in_keys, self.out_keys, strict=True):
            out.set(out_key, self.encode(tensordict.get(in_key)))
        return out

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Selects one stored copy per element (same index for every latent key)."""
        if self.num_copies == 1:
            return tensordict
        first = tensordict.get(self.out_keys[0])
        n_latent = len(first.shape) - tensordict.batch_dims - 1
        copy_index = torch.randint(
            self.num_copies, tensordict.batch_size, device=first.device
        ).reshape(*tensordict.batch_size, 1, *([1] * n_latent))
        for key in self.out_keys:
            latent = tensordict.get(key)
            index = copy_index.expand(
                *latent.shape[: tensordict.batch_dims],
                1,
                *latent.shape[tensordict.batch_dims + 1 :],
            )
            tensordict.set(
                key, latent.gather(tensordict.batch_dims, index).squeeze(tensordict.batch_dims)
            )
        return tensordict

    def _call(self, next_tensordict: TensorDictBase) -> TensorDictBase:
        raise RuntimeError(
            "LatentEncodeTransform is a replay-buffer transform; it cannot be used in an env."
        )
