"""DeltaFrameStorage checkpoints, bad input and codecs."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_delta_frame_storage import assert_same, fill_both, make_transitions
from torchrl.data import LazyTensorStorage, ReplayBuffer, TensorDictReplayBuffer

from tests._recipes import assert_equal_state
from torchrl_seer.data import DeltaFrameStorage, make_frame_codec
from torchrl_seer.data.checkpoint_checksums import seal_state


@pytest.mark.parametrize("codec", ["zstd", "keyframe-sparse", "none"])
@pytest.mark.parametrize("steps", [30, 130])  # partial and wrapped buffers
def test_dumps_loads_round_trip(tmp_path, codec, steps):
    data = make_transitions(num_envs=2, steps=steps // 2, frame_stack=4, channels=1, seed=1)
    delta = DeltaFrameStorage(50, frame_stack=4, chunk_len=8, codec=codec)
    lazy = LazyTensorStorage(50)
    rb, rb_lazy = fill_both(data, delta, lazy, [9, 1], check_every=False)
    rb.dumps(tmp_path / "rb")
    restored = ReplayBuffer(storage=DeltaFrameStorage(50, frame_stack=4, chunk_len=8, codec=codec))
    restored.loads(tmp_path / "rb")
    assert len(restored) == len(rb)
    assert restored.writer._cursor == rb.writer._cursor
    assert_same(restored.storage[:], lazy[:])
    # the restored buffer keeps working: the next writes land where the original's would
    more = make_transitions(num_envs=1, steps=20, frame_stack=4, channels=1, seed=7)
    restored.extend(more)
    rb_lazy.extend(more)
    assert_same(restored.storage[:], lazy[:])


def test_state_dict_round_trip():
    data = make_transitions(num_envs=3, steps=40, frame_stack=3, channels=3, seed=2)
    delta = DeltaFrameStorage(70, frame_stack=3, chunk_len=5)
    lazy = LazyTensorStorage(70)
    fill_both(data, delta, lazy, [11], check_every=False)
    state = delta.state_dict()
    restored = DeltaFrameStorage(70, frame_stack=3, chunk_len=5)
    restored.load_state_dict(state)
    assert_same(restored[:], lazy[:])
    assert restored._last_cursor_index == delta._last_cursor_index
    with pytest.raises(ValueError, match="configuration"):
        DeltaFrameStorage(70, frame_stack=2, chunk_len=5).load_state_dict(state)


def test_corrupted_payload_raises(tmp_path):
    data = make_transitions(num_envs=1, steps=40, frame_stack=2, channels=1, seed=3)
    rb = ReplayBuffer(storage=DeltaFrameStorage(64, frame_stack=2, chunk_len=8))
    rb.extend(data)
    rb.storage.flush()
    rb.dumps(tmp_path / "rb")
    state_file = tmp_path / "rb" / "storage" / "delta_frame_storage.pt"
    state = torch.load(state_file, weights_only=True)
    payload = state["pixels"][0]["index"]["pool"]["payload"]
    payload[len(payload) // 2] ^= 0xFF
    torch.save(state, state_file)
    restored = ReplayBuffer(storage=DeltaFrameStorage(64, frame_stack=2, chunk_len=8))
    with pytest.raises(ValueError, match="corrupted"):
        restored.loads(tmp_path / "rb")


def test_corrupted_zstd_payload_raises_on_decode():
    codec = make_frame_codec("zstd")
    frames = torch.randint(0, 8, (16, 8, 8), dtype=torch.uint8)
    payload = bytearray(codec.encode(frames))
    payload[len(payload) // 2] ^= 0xFF
    with pytest.raises(Exception, match=r"checksum|corrupt|error"):
        codec.decode(bytes(payload), 16, (8, 8))


def good_batch(n=4, stack=2):
    data = make_transitions(num_envs=1, steps=n, frame_stack=stack, channels=1, seed=0)
    return data


def bad_batches():
    good = good_batch()
    wrong_dtype = good.clone()
    wrong_dtype["pixels"] = wrong_dtype["pixels"].float()
    bad_stack = good.clone()
    bad_stack["pixels"] = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    bad_stack["next", "pixels"] = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    wrong_shape = good.clone()
    wrong_shape["pixels"] = torch.zeros(4, 2, 8, 9, dtype=torch.uint8)
    wrong_shape["next", "pixels"] = torch.zeros(4, 2, 8, 9, dtype=torch.uint8)
    missing_next = good.clone()
    del missing_next["next", "pixels"]
    wrong_device = good.clone()
    wrong_device["pixels"] = torch.zeros(4, 2, 8, 8, dtype=torch.uint8, device="meta")
    other_shape = good.clone()
    other_shape["observation"] = torch.zeros(4, 5)
    return {
        "dtype": (wrong_dtype, TypeError, "torch.uint8"),
        "frame_stack": (bad_stack, ValueError, r"shape \(2, 8, 8\) per transition"),
        "shape": (wrong_shape, ValueError, "shape"),
        "missing next": (missing_next, KeyError, "expected the pixel key"),
        "device": (wrong_device, ValueError, "device cpu"),
        "other key shape": (other_shape, ValueError, "observation"),
    }


@pytest.mark.parametrize("case", sorted(bad_batches()))
def test_bad_input_is_rejected_and_leaves_storage_untouched(case):
    batch, error, match = bad_batches()[case]
    delta = DeltaFrameStorage(6, frame_stack=2)
    lazy = LazyTensorStorage(6)
    rb, rb_lazy = fill_both(good_batch(5), delta, lazy, [5], check_every=False)
    before = delta[:].clone()
    with pytest.raises(error, match=match):
        rb.extend(batch)
    assert len(delta) == 5
    assert_same(delta[:], before)
    # the writer cursor was restored: the next good batch lands where LazyTensorStorage's does
    more = make_transitions(num_envs=1, steps=3, frame_stack=2, channels=1, seed=11)
    rb.extend(more)
    rb_lazy.extend(more)
    assert_same(delta[:], lazy[:])


def test_single_add_casts_like_lazy_tensor_storage():
    # an integer cursor copies (casting), as LazyTensorStorage's index write does
    delta = DeltaFrameStorage(6, frame_stack=2)
    lazy = LazyTensorStorage(6)
    rb, rb_lazy = TensorDictReplayBuffer(storage=delta), TensorDictReplayBuffer(storage=lazy)
    rb.extend(good_batch())
    rb_lazy.extend(good_batch())
    cast = good_batch()[0].clone()
    cast["next", "pixels"] = cast["next", "pixels"].to(torch.int16) + 300
    rb.add(cast)
    rb_lazy.add(cast)
    assert_same(delta[:], lazy[:])
    assert rb.writer._cursor == 5


def test_non_tensordict_is_rejected():
    delta = DeltaFrameStorage(10, frame_stack=2)
    with pytest.raises(TypeError, match="TensorDict"):
        delta.set(torch.arange(2), {"pixels": torch.zeros(2, 2, 8, 8, dtype=torch.uint8)})


def test_two_dimensional_batch_is_rejected():
    delta = DeltaFrameStorage(10, frame_stack=2)
    data = good_batch(4).reshape(2, 2)
    with pytest.raises(ValueError, match="one batch dimension"):
        delta.set(torch.arange(2), data)


def test_bytes_accounts_for_what_is_held():
    data = make_transitions(num_envs=1, steps=200, frame_stack=4, channels=1, seed=5, levels=4)
    delta = DeltaFrameStorage(256, frame_stack=4, chunk_len=32, cache_bytes=0)
    delta.set(torch.arange(200), data)
    delta.flush()
    index = delta._indices["pixels"]
    payloads = sum(len(p) for p in index.pool._payloads if p is not None)
    raw_keys = sum(v.numel() * v.element_size() for v in delta._storage.values(True, True))
    assert delta.codec.memory_bytes() == 0  # the compression context is released after writes
    held = payloads + raw_keys + index.table.nbytes()
    assert held <= delta.bytes() <= held + 4096
    _ = delta[torch.arange(50)]  # decoding holds a decompression context, counted
    assert delta.codec.memory_bytes() > 0
    assert delta.bytes() >= held + delta.codec.memory_bytes()


@pytest.mark.parametrize(
    "codec,options",
    [
        ("zstd", {"level": 1}),
        ("zstd", {"level": 9, "frame_delta": True}),
        ("keyframe-sparse", {"group_size": 3}),
        ("keyframe-sparse", {"group_size": 4, "reference": True}),
        ("none", {}),
    ],
)
def test_codecs_are_lossless(codec, options):
    gen = torch.Generator().manual_seed(0)
    base = torch.randint(0, 255, (3, 84, 84), generator=gen, dtype=torch.uint8)
    frames = base.repeat(7, 1, 1)[:20].clone()
    frames[5:, 10:20, 10:20] = 7  # small residuals: sparse
    frames[9] = torch.randint(0, 255, (84, 84), generator=gen, dtype=torch.uint8)  # dense
    coder = make_frame_codec(codec, **options)
    payload = coder.encode(frames)
    assert (coder.decode(payload, 20, (84, 84)) == frames.numpy()).all()
    assert coder.config()["codec"] == codec


def test_keyframe_sparse_reference_fallback_is_dense_int16():
    frames = torch.randint(0, 255, (4, 84, 84), dtype=torch.uint8)
    reference = make_frame_codec("keyframe-sparse", group_size=4, reference=True)
    default = make_frame_codec("keyframe-sparse", group_size=4)
    header = 5 * 4
    assert len(reference.encode(frames)) == header + 84 * 84 * (1 + 3 * 2)
    assert len(default.encode(frames)) == header + 84 * 84 * 4


def test_unknown_codec_and_bad_arguments():
    with pytest.raises(ValueError, match="unknown codec"):
        DeltaFrameStorage(10, codec="lz5")
    with pytest.raises(ValueError, match="frame_stack"):
        DeltaFrameStorage(10, frame_stack=0)
    with pytest.raises(ValueError, match="stack_dim"):
        DeltaFrameStorage(10, stack_dim=0)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    level=st.sampled_from([1, 9, 19]),
    chunk_len=st.integers(2, 16),
    seed=st.integers(0, 2**16),
)
def test_recompressed_chunks_read_back_exactly(level, chunk_len, seed):
    data = make_transitions(
        num_envs=2, steps=50, frame_stack=4, channels=1, seed=seed, levels=4, size=16
    )
    delta = DeltaFrameStorage(64, frame_stack=4, chunk_len=chunk_len, num_threads=0)
    rb_delta, rb_lazy = fill_both(
        data[:80], delta, LazyTensorStorage(64), [7, 5], check_every=False
    )
    pool = delta._indices["pixels"].pool
    payload = pool.payload_bytes()
    saved = delta.recompress(level)
    assert saved >= 0 and pool.payload_bytes() == payload - saved
    assert delta.recompress(level) == 0  # every sealed chunk was re-encoded once
    assert_same(delta[:], rb_lazy.storage[:])
    restored = DeltaFrameStorage(64, frame_stack=4, chunk_len=chunk_len, num_threads=0)
    restored.load_state_dict(delta.state_dict())
    assert_same(restored[:], rb_lazy.storage[:])
    for rb in (rb_delta, rb_lazy):  # writes after recompression (wrapping around)
        rb.extend(data[80:])
    assert_same(delta[:], rb_lazy.storage[:])


def test_recompress_refuses_codecs_other_than_zstd():
    data = make_transitions(num_envs=1, steps=8, frame_stack=2, channels=1, seed=1)
    delta = DeltaFrameStorage(8, frame_stack=2, codec="none")
    ReplayBuffer(storage=delta).extend(data)
    with pytest.raises(ValueError, match="recompress re-encodes zstd chunks"):
        delta.recompress(9)


def test_transient_bytes_are_the_caches_and_codec_contexts_that_reads_create():
    from torchrl_seer.data.torchrl_internals import storage_nbytes

    data = make_transitions(num_envs=1, steps=200, frame_stack=4, channels=1, seed=5, levels=4)
    delta = DeltaFrameStorage(256, frame_stack=4, chunk_len=32, cache_bytes=1 << 20)
    delta.set(torch.arange(200), data)
    delta.flush()
    kept = storage_nbytes(delta, transient=False)
    _ = delta[torch.arange(0, 200, 3)]  # decoding fills the cache and a decompression context
    assert delta.nbytes_transient() >= delta.codec.memory_bytes() > 0
    assert delta.nbytes_transient() > delta.codec.memory_bytes()  # the decoded-chunk cache
    assert storage_nbytes(delta, transient=False) == kept  # reads do not change the rest
    assert storage_nbytes(delta) == delta.nbytes_held() == kept + delta.nbytes_transient()


def held_bytes(storage):
    return storage.nbytes_held() - storage.nbytes_transient()


def written_part(buffer_state):
    """A replay buffer's state dict with the raw keys cut to the written rows (the rest of
    a preallocated raw-key table is uninitialized memory, as in ``LazyTensorStorage``)."""

    def cut(value, rows):
        if isinstance(value, dict):
            return {key: cut(entry, rows) for key, entry in value.items()}
        return value[:rows]

    storage = dict(buffer_state["_storage"])
    if storage["other"] is not None:
        storage["other"] = cut(storage["other"], storage["len"])
    storage.pop("checksums")  # they cover the uninitialized rows too
    return {**buffer_state, "_storage": storage}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frame_stack=st.integers(1, 4),
    num_envs=st.integers(1, 3),
    steps=st.integers(4, 30),
    max_size=st.integers(7, 50),
    order=st.sampled_from(["step-major", "env-major", "shuffled"]),
    batch_sizes=st.lists(st.integers(1, 12), min_size=1, max_size=3),
    codec=st.sampled_from(["zstd", "keyframe-sparse", "none"]),
    chunk_len=st.integers(1, 9),
    max_streams=st.integers(1, 4),
    cut=st.floats(0.0, 1.0),
    recompress=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_restored_storage_continues_exactly(
    frame_stack,
    num_envs,
    steps,
    max_size,
    order,
    batch_sizes,
    codec,
    chunk_len,
    max_streams,
    cut,
    recompress,
    seed,
):
    """Checkpointed at any point, restored and written on, a storage holds the same bytes
    (state dict and byte count) as the storage that was never interrupted."""
    data = make_transitions(
        num_envs=num_envs,
        steps=steps,
        frame_stack=frame_stack,
        channels=1,
        seed=seed,
        levels=2,
        order=order,
    )

    def storage():
        return DeltaFrameStorage(
            max_size,
            frame_stack=frame_stack,
            codec=codec,
            chunk_len=chunk_len,
            max_streams=max_streams,
            num_threads=0,
        )

    def write(rb, rows):
        start, turn = 0, 0
        while start < len(rows):
            size = min(batch_sizes[turn % len(batch_sizes)], max_size)
            rb.extend(rows[start : start + size])
            start, turn = start + size, turn + 1

    split = int(cut * len(data))
    original = ReplayBuffer(storage=storage())
    write(original, data[:split])
    if recompress and codec == "zstd":
        original.storage.recompress(9)
    saved = original.state_dict()

    restored = ReplayBuffer(storage=storage())
    restored.load_state_dict(saved)
    assert_equal_state(written_part(saved), written_part(restored.state_dict()), "state")
    assert held_bytes(restored.storage) == held_bytes(original.storage)

    write(original, data[split:])
    write(restored, data[split:])
    assert_equal_state(
        written_part(original.state_dict()), written_part(restored.state_dict()), "state"
    )
    assert held_bytes(restored.storage) == held_bytes(original.storage)
    assert_same(restored.storage[:], original.storage[:])


def test_a_format_3_checkpoint_restores_with_its_chunks_sealed():
    """A checkpoint written before open chunks and streams were saved still restores."""
    data = make_transitions(num_envs=2, steps=30, frame_stack=3, channels=1, seed=5)
    delta = DeltaFrameStorage(40, frame_stack=3, chunk_len=8, num_threads=0)
    lazy = LazyTensorStorage(40)
    fill_both(data[:40], delta, lazy, [6])
    state = delta.state_dict()
    del state["checksums"]
    state["config"]["format_version"] = 3
    for entry in state["pixels"]:
        for key in ("streams", "tick"):
            del entry["index"][key]
        del entry["index"]["table"]["exception_capacity"]
        for key in ("open_slots", "free_slots", "recompressed", "refcount_size"):
            del entry["index"]["pool"][key]
    restored = DeltaFrameStorage(40, frame_stack=3, chunk_len=8, num_threads=0)
    restored.load_state_dict(seal_state(state))
    assert_same(restored[:], lazy[:])
    assert all(not index._streams for index in restored._indices.values())
    assert all(not index.pool._open for index in restored._indices.values())
    for storage in (restored, lazy):  # and keeps working
        storage.set(torch.arange(10, 30), data[40:60])
    assert_same(restored[:], lazy[:])
