"""Transfer: a frozen encoder saved on one task starts another task frozen from step 0."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer

from torchrl_seer.data import LatentReplayOptions
from torchrl_seer.modules import DataEfficientAtariEncoder, NatureAtariEncoder
from torchrl_seer.trainers import FreezeEncoderHook

SIZE = 25


def pixels_batch(start, n):
    gen = torch.Generator().manual_seed(start)
    pixels = torch.randint(0, 256, (n, 4, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    return TensorDict(
        {"pixels": pixels, "id": torch.arange(start, start + n), ("next", "pixels"): pixels},
        [n],
    )


def test_saved_encoder_starts_new_task_in_latent_mode_from_first_transition(tmp_path):
    torch.manual_seed(0)
    source = DataEfficientAtariEncoder(4, screen_size=SIZE)
    source.save_frozen_part(tmp_path / "encoder.pt")

    torch.manual_seed(1)
    encoder = DataEfficientAtariEncoder(4, screen_size=SIZE)
    encoder.load_frozen_part(tmp_path / "encoder.pt")
    head = torch.nn.Linear(64, 3)
    optim = torch.optim.Adam([*encoder.parameters(), *head.parameters()])
    rb = ReplayBuffer(storage=LazyTensorStorage(100), batch_size=8)
    hook = FreezeEncoderHook(
        encoder,
        freeze_at=0,
        optimizers=[optim],
        replay_buffer=rb,
        replay_options=LatentReplayOptions(capacity=500, progress=False),
    )
    assert hook.step(0)  # before the first write: latent replay from the first transition
    assert hook.freeze_report["num_migrated"] == 0
    assert rb.storage.max_size == 500
    for start in range(0, 30, 10):
        rb.extend(pixels_batch(start, 10))
    stored = rb.storage.get(torch.arange(30))
    assert "pixels" not in stored.keys()
    with torch.no_grad():
        expected = source.frozen_part_forward(
            torch.cat([pixels_batch(s, 10)["pixels"] for s in (0, 10, 20)])
        )
    torch.testing.assert_close(stored["latent"], expected)
    assert stored["id"].tolist() == list(range(30))
    assert not any(p.requires_grad for p in encoder.frozen_part.parameters())


def test_loading_an_encoder_of_another_shape_is_a_clear_error(tmp_path):
    DataEfficientAtariEncoder(4).save_frozen_part(tmp_path / "de.pt")
    with pytest.raises(ValueError, match="latent_shape"):
        NatureAtariEncoder(4).load_frozen_part(tmp_path / "de.pt")
    with pytest.raises(ValueError, match="input_shape"):
        DataEfficientAtariEncoder(4, screen_size=SIZE).load_frozen_part(tmp_path / "de.pt")
