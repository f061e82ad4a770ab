"""DeltaFrameStorage returns exactly what LazyTensorStorage returns, under every usage."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict
from torchrl.data import (
    HERReplayBuffer,
    LazyTensorStorage,
    PrioritizedSampler,
    PrioritizedSliceSampler,
    RandomSampler,
    ReplayBuffer,
    SamplerWithoutReplacement,
    SliceSampler,
    TensorDictPrioritizedReplayBuffer,
    TensorDictReplayBuffer,
)

from torchrl_seer.data import DeltaFrameStorage
from torchrl_seer.data.frame_stack_index import FrameStackIndex


def make_transitions(
    *,
    num_envs: int,
    steps: int,
    frame_stack: int,
    channels: int,
    seed: int,
    done_prob: float = 0.08,
    repeat_prob: float = 0.15,
    levels: int = 256,
    size: int = 8,
    order: str = "step-major",
):
    """Transitions as a CatFrames env emits them: padded starts, true final next frames.

    Frames repeat on purpose (``repeat_prob``, few ``levels``) so that equal frames of
    different trajectories and static screens exercise the equality proofs.
    """
    gen = torch.Generator().manual_seed(seed)

    def frame():
        return torch.randint(0, levels, (channels, size, size), generator=gen, dtype=torch.uint8)

    rows = []
    for env in range(num_envs):
        stack = [frame()] * frame_stack
        episode = 0
        for t in range(steps):
            if torch.rand((), generator=gen) < repeat_prob:
                new = stack[-1].clone()
            else:
                new = frame()
            done = bool(torch.rand((), generator=gen) < done_prob)
            terminated = done and bool(torch.rand((), generator=gen) < 0.5)
            td = TensorDict(
                {
                    "pixels": torch.cat(stack),
                    "action": torch.randint(0, 4, (), generator=gen),
                    "observation": torch.randn(3, generator=gen),
                    ("collector", "traj_ids"): torch.tensor(env * 10_000 + episode),
                    "next": {
                        "pixels": torch.cat([*stack[1:], new]),
                        "reward": torch.randn(1, generator=gen),
                        "done": torch.tensor([done]),
                        "terminated": torch.tensor([terminated]),
                        "truncated": torch.tensor([done and not terminated]),
                    },
                },
                batch_size=[],
            )
            rows.append((t, env, td))
            if done:
                stack = [frame()] * frame_stack
                episode += 1
            else:
                stack = [*stack[1:], new]
    if order == "step-major":
        rows.sort(key=lambda r: (r[0], r[1]))
    elif order == "shuffled":
        perm = torch.randperm(len(rows), generator=gen).tolist()
        rows = [rows[i] for i in perm]
    return torch.stack([r[2] for r in rows])


def assert_same(delta, lazy):
    assert delta.batch_size == lazy.batch_size
    assert set(delta.keys(True, True)) == set(lazy.keys(True, True))
    for key in lazy.keys(True, True):
        a, b = delta.get(key), lazy.get(key)
        assert a.dtype == b.dtype and a.shape == b.shape, key
        assert torch.equal(a, b), key


def fill_both(data, delta_storage, lazy_storage, batch_sizes, *, check_every=True):
    rb_delta = ReplayBuffer(storage=delta_storage)
    rb_lazy = ReplayBuffer(storage=lazy_storage)
    start, turn = 0, 0
    while start < len(data):
        size = batch_sizes[turn % len(batch_sizes)]
        turn += 1
        if size == 1:
            rb_delta.add(data[start])
            rb_lazy.add(data[start])
        else:
            rb_delta.extend(data[start : start + size])
            rb_lazy.extend(data[start : start + size])
        start += size
        if check_every:
            assert len(delta_storage) == len(lazy_storage)
            assert_same(delta_storage[:], lazy_storage[:])
    return rb_delta, rb_lazy


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    frame_stack=st.integers(1, 4),
    channels=st.sampled_from([1, 3]),
    num_envs=st.integers(1, 3),
    steps=st.integers(5, 40),
    max_size=st.integers(7, 60),
    order=st.sampled_from(["step-major", "env-major", "shuffled"]),
    batch_sizes=st.lists(st.integers(1, 25), min_size=1, max_size=4),
    codec=st.sampled_from(["zstd", "zstd-delta", "keyframe-sparse", "none"]),
    chunk_len=st.integers(1, 9),
    max_streams=st.integers(1, 5),
    levels=st.sampled_from([2, 256]),
    device_cache_bytes=st.sampled_from([0, 400, 2**20]),  # off, a few chunks, all chunks
    seed=st.integers(0, 2**16),
)
def test_matches_lazy_tensor_storage(
    frame_stack,
    channels,
    num_envs,
    steps,
    max_size,
    order,
    batch_sizes,
    codec,
    chunk_len,
    max_streams,
    levels,
    device_cache_bytes,
    seed,
):
    data = make_transitions(
        num_envs=num_envs,
        steps=steps,
        frame_stack=frame_stack,
        channels=channels,
        seed=seed,
        levels=levels,
        order=order,
    )
    delta = DeltaFrameStorage(
        max_size,
        frame_stack=frame_stack,
        codec="zstd" if codec == "zstd-delta" else codec,
        frame_delta=codec == "zstd-delta",
        chunk_len=chunk_len,
        max_streams=max_streams,
        cache_bytes=2_000,
        num_threads=int(seed % 2) * 2,
        device="cpu",
        device_cache_bytes=device_cache_bytes,
    )
    lazy = LazyTensorStorage(max_size, device="cpu")
    # LazyTensorStorage is nondeterministic for batches larger than itself (duplicate slots)
    fill_both(data, delta, lazy, [min(size, max_size) for size in batch_sizes])
    gen = torch.Generator().manual_seed(seed)
    index = torch.randint(-len(lazy), len(lazy), (4, 5), generator=gen)
    assert_same(delta[index], lazy[index])
    assert_same(delta[int(index[0, 0])], lazy[int(index[0, 0])])
    assert_same(delta[1:5], lazy[1:5])
    # no chunk is held beyond those of referenced frames and the open streams' chunks; a
    # stream's last stack (the frames its next write continues from) is referenced too
    for frame_index in delta._indices.values():
        live = frame_index.pool.num_chunks()
        tails = [s.tail_ids.long() for s in frame_index._streams if s.tail_ids is not None]
        ids = frame_index.table.all_rows()
        frame_ids = torch.cat([ids[ids >= 0], *tails])
        referenced = torch.unique(frame_ids // chunk_len)
        assert live <= referenced.numel() + max_streams


def test_batch_larger_than_storage_keeps_last_rows():
    data = make_transitions(num_envs=2, steps=15, frame_stack=3, channels=1, seed=9)
    delta = DeltaFrameStorage(8, frame_stack=3, chunk_len=4)
    rb = ReplayBuffer(storage=delta)
    rb.extend(data[:5])
    rb.extend(data[5:])
    cursor = 30 % 8
    order = torch.cat([torch.arange(cursor, 8), torch.arange(cursor)])
    assert_same(delta[order], data[-8:])


@pytest.mark.parametrize("stack_dim,shape", [(-1, (8, 8, 6)), (-3, (6, 8, 8)), (-2, (8, 6, 8))])
def test_stack_dim_layouts(stack_dim, shape):
    gen = torch.Generator().manual_seed(0)
    frames = torch.randint(0, 255, (12, *shape), generator=gen, dtype=torch.uint8)
    data = TensorDict({"pixels": frames[:-1], "next": {"pixels": frames[1:]}}, batch_size=[11])
    delta = DeltaFrameStorage(20, frame_stack=2, stack_dim=stack_dim)
    lazy = LazyTensorStorage(20)
    fill_both(data, delta, lazy, [4])


def test_each_frame_stored_once():
    # one env, frames all distinct: stored frames = steps + one reset frame per episode
    data = make_transitions(
        num_envs=1, steps=200, frame_stack=4, channels=1, seed=3, repeat_prob=0.0
    )
    delta = DeltaFrameStorage(1000, frame_stack=4, chunk_len=16)
    lazy = LazyTensorStorage(1000)
    fill_both(data, delta, lazy, [17, 1, 64], check_every=False)
    assert_same(delta[:], lazy[:])
    episodes = 1 + int(data["next", "done"][:-1].sum())
    assert delta.num_frames() == 200 + episodes
    # what grows with the data (the zstd contexts are a constant ~100 kB here)
    assert delta.bytes() - delta.codec.memory_bytes() < lazy._storage.bytes() / 4


def test_interleaved_envs_deduplicate():
    data = make_transitions(
        num_envs=4, steps=60, frame_stack=3, channels=3, seed=5, repeat_prob=0.0
    )
    delta = DeltaFrameStorage(1000, frame_stack=3, chunk_len=8)
    lazy = LazyTensorStorage(1000)
    fill_both(data, delta, lazy, [16, 5, 1], check_every=False)
    assert_same(delta[:], lazy[:])
    episodes = 4 + int(data["next", "done"].sum()) - int(data["next", "done"][-4:].sum())
    assert delta.num_frames() <= 240 + episodes


def test_terminal_next_observation_is_kept():
    data = make_transitions(num_envs=1, steps=50, frame_stack=2, channels=1, seed=8, done_prob=0.3)
    delta = DeltaFrameStorage(100, frame_stack=2)
    delta.set(torch.arange(50), data)
    done = data["next", "done"].squeeze(-1)
    assert done.any()
    assert torch.equal(
        delta[done.nonzero().squeeze(-1)]["next", "pixels"], data["next", "pixels"][done]
    )


def test_eviction_frees_chunks():
    data = make_transitions(num_envs=2, steps=400, frame_stack=4, channels=1, seed=1)
    delta = DeltaFrameStorage(32, frame_stack=4, chunk_len=4, max_streams=4)
    lazy = LazyTensorStorage(32)
    fill_both(data, delta, lazy, [7, 1, 13], check_every=False)
    assert_same(delta[:], lazy[:])
    pool = delta._indices["pixels"].pool
    # 32 transitions need at most ~33 frames per env stream -> a bounded number of chunks
    assert pool.num_chunks() <= 2 * (32 + 2) // 4 + 4 + 4
    assert int(pool._refcount.min()) >= 0


SAMPLERS = {
    "random": lambda: RandomSampler(),
    "without-replacement": lambda: SamplerWithoutReplacement(),
    "prioritized": lambda: PrioritizedSampler(64, alpha=0.7, beta=0.5),
    "slice": lambda: SliceSampler(slice_len=4, traj_key=("collector", "traj_ids")),
    "slice-end-key": lambda: SliceSampler(slice_len=4, end_key=("next", "done")),
}


def make_buffer(kind, sampler, storage):
    if kind == "rb":
        return ReplayBuffer(storage=storage, sampler=SAMPLERS[sampler](), batch_size=16)
    if kind == "tdrb":
        return TensorDictReplayBuffer(storage=storage, sampler=SAMPLERS[sampler](), batch_size=16)
    return TensorDictPrioritizedReplayBuffer(
        storage=storage, alpha=0.7, beta=0.5, batch_size=16, priority_key="td_error"
    )


# TensorDictPrioritizedReplayBuffer always brings its own PrioritizedSampler
BUFFER_SAMPLERS = [(kind, sampler) for kind in ("rb", "tdrb") for sampler in sorted(SAMPLERS)]
BUFFER_SAMPLERS.append(("tdprb", "prioritized"))


# device cache off, smaller than a batch's chunks (3 of 512 bytes), holding every chunk
DEVICE_CACHES = [0, 1536, 2**20]


@pytest.mark.parametrize("device_cache_bytes", DEVICE_CACHES)
@pytest.mark.parametrize("kind,sampler", BUFFER_SAMPLERS)
def test_samplers_and_buffers(kind, sampler, device_cache_bytes):
    data = make_transitions(
        num_envs=2, steps=40, frame_stack=4, channels=1, seed=2, order="env-major"
    )
    delta = DeltaFrameStorage(
        64, frame_stack=4, chunk_len=8, device="cpu", device_cache_bytes=device_cache_bytes
    )
    rb_delta = make_buffer(kind, sampler, delta)
    rb_lazy = make_buffer(kind, sampler, LazyTensorStorage(64, device="cpu"))
    for start in range(0, 80, 20):
        rb_delta.extend(data[start : start + 20].clone())
        rb_lazy.extend(data[start : start + 20].clone())
    # keys that samplers and buffers write into a sample rather than read from the storage
    written = ["index", "priority_weight", ("collector", "mask"), ("next", "truncated")]
    written += [("next", "done")] if sampler.startswith("slice") else []
    for _ in range(3):
        sample, info = rb_delta.sample(return_info=True)
        index = info["index"][0] if isinstance(info["index"], tuple) else info["index"]
        expected = rb_lazy.storage[index]
        if not sampler.startswith("slice"):
            assert_same(sample.exclude(*written), expected.exclude(*written))
        else:
            stored = [k for k in expected.keys(True, True) if k not in written]
            assert_same(sample.select(*stored), expected.select(*stored))
        if kind == "tdprb":
            sample.set("td_error", torch.rand(16))
            rb_delta.update_tensordict_priority(sample)


def with_step_counts(data):
    """``data`` with a ``step_count`` key: each row's position within its trajectory."""
    traj_ids = data["collector", "traj_ids"].tolist()
    seen: dict[int, int] = {}
    steps = []
    for traj in traj_ids:
        steps.append(seen.get(traj, 0))
        seen[traj] = steps[-1] + 1
    return data.set("step_count", torch.tensor(steps))


SLICE_SAMPLERS = {
    "traj-key": lambda: SliceSampler(slice_len=4, traj_key=("collector", "traj_ids")),
    "end-key": lambda: SliceSampler(slice_len=4, end_key=("next", "done")),
    "fragmented": lambda: SliceSampler(
        slice_len=4, traj_key=("collector", "traj_ids"), step_key="step_count", fragmented=True
    ),
    "prioritized": lambda: PrioritizedSliceSampler(
        64, slice_len=4, traj_key=("collector", "traj_ids"), alpha=0.7, beta=0.5
    ),
}


@pytest.fixture
def decoded_rows(monkeypatch):
    """The number of rows each frame read of every DeltaFrameStorage decodes, in order."""
    decoded = []
    read = FrameStackIndex.read

    def counting_read(self, positions):
        decoded.append(positions.numel())
        return read(self, positions)

    monkeypatch.setattr(FrameStackIndex, "read", counting_read)
    return decoded


@pytest.mark.parametrize("sampler", sorted(SLICE_SAMPLERS))
def test_slice_samplers_decode_only_the_rows_a_sample_returns(sampler, decoded_rows):
    data = make_transitions(
        num_envs=2, steps=30, frame_stack=4, channels=1, seed=5, order="env-major"
    )
    storage = DeltaFrameStorage(64, frame_stack=4, chunk_len=8)
    rb = ReplayBuffer(storage=storage, sampler=SLICE_SAMPLERS[sampler](), batch_size=8)
    rb.extend(with_step_counts(data))
    # finding trajectories and reading the sampled rows' done flags decode no frame
    (index,), _ = rb.sampler.sample(storage, 8)
    assert index.shape == (8,) and decoded_rows == []
    sample = rb.sample()
    assert decoded_rows == [8] and sample["pixels"].shape == (8, 4, 8, 8)
    decoded_rows.clear()
    assert storage[:]["pixels"].shape == (60, 4, 8, 8)  # an ordinary full read decodes
    assert decoded_rows == [60]


def test_her_finds_episode_ends_without_decoding_frames(decoded_rows):
    data = make_transitions(num_envs=1, steps=60, frame_stack=4, channels=1, seed=6)
    goals = torch.rand(60, 2)
    data.update({"desired_goal": goals, ("next", "achieved_goal"): goals.roll(1, 0)})
    data.set("achieved_goal", goals)
    rb = HERReplayBuffer(
        reward_fn=lambda td: (td["desired_goal"] - td["achieved_goal"]).norm(dim=-1, keepdim=True),
        storage=DeltaFrameStorage(64, frame_stack=4, chunk_len=8),
        batch_size=8,
    )
    rb.extend(data)
    sample = rb.sample()
    # one row for HER's key check, the 8 sampled rows, the relabelled goals' sources (at most
    # 8); its search for episode ends reads the done flags of all 60 rows and decodes none
    assert sample["pixels"].shape == (8, 4, 8, 8)
    assert decoded_rows[:2] == [1, 8] and sum(decoded_rows) <= 17


@pytest.mark.parametrize("device_cache_bytes", DEVICE_CACHES)
def test_prefetch(device_cache_bytes):
    data = make_transitions(num_envs=1, steps=60, frame_stack=2, channels=3, seed=4)
    delta = DeltaFrameStorage(64, frame_stack=2, chunk_len=8, device_cache_bytes=device_cache_bytes)
    rb = TensorDictReplayBuffer(storage=delta, batch_size=8, prefetch=3)
    rb.extend(data)
    lazy = LazyTensorStorage(64)
    lazy.set(torch.arange(60), data)
    for _ in range(6):
        sample = rb.sample()
        assert_same(sample.exclude("index"), lazy[sample["index"]])
