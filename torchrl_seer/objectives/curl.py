"""CURLLoss: the contrastive auxiliary loss of CURL (Laskin et al., 2020) as a TorchRL loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tensordict import NestedKey, TensorDict, TensorDictBase
from torch import nn
from torchrl.objectives import LossModule

from torchrl_seer.modules.crops import RandomCrop

__all__ = ["CURLLoss"]


class CURLLoss(LossModule):
    """Contrastive unsupervised representation learning of a pixel encoder (CURL).

    Two independent random crops of every stored observation make a positive pair: the
    *anchor* goes through the online (query) encoder ``f_q``, the *positive* through the
    momentum (key) encoder ``f_k`` — in CURL and SEER the critic's target encoder, updated by
    EMA. With a learned bilinear form ``W`` the loss is InfoNCE over the batch, every other
    sample's key being a negative::

        logits[i, j] = f_q(anchor_i)ᵀ W f_k(positive_j)   (minus the row maximum)
        loss_curl    = cross_entropy(logits, labels = [0, 1, ..., B-1])

    Gradients reach ``f_q`` and ``W`` only. In SEER the update stops at the freeze step T_f
    together with the encoder optimizer and EMA (a resumable freeze): stop calling this loss once
    :class:`~torchrl_seer.trainers.FreezeEncoderHook` has frozen the encoder, and give the
    hook the optimizer that holds the encoder so its state is dropped.

    Args:
        encoder (nn.Module): the online (query) encoder, ``[*B, C, size, size]`` pixels to
            ``[*B, D]`` features — e.g. :class:`~torchrl_seer.modules.CURLPixelEncoder`.

    Keyword Args:
        key_encoder (nn.Module): the momentum (key) encoder with the same output size; it
            receives no gradient here.
        crop_size (int): side of the random crops. Defaults to ``84``.

    Examples:
        >>> import copy, torch
        >>> from tensordict import TensorDict
        >>> from torchrl_seer.modules import CURLPixelEncoder
        >>> encoder = CURLPixelEncoder(9)
        >>> loss = CURLLoss(encoder, key_encoder=copy.deepcopy(encoder))
        >>> batch = TensorDict(
        ...     pixels=torch.randint(0, 256, (8, 9, 100, 100), dtype=torch.uint8), batch_size=[8]
        ... )
        >>> out = loss(batch)
        >>> sorted(out.keys())
        ['curl_accuracy', 'loss_curl']
        >>> out["loss_curl"].backward()
        >>> loss.bilinear.grad.shape
        torch.Size([50, 50])
    """

    @dataclass
    class _AcceptedKeys:
        """Configurable tensordict keys (see :meth:`set_keys`).

        Attributes:
            pixels (NestedKey): the uncropped image observations. Defaults to ``"pixels"``.
        """

        pixels: NestedKey = "pixels"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        encoder: nn.Module,
        *,
        key_encoder: nn.Module,
        crop_size: int = 84,
    ) -> None:
        super().__init__()
        if encoder is key_encoder:
            raise ValueError(
                "CURLLoss needs a separate momentum (key) encoder, e.g. the critic's target "
                "encoder; got the online encoder twice."
            )
        self.encoder = encoder
        self.key_encoder = key_encoder
        for param in key_encoder.parameters():
            param.requires_grad_(False)
        feature_dim = self._feature_dim(encoder)
        key_dim = self._feature_dim(key_encoder)
        if feature_dim != key_dim:
            raise ValueError(
                f"encoder and key_encoder must output the same number of features, got "
                f"{feature_dim} and {key_dim}."
            )
        self.crop = RandomCrop(crop_size)
        # CURL initialises W uniformly in [0, 1)
        self.bilinear = nn.Parameter(torch.rand(feature_dim, feature_dim))

    @staticmethod
    def _feature_dim(encoder: nn.Module) -> int:
        out_features = getattr(encoder, "out_features", None)
        if not isinstance(out_features, int):
            raise TypeError(
                f"{type(encoder).__name__} must expose an integer ``out_features`` (the feature "
                "size), as torchrl_seer's encoders do."
            )
        return out_features

    def _forward_value_estimator_keys(self, **kwargs) -> None:
        pass  # no value estimator

    @property
    def in_keys(self) -> list[NestedKey]:
        """The pixel key the loss reads."""
        return [self.tensor_keys.pixels]

    @property
    def out_keys(self) -> list[str]:
        """``loss_curl`` and the detached top-1 accuracy of the positive pair."""
        return ["loss_curl", "curl_accuracy"]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the InfoNCE loss on two random crops of each observation.

        Args:
            tensordict (TensorDictBase): a batch ``[B]`` (B ≥ 2) holding uncropped pixels.

        Returns:
            A tensordict with ``loss_curl`` (scalar) and ``curl_accuracy`` (detached).
        """
        pixels_key = self.tensor_keys.pixels
        pixels = tensordict.get(pixels_key, None)
        if pixels is None:
            raise KeyError(
                f"CURLLoss reads uncropped image observations at {pixels_key!r}; the batch has "
                f"keys {list(tensordict.keys(True, True))}. Use set_keys(pixels=...)."
            )
        pixels = pixels.reshape(-1, *pixels.shape[-3:])
        if pixels.shape[0] < 2:
            raise ValueError("CURLLoss needs at least 2 observations: the others are negatives.")
        anchor = self.encoder(self.crop(pixels))
        with torch.no_grad():
            positive = self.key_encoder(self.crop(pixels))
        logits = anchor @ self.bilinear @ positive.T
        logits = logits - logits.max(dim=1, keepdim=True).values
        labels = torch.arange(logits.shape[0], device=logits.device)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean().detach()
        return TensorDict(loss_curl=loss, curl_accuracy=accuracy)
