"""CURLLoss: InfoNCE on two random crops, gradients into the query encoder and W only."""

import copy

import pytest
import torch
from tensordict import TensorDict
from torch import nn

from torchrl_seer.modules import CURLPixelEncoder
from torchrl_seer.objectives import CURLLoss
from torchrl_seer.trainers import FreezeEncoderHook


def _batch(n=16, key="pixels", seed=0):
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (n, 9, 100, 100), dtype=torch.uint8, generator=gen)
    return TensorDict({key: pixels}, batch_size=[n])


def _small_encoder():
    return CURLPixelEncoder(9, num_filters=8, feature_dim=16)


def test_loss_matches_manual_infonce():
    torch.manual_seed(0)
    encoder = _small_encoder()
    loss = CURLLoss(encoder, key_encoder=copy.deepcopy(encoder))
    batch = _batch(6)
    torch.manual_seed(1)
    out = loss(batch)
    # same crops again: RandomCrop draws anchor crops first, then positive crops
    torch.manual_seed(1)
    anchor = encoder(loss.crop(batch["pixels"]))
    positive = loss.key_encoder(loss.crop(batch["pixels"]))
    logits = anchor @ loss.bilinear @ positive.T
    expected = -torch.log_softmax(logits, dim=1).diagonal().mean()
    torch.testing.assert_close(out["loss_curl"], expected, rtol=1e-5, atol=1e-6)
    assert 0.0 <= out["curl_accuracy"].item() <= 1.0


def test_gradients_reach_query_encoder_and_bilinear_only():
    encoder = _small_encoder()
    key_encoder = copy.deepcopy(encoder)
    loss = CURLLoss(encoder, key_encoder=key_encoder)
    loss(_batch(4))["loss_curl"].backward()
    assert loss.bilinear.grad is not None and loss.bilinear.grad.abs().sum() > 0
    assert all(p.grad is not None for p in encoder.parameters())
    assert all(p.grad is None and not p.requires_grad for p in key_encoder.parameters())


def test_training_separates_positive_pairs():
    torch.manual_seed(0)
    encoder = _small_encoder()
    key_encoder = copy.deepcopy(encoder)
    loss = CURLLoss(encoder, key_encoder=key_encoder)
    optim = torch.optim.Adam([*encoder.parameters(), loss.bilinear], lr=1e-3)
    # smooth images (like rendered scenes): two crops of one image share most of its content
    coarse = torch.rand(16, 9, 4, 4, generator=torch.Generator().manual_seed(0))
    smooth = nn.functional.interpolate(coarse, size=(100, 100), mode="bilinear")
    batch = TensorDict(pixels=(255 * smooth).to(torch.uint8), batch_size=[16])
    with torch.no_grad():
        first = loss(batch)["loss_curl"].item()
    for _ in range(60):
        out = loss(batch)
        optim.zero_grad()
        out["loss_curl"].backward()
        optim.step()
        with torch.no_grad():  # momentum encoder, as in CURL
            for p_key, p in zip(key_encoder.parameters(), encoder.parameters(), strict=True):
                p_key.lerp_(p, 0.05)
    with torch.no_grad():
        last = torch.stack([loss(batch)["loss_curl"] for _ in range(5)]).mean().item()
    assert last < 0.5 * first  # ln(16) = 2.77 for chance


def test_set_keys_reads_another_pixel_key():
    encoder = _small_encoder()
    loss = CURLLoss(encoder, key_encoder=copy.deepcopy(encoder))
    loss.set_keys(pixels=("obs", "rgb"))
    assert loss.in_keys == [("obs", "rgb")]
    assert torch.isfinite(loss(_batch(4, key=("obs", "rgb")))["loss_curl"])


def test_frozen_encoder_stops_learning_through_the_hook():
    encoder = _small_encoder()
    loss = CURLLoss(encoder, key_encoder=copy.deepcopy(encoder))
    optim = torch.optim.Adam([*encoder.parameters(), loss.bilinear], lr=1e-3)
    optim.zero_grad()
    loss(_batch(4))["loss_curl"].backward()
    optim.step()
    hook = FreezeEncoderHook(encoder, freeze_at=1, modules=[loss], optimizers=[optim])
    assert hook.step(1)
    assert all(not p.requires_grad for p in encoder.parameters())
    remaining = {id(p) for group in optim.param_groups for p in group["params"]}
    assert remaining == {id(loss.bilinear)}
    assert all(id(p) not in {id(q) for q in encoder.parameters()} for p in optim.state)


def test_bad_inputs_raise_clear_errors():
    encoder = _small_encoder()
    with pytest.raises(ValueError, match="separate momentum"):
        CURLLoss(encoder, key_encoder=encoder)
    with pytest.raises(ValueError, match="same number of features"):
        CURLLoss(encoder, key_encoder=CURLPixelEncoder(9, num_filters=8, feature_dim=8))
    with pytest.raises(TypeError, match="out_features"):
        CURLLoss(encoder, key_encoder=nn.Identity())
    loss = CURLLoss(encoder, key_encoder=copy.deepcopy(encoder))
    with pytest.raises(KeyError, match="set_keys"):
        loss(_batch(4, key="observation"))
    with pytest.raises(ValueError, match="at least 2"):
        loss(_batch(1))
    with pytest.raises(ValueError, match="cannot crop"):
        loss(TensorDict(pixels=torch.zeros(4, 9, 64, 64, dtype=torch.uint8), batch_size=[4]))
