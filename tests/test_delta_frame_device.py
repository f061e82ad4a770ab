"""DeltaFrameStorage(device=...): reads on the device, through the device cache of chunks."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from test_delta_frame_storage import assert_same, make_transitions
from torchrl.data import (
    LazyTensorStorage,
    PrioritizedSampler,
    RandomSampler,
    ReplayBuffer,
    SliceSampler,
    TensorDictReplayBuffer,
)

from torchrl_seer.data import DeltaFrameStorage
from torchrl_seer.data.device_chunk_cache import DeviceChunkCache

FRAME_STACK = 4
FRAME_BYTES = 8 * 8  # one-channel 8x8 frames of make_transitions
CHUNK_LEN = 4
CHUNK_BYTES = CHUNK_LEN * FRAME_BYTES


def transitions(steps=40, *, seed=0):
    return make_transitions(
        num_envs=2,
        steps=steps // 2,
        frame_stack=FRAME_STACK,
        channels=1,
        seed=seed,
        order="env-major",
    )


def storages(max_size=64, *, device="cpu", **options):
    """A DeltaFrameStorage on ``device`` and a LazyTensorStorage there, both empty."""
    options.setdefault("num_threads", 0)
    delta = DeltaFrameStorage(
        max_size, frame_stack=FRAME_STACK, chunk_len=CHUNK_LEN, device=device, **options
    )
    return delta, LazyTensorStorage(max_size, device=device)


def filled(max_size=64, steps=40, *, device="cpu", **options):
    delta, lazy = storages(max_size, device=device, **options)
    data = transitions(steps)
    ReplayBuffer(storage=delta).extend(data)
    ReplayBuffer(storage=lazy).extend(data)
    return delta, lazy


def count_decodes(storage):
    """Wraps the codec's prefix decoding; returns the list of chunk lengths it decodes."""
    calls = []
    codec = storage.codec
    decode_prefix = codec.decode_prefix

    def counting(payload, length, frame_shape, count):
        calls.append(count)
        return decode_prefix(payload, length, frame_shape, count)

    codec.decode_prefix = counting
    return calls


def test_repeated_reads_are_served_from_the_device_cache():
    delta, lazy = filled(device_cache_bytes=2**20, cache_bytes=0)
    delta.flush()  # every chunk sealed: reads decode
    decodes = count_decodes(delta)
    index = torch.tensor([3, 17, 25, 38, 3])
    assert_same(delta[index], lazy[index])
    first = len(decodes)
    assert first > 0
    assert_same(delta[index], lazy[index])
    assert len(decodes) == first  # nothing decoded again
    assert delta.device_cached_bytes() > 0


def test_without_device_cache_reads_decode_again():
    delta, lazy = filled(device_cache_bytes=0, cache_bytes=0)
    delta.flush()
    decodes = count_decodes(delta)
    index = torch.tensor([3, 17, 25, 38])
    assert_same(delta[index], lazy[index])
    first = len(decodes)
    assert_same(delta[index], lazy[index])
    assert len(decodes) == 2 * first
    assert delta.device_cached_bytes() == 0


@pytest.mark.parametrize("chunks", [1, 3])
def test_reads_touching_more_chunks_than_the_cache_holds_are_exact(chunks):
    delta, lazy = filled(device_cache_bytes=chunks * CHUNK_BYTES, cache_bytes=0)
    delta.flush()
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        index = torch.randint(0, 40, (16,), generator=gen)
        assert_same(delta[index], lazy[index])
        assert delta.device_cached_bytes() <= chunks * CHUNK_BYTES
    assert_same(delta[:], lazy[:])


def test_reads_larger_than_the_cache_evict_nothing():
    delta, lazy = filled(device_cache_bytes=3 * CHUNK_BYTES, cache_bytes=0)
    delta.flush()
    decodes = count_decodes(delta)
    recent = torch.tensor([38, 39])  # the newest rows: a few chunks
    assert_same(delta[recent], lazy[recent])
    first = len(decodes)
    assert_same(delta[:], lazy[:])  # touches more chunks than the cache holds
    after_full_read = len(decodes)
    assert_same(delta[recent], lazy[recent])
    assert len(decodes) == after_full_read  # the chunks of the recent rows are still cached
    assert 0 < first < after_full_read


def test_device_cache_is_counted_and_not_checkpointed():
    delta, _ = filled(device_cache_bytes=2**20, cache_bytes=0)
    delta[:]  # creates the decompression context, which bytes() counts too
    delta.clear_cache()
    before_state = delta.state_dict()["checksums"]["state"]
    before_bytes = delta.bytes()
    delta[:]
    cached = delta.device_cached_bytes()
    assert cached > 0
    assert delta.bytes() == before_bytes + cached
    assert delta.state_dict()["checksums"]["state"] == before_state
    delta.clear_cache()
    assert delta.device_cached_bytes() == 0
    assert delta.bytes() == before_bytes


def test_freed_chunks_leave_the_device_cache():
    # a small buffer overwritten many times: chunk slots are freed and reused
    delta, lazy = storages(16, device_cache_bytes=2**20, cache_bytes=0, max_streams=2)
    rb, rb_lazy = ReplayBuffer(storage=delta), ReplayBuffer(storage=lazy)
    data = transitions(200, seed=3)
    for start in range(0, 200, 10):
        rb.extend(data[start : start + 10])
        rb_lazy.extend(data[start : start + 10])
        assert_same(delta[:], lazy[:])
        pool = delta._indices["pixels"].pool
        assert pool._device_cache.num_chunks() <= pool.num_chunks()


@pytest.mark.parametrize(
    "sampler",
    [
        RandomSampler,
        lambda: PrioritizedSampler(64, alpha=0.7, beta=0.5),
        lambda: SliceSampler(slice_len=4, traj_key=("collector", "traj_ids")),
    ],
)
def test_samples_live_on_the_storage_device(sampler):
    delta, _ = filled(device_cache_bytes=2**20)
    rb = TensorDictReplayBuffer(storage=delta, sampler=sampler(), batch_size=8)
    sample = rb.sample()
    for key, value in sample.items(True, True):
        assert value.device == delta.device, key


def test_pickled_copy_starts_with_an_empty_device_cache():
    delta, lazy = filled(device_cache_bytes=2**20)
    delta[:]
    for clone in (copy.deepcopy(delta), pickle.loads(pickle.dumps(delta))):
        assert clone.device_cached_bytes() == 0
        assert_same(clone[:], lazy[:])
        assert clone.device_cached_bytes() > 0
    assert_same(delta[:], lazy[:])


def test_bad_device_arguments_are_refused():
    with pytest.raises(ValueError, match="rather than 'auto'"):
        DeltaFrameStorage(10, device="auto")
    with pytest.raises(ValueError, match="device_cache_bytes must be >= 0"):
        DeltaFrameStorage(10, device_cache_bytes=-1)


def test_device_chunk_cache_evicts_the_least_recently_used_chunk():
    cache = DeviceChunkCache(2, 1, device="cpu", capacity_bytes=3 * 2)
    frames = torch.arange(3 * 2, dtype=torch.uint8).view(3, 2, 1)
    assert cache.store([10, 11, 12], [2, 2, 2], frames) == [0, 1, 2]
    assert cache.lookup([10], [2]) == [0]  # 11 is now the least recently used
    assert cache.store([13], [1], torch.full((1, 1, 1), 9, dtype=torch.uint8)) == [1]
    assert cache.lookup([11, 12, 13], [1, 2, 1]) == [-1, 2, 1]
    assert cache.lookup([13], [2]) == [-1]  # chunk 13 holds one frame only
    assert cache.gather(torch.tensor([0, 1, 2, 5])).flatten().tolist() == [0, 1, 9, 5]
    cache.discard(12)
    assert cache.lookup([12], [1]) == [-1]
    assert cache.nbytes() == 3 * 2


# ------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("device_cache_bytes", [0, 3 * CHUNK_BYTES, 2**20])
def test_cuda_storage_matches_lazy_tensor_storage_on_cuda(tmp_path, device_cache_bytes):
    device = torch.device("cuda:0")
    delta, lazy = storages(32, device="cuda", device_cache_bytes=device_cache_bytes, max_streams=2)
    samplers = {
        "random": RandomSampler,
        "prioritized": lambda: PrioritizedSampler(32, alpha=0.7, beta=0.5),
        "slice": lambda: SliceSampler(slice_len=4, traj_key=("collector", "traj_ids")),
    }
    data = transitions(80, seed=5)
    rb, rb_lazy = ReplayBuffer(storage=delta), ReplayBuffer(storage=lazy)
    for start in range(0, 80, 10):  # wraps around; half the batches come from the GPU
        batch = data[start : start + 10]
        batch = batch.to(device) if start % 20 else batch
        rb.extend(batch)
        rb_lazy.extend(batch)
        assert_same(delta[:], lazy[:])
    assert all(v.device == device for v in delta[:].values(True, True))
    index = torch.randint(0, 32, (6, 5), device=device)
    assert_same(delta[index], lazy[index])
    for name, sampler in samplers.items():
        sampled = TensorDictReplayBuffer(storage=delta, sampler=sampler(), batch_size=8)
        sample, info = sampled.sample(return_info=True)
        index = info["index"][0] if isinstance(info["index"], tuple) else info["index"]
        expected = lazy[index]
        # keys that samplers write into a sample rather than read from the storage
        written = {"index", "priority_weight", ("collector", "mask"), ("next", "truncated")}
        written |= {("next", "done")} if name == "slice" else set()
        stored = [k for k in expected.keys(True, True) if k not in written]
        assert_same(sample.select(*stored), expected.select(*stored))
        assert all(v.device == device for v in sample.values(True, True)), name
    prefetched = TensorDictReplayBuffer(storage=delta, batch_size=8, prefetch=2)
    for _ in range(3):
        sample = prefetched.sample()
        assert_same(sample.exclude("index"), lazy[sample["index"]])
    # checkpoints restore onto the loading storage's device
    rb.dumps(tmp_path / "rb")
    for target in ("cuda", "cpu"):
        restored = ReplayBuffer(storage=storages(32, device=target)[0])
        restored.loads(tmp_path / "rb")
        assert_same(restored.storage[:].cpu(), lazy[:].cpu())
        assert all(v.device.type == target for v in restored.storage[:].values(True, True))
    from_state = storages(32, device="cpu")[0]
    from_state.load_state_dict(delta.state_dict())
    assert_same(from_state[:], lazy[:].cpu())
