"""Latent replay: migration, encode-on-write, capacity growth, priorities, bad inputs."""

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import (
    LazyMemmapStorage,
    LazyTensorStorage,
    PrioritizedSampler,
    ReplayBuffer,
    TensorDictReplayBuffer,
)

from torchrl_seer.data import (
    LatentEncodeTransform,
    QuantizedStorage,
    equal_budget_capacity,
    grow_replay_buffer,
    migrate_to_latent_replay,
    reference_capacity_atari,
    reference_capacity_dmc,
)
from torchrl_seer.data.torchrl_internals import chronological_indices
from torchrl_seer.modules import CURLPixelEncoder, DataEfficientAtariEncoder, RandomCrop

SMALL = 25  # frame size: Conv(k5,s5) x2 on 25x25 gives 64 latent features


def small_encoder():
    torch.manual_seed(0)
    return DataEfficientAtariEncoder(4, screen_size=SMALL)


def transitions(start, n, size=SMALL):
    """Transitions whose pixels and reward identify their global write index."""
    idx = torch.arange(start, start + n)
    gen = torch.Generator().manual_seed(start)
    pixels = torch.randint(0, 256, (n, 4, size, size), dtype=torch.uint8, generator=gen)
    return TensorDict(
        {
            "pixels": pixels,
            "action": idx % 3,
            "id": idx,
            ("next", "pixels"): pixels.flip(-1),
            ("next", "reward"): idx.float().unsqueeze(-1),
            ("next", "done"): (idx % 7 == 0).unsqueeze(-1),
        },
        [n],
    )


@pytest.mark.parametrize("storage_cls", [LazyTensorStorage, LazyMemmapStorage])
def test_migrated_latents_equal_encoder_on_stored_pixels(storage_cls, tmp_path):
    encoder = small_encoder()
    kwargs = {"scratch_dir": tmp_path} if storage_cls is LazyMemmapStorage else {}
    rb = ReplayBuffer(storage=storage_cls(50, **kwargs), batch_size=8)
    data = transitions(0, 37)
    rb.extend(data)
    report = migrate_to_latent_replay(rb, LatentEncodeTransform(encoder), progress=False)
    assert report.num_migrated == 37 and report.num_dropped == 0
    stored = rb.storage.get(torch.arange(37))
    with torch.no_grad():
        expected = encoder.frozen_part_forward(data["pixels"])
        expected_next = encoder.frozen_part_forward(data["next", "pixels"])
    torch.testing.assert_close(stored["latent"], expected)
    torch.testing.assert_close(stored["next", "latent"], expected_next)
    # every non-pixel field survives bit for bit (rewards, done flags: R1/R5)
    for key in ["action", "id", ("next", "reward"), ("next", "done")]:
        assert torch.equal(stored[key], data[key])
    assert "pixels" not in stored.keys()


def test_wraparound_is_migrated_oldest_first_and_cursor_continues():
    rb = ReplayBuffer(storage=LazyTensorStorage(10), batch_size=4)
    rb.extend(transitions(0, 7))
    rb.extend(transitions(7, 6))  # wraps: slots hold ids 10,11,12,3..9, cursor 3
    assert rb._writer._cursor == 3
    migrate_to_latent_replay(
        rb, LatentEncodeTransform(small_encoder()), capacity=20, progress=False
    )
    assert rb.storage.get(torch.arange(10))["id"].tolist() == list(range(3, 13))
    assert rb._writer._cursor == 10
    rb.extend(transitions(13, 4))  # goes to free slots, nothing overwritten
    assert len(rb) == 14
    assert rb.storage.get(torch.arange(14))["id"].tolist() == list(range(3, 17))


def test_shrink_keeps_newest_and_marks_full():
    rb = ReplayBuffer(storage=LazyTensorStorage(10), batch_size=4)
    rb.extend(transitions(0, 10))
    report = migrate_to_latent_replay(
        rb, LatentEncodeTransform(small_encoder()), capacity=4, progress=False
    )
    assert report.num_dropped == 6
    assert len(rb) == 4 and rb._writer._cursor == 0
    assert rb.storage.get(torch.arange(4))["id"].tolist() == [6, 7, 8, 9]
    rb.extend(transitions(10, 1))  # overwrites the oldest (id 6)
    assert sorted(rb.storage.get(torch.arange(4))["id"].tolist()) == [7, 8, 9, 10]


def test_budget_is_honoured_as_measured():
    rb = ReplayBuffer(storage=LazyTensorStorage(40), batch_size=4)
    rb.extend(transitions(0, 40))
    pixel_bytes = sum(v.numel() * v.element_size() for v in rb.storage._storage.values(True, True))
    report = migrate_to_latent_replay(rb, LatentEncodeTransform(small_encoder()), progress=False)
    assert report.budget_bytes == pixel_bytes
    assert report.pixel_bytes_per_transition == pixel_bytes / 40
    latent_bytes = sum(v.numel() * v.element_size() for v in rb.storage._storage.values(True, True))
    assert latent_bytes == report.latent_storage_bytes <= pixel_bytes
    # the next transition would not fit: capacity is the floor of budget / b_lat
    assert latent_bytes + report.latent_bytes_per_transition > pixel_bytes
    assert report.latent_capacity == pixel_bytes // report.latent_bytes_per_transition


def test_int8_latents_quadruple_capacity_under_same_budget():
    def run(factory):
        rb = ReplayBuffer(storage=LazyTensorStorage(40), batch_size=4)
        rb.extend(transitions(0, 40))
        return migrate_to_latent_replay(
            rb,
            LatentEncodeTransform(small_encoder()),
            storage_factory=factory,
            progress=False,
        ), rb

    fp32, _ = run(None)
    keys = ["latent", ("next", "latent")]
    int8, rb = run(lambda c: QuantizedStorage(c, keys=keys, dtype="int8"))
    # non-latent fields stay full width, so the ratio is slightly under 4 here
    latent_only = 2 * 64
    assert int8.latent_bytes_per_transition < fp32.latent_bytes_per_transition
    assert fp32.latent_bytes_per_transition - int8.latent_bytes_per_transition == 3 * latent_only
    assert rb.sample()["latent"].dtype == torch.float32
    # the budget covers the rows and the per-feature scales and offsets
    assert int8.latent_storage_bytes <= int8.budget_bytes == fp32.budget_bytes


def test_prioritized_sampler_priorities_follow_their_transitions():
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(10),
        sampler=PrioritizedSampler(10, alpha=1.0, beta=1.0),
        batch_size=4,
    )
    rb.extend(transitions(0, 13))  # wrapped, cursor 3
    slots = torch.arange(10)
    ids = rb.storage.get(slots)["id"]
    rb.update_priority(slots, ids.float() + 1)  # priority = id + 1
    migrate_to_latent_replay(
        rb, LatentEncodeTransform(small_encoder()), capacity=30, progress=False
    )
    sampler = rb._sampler
    assert sampler.max_size == 30
    new_ids = rb.storage.get(torch.arange(10))["id"]
    tree = torch.as_tensor(sampler._sum_tree[torch.arange(10).numpy()])
    torch.testing.assert_close(tree, (new_ids.float() + 1 + sampler._eps) ** sampler.alpha)
    assert float(sampler._sum_tree.query(10, 30)) == 0.0
    sample = rb.sample()
    assert sample["latent"].shape == (4, 64)


def test_grow_replay_buffer_in_place_keeps_order_cursor_and_priorities():
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(6),
        sampler=PrioritizedSampler(6, alpha=0.7, beta=0.5),
        batch_size=4,
    )
    rb.extend(TensorDict({"id": torch.arange(9)}, [9]))
    rb.update_priority(torch.arange(6), rb.storage.get(torch.arange(6))["id"].float())
    grow_replay_buffer(rb, 12)
    assert rb.storage.max_size == 12 and len(rb) == 6 and rb._writer._cursor == 6
    assert rb.storage.get(torch.arange(6))["id"].tolist() == [3, 4, 5, 6, 7, 8]
    tree = torch.as_tensor(rb._sampler._sum_tree[torch.arange(6).numpy()])
    torch.testing.assert_close(tree, (torch.arange(3.0, 9.0) + 1e-8) ** 0.7)
    rb.extend(TensorDict({"id": torch.arange(9, 12)}, [3]))
    assert rb.storage.get(torch.arange(9))["id"].tolist() == list(range(3, 12))


def test_k_copies_one_index_per_element():
    torch.manual_seed(0)
    encoder = CURLPixelEncoder(3, image_size=30)
    transform = LatentEncodeTransform(encoder, num_copies=3, augmentation=RandomCrop(30))
    rb = ReplayBuffer(storage=LazyTensorStorage(16), batch_size=64)
    pixels = torch.randint(0, 256, (16, 3, 34, 34), dtype=torch.uint8)
    rb.append_transform(transform)
    rb.extend(TensorDict({"pixels": pixels, ("next", "pixels"): pixels}, [16]))
    stored = rb.storage._storage
    assert stored["latent"].shape == (16, 3, 50)
    # obs and next obs are cropped independently
    assert not torch.equal(stored["latent"], stored["next", "latent"])
    sample, info = rb.sample(return_info=True)
    index = info["index"]
    assert sample["latent"].shape == (64, 50)
    chosen = (sample["latent"][:, None] == stored["latent"][index]).all(-1)
    chosen_next = (sample["next", "latent"][:, None] == stored["next", "latent"][index]).all(-1)
    assert (chosen.sum(-1) >= 1).all()
    # the same copy index k is used for every latent key of an element
    assert (chosen & chosen_next).any(-1).all()


def test_reference_formulas_reproduce_spec_examples():
    assert reference_capacity_dmc(1000, num_train_steps=80_000, num_copies=4) == 18_750
    assert reference_capacity_dmc(1000, num_train_steps=80_000, num_copies=1) == 75_000
    assert reference_capacity_dmc(80_000, num_train_steps=80_000, num_copies=4) == 80_000
    assert reference_capacity_atari(10_000, t_max=500_000) == 30_625
    assert reference_capacity_atari(500_000, t_max=500_000) == 500_000
    assert reference_capacity_atari(10_000, t_max=500_000, latent_dim=3136) == 5_625


def test_chronological_indices():
    assert chronological_indices(3, 5, 3).tolist() == [0, 1, 2]
    assert chronological_indices(5, 5, 0).tolist() == [0, 1, 2, 3, 4]
    assert chronological_indices(5, 5, 4).tolist() == [4, 0, 1, 2, 3]


def test_budget_too_small_is_a_clear_error():
    rb = ReplayBuffer(storage=LazyTensorStorage(4), batch_size=4)
    rb.extend(transitions(0, 4))
    with pytest.raises(ValueError, match="cannot hold one latent transition"):
        migrate_to_latent_replay(
            rb, LatentEncodeTransform(small_encoder()), budget_bytes=100, progress=False
        )
    with pytest.raises(ValueError, match="cannot hold one latent transition"):
        equal_budget_capacity(10, 11)


def test_missing_pixel_key_is_a_clear_error():
    rb = ReplayBuffer(storage=LazyTensorStorage(4), batch_size=4)
    rb.extend(transitions(0, 4).exclude(("next", "pixels")))
    with pytest.raises(KeyError, match=r"expected pixel keys \[\('next', 'pixels'\)\]"):
        migrate_to_latent_replay(rb, LatentEncodeTransform(small_encoder()), progress=False)


def test_encoder_output_shape_mismatch_is_a_clear_error():
    transform = LatentEncodeTransform(small_encoder(), latent_shape=(576,))
    with pytest.raises(ValueError, match=r"latents of shape \(64,\) but \(576,\) was expected"):
        transform.inv(transitions(0, 2))
    with pytest.raises(ValueError, match="expects observations of shape"):
        small_encoder()(torch.zeros(1, 4, 84, 84, dtype=torch.uint8))


def test_pixel_storage_is_released_and_rss_drops():
    size = 84
    rb = ReplayBuffer(storage=LazyTensorStorage(1500), batch_size=4)
    for start in range(0, 1500, 500):
        rb.extend(transitions(start, 500, size=size))
    old = rb.storage
    transform = LatentEncodeTransform(DataEfficientAtariEncoder(4, screen_size=size))
    report = migrate_to_latent_replay(
        rb, transform, max_capacity=1500, progress=False, batch_size=500
    )
    assert old._storage is None and not old.initialized
    # 1500 x 2 x 4 x 84 x 84 B = 85 MB of pixels freed; the latents take 7 MB
    assert report.pixel_storage_bytes > 1500 * 2 * 4 * 84 * 84
    assert report.latent_storage_bytes < report.pixel_storage_bytes / 10
    freed = report.rss_before_bytes - report.rss_after_bytes
    assert freed > 0.5 * (report.pixel_storage_bytes - report.latent_storage_bytes)


def test_migration_from_delta_frame_storage():
    from torchrl_seer.data import DeltaFrameStorage

    frames = torch.randint(0, 256, (40, 1, SMALL, SMALL), dtype=torch.uint8)
    idx = torch.arange(36)
    obs = torch.cat([frames[idx + i] for i in range(4)], 1)
    nxt = torch.cat([frames[idx + i + 1] for i in range(4)], 1)
    data = TensorDict(
        {
            "pixels": obs,
            "id": idx,
            ("next", "pixels"): nxt,
            ("next", "done"): torch.zeros(36, 1, dtype=torch.bool),
        },
        [36],
    )
    storage = DeltaFrameStorage(30, frame_stack=4, num_threads=0)
    rb = ReplayBuffer(storage=storage, batch_size=4)
    rb.extend(data)  # wraps: keeps ids 6..35
    held = storage.bytes()
    encoder = small_encoder()
    report = migrate_to_latent_replay(
        rb, LatentEncodeTransform(encoder), budget_bytes=10**7, progress=False
    )
    assert report.pixel_storage_bytes == held and report.num_migrated == 30
    stored = rb.storage.get(torch.arange(30))
    assert stored["id"].tolist() == list(range(6, 36))
    with torch.no_grad():
        expected = encoder.frozen_part_forward(obs[6:])
    torch.testing.assert_close(stored["latent"], expected)
    assert storage.num_frames() == 0  # the frame pools were released
