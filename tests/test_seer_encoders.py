"""Split encoders, crops and the latent-or-pixel feature stage."""

import pytest
import torch
from tensordict import TensorDict

from torchrl_seer.modules import (
    CenterCrop,
    CURLPixelEncoder,
    DataEfficientAtariEncoder,
    LatentOrPixelFeatures,
    NatureAtariEncoder,
    RandomCrop,
)


@pytest.mark.parametrize(
    ("encoder", "channels", "latent", "out"),
    [
        (DataEfficientAtariEncoder(), 4, 576, 576),
        (NatureAtariEncoder(), 4, 3136, 3136),
        (CURLPixelEncoder(), 9, 50, 50),
        (CURLPixelEncoder(freeze="convs"), 9, 32 * 35 * 35, 50),
    ],
)
def test_split_composes_to_the_full_encoder(encoder, channels, latent, out):
    pixels = torch.randint(0, 256, (2, 3, channels, 84, 84), dtype=torch.uint8)
    assert encoder.latent_shape == (latent,)
    full = encoder(pixels)
    assert full.shape == (2, 3, out)
    torch.testing.assert_close(encoder.encode_latent(encoder.frozen_part_forward(pixels)), full)
    # uint8 input is scaled by 1/255
    torch.testing.assert_close(encoder(pixels), encoder(pixels.float() / 255))


def test_frozen_parameter_names_carry_the_split():
    encoder = CURLPixelEncoder(freeze="convs")
    names = [n for n, _ in encoder.named_parameters()]
    assert all(n.startswith(("frozen_part.", "trainable_part.")) for n in names)
    assert {n.split(".")[0] for n in names} == {"frozen_part", "trainable_part"}
    assert all(n.startswith("frozen_part.") for n, _ in CURLPixelEncoder().named_parameters())


def test_crops():
    pixels = torch.arange(2 * 3 * 10 * 10).reshape(2, 3, 10, 10)
    centre = CenterCrop(6)(pixels)
    assert torch.equal(centre, pixels[..., 2:8, 2:8])
    torch.manual_seed(0)
    crops = RandomCrop(6)(pixels.repeat(8, 1, 1, 1))
    windows = {(i, j): pixels[..., i : i + 6, j : j + 6] for i in range(5) for j in range(5)}
    for k, crop in enumerate(crops):
        assert any(torch.equal(crop, w[k % 2]) for w in windows.values())
    assert len({crop[0, 0, 0].item() for crop in crops}) > 1  # independent windows
    assert RandomCrop(6)(pixels.expand(4, 2, 3, 10, 10)).shape == (4, 2, 3, 6, 6)
    assert RandomCrop(6)(pixels[:0]).shape == (0, 3, 6, 6)  # an empty batch stays empty
    with pytest.raises(ValueError, match="cannot crop"):
        RandomCrop(12)(pixels)


def test_features_dispatch_on_key_not_shape():
    encoder = CURLPixelEncoder(3, image_size=20, num_filters=4, feature_dim=8)
    stage = LatentOrPixelFeatures(encoder, pre_encoder=CenterCrop(20))
    pixels = torch.randint(0, 256, (5, 3, 24, 24), dtype=torch.uint8)
    out = stage(TensorDict({"pixels": pixels}, [5]))["features"]
    torch.testing.assert_close(out, encoder(pixels[..., 2:22, 2:22]))
    latent = torch.randn(5, 8)
    torch.testing.assert_close(
        stage(TensorDict({"pixels": pixels, "latent": latent}, [5]))["features"], latent
    )
    with pytest.raises(KeyError, match="needs 'latent' or 'pixels'"):
        stage(TensorDict({"obs": latent}, [5]))
    with pytest.raises(ValueError, match="expects latents of shape"):
        encoder.encode_latent(torch.randn(5, 9))
