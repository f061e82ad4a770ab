"""DeltaFrameStorage at scale: fixed costs proportional to what it stores, partial decoding."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_delta_frame_storage import make_transitions

from torchrl_seer.data import DeltaFrameStorage
from torchrl_seer.data.chunked_frame_pool import ChunkedFramePool
from torchrl_seer.data.frame_codecs import make_frame_codec


def test_compression_context_is_released_after_each_write():
    data = make_transitions(num_envs=2, steps=60, frame_stack=4, channels=1, seed=1, size=84)
    delta = DeltaFrameStorage(200, frame_stack=4, chunk_len=16, num_threads=0)
    delta.set(torch.arange(60), data[:60])
    assert delta.codec.memory_bytes() == 0
    delta.set(torch.arange(60, 120), data[60:])
    delta.flush()
    assert delta.codec.memory_bytes() == 0
    state = delta.state_dict()
    assert delta.codec.memory_bytes() == 0
    restored = DeltaFrameStorage(200, frame_stack=4, chunk_len=16, num_threads=0)
    restored.load_state_dict(state)
    assert torch.equal(restored[torch.arange(120)]["pixels"], data["pixels"])


def test_encoder_is_created_again_after_release():
    codec = make_frame_codec("zstd")
    frames = torch.randint(0, 4, (8, 84, 84), dtype=torch.uint8)
    first = codec.encode(frames)
    assert codec.memory_bytes() > 0
    codec.release_encoder()
    assert codec.memory_bytes() == 0
    assert codec.encode(frames) == first
    assert (codec.decode(first, 8, (84, 84)) == frames.numpy()).all()


def test_decoded_cache_is_bounded_by_the_payload():
    # near-constant frames: payloads far smaller than one decoded chunk
    data = make_transitions(
        num_envs=1,
        steps=300,
        frame_stack=4,
        channels=1,
        seed=2,
        size=84,
        levels=2,
        repeat_prob=0.9,
    )
    delta = DeltaFrameStorage(
        300, frame_stack=4, chunk_len=16, cache_bytes=64 * 2**20, num_threads=0
    )
    delta.set(torch.arange(300), data)
    delta.flush()
    pool = delta._indices["pixels"].pool
    _ = delta[torch.arange(300)]
    chunk_bytes = 16 * 84 * 84
    assert 0 < pool.cached_bytes() <= max(chunk_bytes, pool.payload_bytes())
    assert pool.cache_limit() < 64 * 2**20


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    writes=st.lists(st.tuples(st.integers(0, 47), st.integers(1, 12)), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_payload_accounting_matches_the_chunks(writes, seed):
    """The running payload total equals the sum of live payloads under any writes."""
    frame_stack = 2
    data = make_transitions(
        num_envs=2, steps=40, frame_stack=frame_stack, channels=1, seed=seed, levels=8
    )
    delta = DeltaFrameStorage(48, frame_stack=frame_stack, chunk_len=4, num_threads=0)
    row = 0
    for start, length in writes:
        slots = torch.arange(start, start + length) % 48
        batch = data[torch.arange(row, row + length) % len(data)]
        row += length
        delta.set(slots, batch)
        pool: ChunkedFramePool = delta._indices["pixels"].pool
        live = sum(len(p) for p in pool._payloads if p is not None)
        open_frames = sum(pool._lengths[s] for s in pool._open)
        assert pool.payload_bytes() == live + open_frames * pool.frame_numel
    delta.flush()
    live = sum(len(p) for p in pool._payloads if p is not None)
    assert pool.payload_bytes() == live


@settings(max_examples=20, deadline=None)
@given(
    codec=st.sampled_from(
        [("zstd", {}), ("zstd", {"frame_delta": True}), ("keyframe-sparse", {}), ("none", {})]
    ),
    num_frames=st.integers(1, 12),
    count=st.integers(1, 12),
    levels=st.sampled_from([2, 256]),
    seed=st.integers(0, 2**16),
)
def test_decode_prefix_is_the_head_of_decode(codec, num_frames, count, levels, seed):
    count = min(count, num_frames)
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, levels, (num_frames, 12, 10), generator=gen, dtype=torch.uint8)
    codec = make_frame_codec(codec[0], **codec[1])
    payload = codec.encode(frames)
    head = codec.decode_prefix(payload, num_frames, (12, 10), count)
    assert head.shape == (count, 12, 10)
    assert (head == frames[:count].numpy()).all()


def test_reads_needing_more_frames_than_cached_decode_again():
    pool = ChunkedFramePool((6, 6), codec=make_frame_codec("zstd"), chunk_len=8)
    slot = pool.open_chunk()
    frames = torch.randint(0, 256, (8, 6, 6), dtype=torch.uint8)
    ids = pool.append(slot, frames)
    pool.incref(ids)
    pool.seal(slot)
    (first,) = pool.gather([ids[:2]])  # decodes and caches the first two frames only
    assert torch.equal(first, frames[:2])
    assert pool.cached_bytes() == 2 * 36
    (everything,) = pool.gather([ids.flip(0)])
    assert torch.equal(everything, frames.flip(0))
    assert pool.cached_bytes() == 8 * 36
    (again,) = pool.gather([ids[3:5]])  # served by the cache
    assert torch.equal(again, frames[3:5])
