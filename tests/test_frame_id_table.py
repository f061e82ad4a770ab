"""The compact frame-id table returns exactly the ids written, under random episode layouts."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_delta_frame_storage import assert_same, fill_both, make_transitions
from torchrl.data import LazyTensorStorage

from torchrl_seer.data import DeltaFrameStorage
from torchrl_seer.data.checkpoint_checksums import seal_state
from torchrl_seer.data.frame_id_table import FrameIdTable


def stream_rows(episodes, frame_stack, chunk_len, chunk_order, multi_step):
    """Id rows ``[n, 2F]`` of episodes written by one stream into chunks taken in a given order.

    Frames get consecutive offsets within a chunk; a full chunk moves the stream to the next
    chunk of ``chunk_order`` (ids jump, as when the pool reuses a freed slot).
    """
    chunks = iter(chunk_order)
    slot, offset = next(chunks), 0

    def new_id():
        nonlocal slot, offset
        if offset == chunk_len:
            slot, offset = next(chunks), 0
        offset += 1
        return slot * chunk_len + offset - 1

    rows = []
    for length in episodes:
        frames = [new_id()] * frame_stack
        for _ in range(length + multi_step):
            frames.append(new_id())
        for t in range(length):
            obs = frames[t : t + frame_stack]
            nxt = frames[t + multi_step : t + multi_step + frame_stack]
            rows.append(obs + nxt)
    return torch.tensor(rows, dtype=torch.int64)


@settings(max_examples=40, deadline=None)
@given(
    frame_stack=st.integers(1, 5),
    chunk_len=st.integers(1, 16),
    episodes=st.lists(st.integers(1, 12), min_size=1, max_size=6),
    multi_step=st.sampled_from([1, 1, 3]),
    max_size=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_rows_are_exactly_the_ids_written(
    frame_stack, chunk_len, episodes, multi_step, max_size, seed
):
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(1000, generator=gen).tolist()
    ids = stream_rows(episodes, frame_stack, chunk_len, order, multi_step)
    # some rows reuse an earlier frame out of order (static screens, MultiStep ends)
    scrambled = torch.rand(ids.shape[0], generator=gen) < 0.2
    ids[scrambled, -1] = ids[scrambled, 0]
    table = FrameIdTable(max_size, frame_stack=frame_stack)
    reference = torch.full((max_size, 2 * frame_stack), -1, dtype=torch.int64)
    start = 0
    while start < ids.shape[0]:
        size = int(torch.randint(1, 8, (), generator=gen))
        rows = ids[start : start + size][-max_size:]
        slots = (torch.arange(rows.shape[0]) + start) % max_size
        if bool(torch.rand((), generator=gen) < 0.3):  # a set_at_-style rewrite elsewhere
            slots = torch.randperm(max_size, generator=gen)[: rows.shape[0]]
        table.assign(slots, rows)
        reference[slots] = rows
        start += size
        assert torch.equal(table.all_rows(), reference)
        expected_nbytes = max_size * 6 + table.exceptions.numel() * 4
        assert table.nbytes() == expected_nbytes
    written = (reference >= 0).all(1)
    # a row is compact exactly when its stacks are consecutive ids with leading padding
    stack = frame_stack
    obs, nxt = reference[:, :stack], reference[:, stack:]
    k = torch.arange(stack)
    obs_ok = (obs == torch.maximum(obs[:, :1], obs[:, -1:] - (stack - 1) + k)).all(1)
    next_ok = (nxt == torch.maximum(nxt[:, :1], nxt[:, -1:] - (stack - 1) + k)).all(1)
    step = nxt[:, -1] - obs[:, -1]
    compact = written & obs_ok & next_ok & (step >= -128) & (step <= 127)
    assert table.num_exceptions() == int((written & ~compact).sum())

    restored = FrameIdTable(max_size, frame_stack=frame_stack)
    restored.load_state_dict(table.state_dict())
    assert torch.equal(restored.all_rows(), reference)
    assert restored.nbytes() == table.nbytes()  # the same allocated exception table
    restored_state = restored.state_dict()
    for name, saved in table.state_dict().items():
        assert torch.equal(torch.as_tensor(restored_state[name]), torch.as_tensor(saved))
    verbatim = FrameIdTable(max_size, frame_stack=frame_stack)
    verbatim.load_verbatim(reference.to(torch.int32))
    assert torch.equal(verbatim.all_rows(), reference)

    keep = torch.randperm(max_size, generator=gen)[: max(1, max_size // 2)]
    dropped_ids = table.relocate(keep, max_size + 3)
    assert torch.equal(table.all_rows()[: keep.numel()], reference[keep])
    assert bool((table.all_rows()[keep.numel() :] == -1).all())
    dropped = torch.ones(max_size, dtype=torch.bool)
    dropped[keep] = False
    assert torch.equal(dropped_ids, reference[dropped].reshape(-1))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    frame_stack=st.integers(1, 4),
    num_envs=st.integers(1, 3),
    steps=st.integers(4, 30),
    done_prob=st.sampled_from([0.0, 0.1, 0.3]),
    chunk_len=st.integers(2, 12),
    batch_sizes=st.lists(st.integers(1, 9), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_storage_over_random_episode_layouts_is_exact_and_mostly_compact(
    frame_stack, num_envs, steps, done_prob, chunk_len, batch_sizes, seed
):
    data = make_transitions(
        num_envs=num_envs,
        steps=steps,
        frame_stack=frame_stack,
        channels=1,
        seed=seed,
        done_prob=done_prob,
        repeat_prob=0.0,
    )
    size = len(data)
    delta = DeltaFrameStorage(size, frame_stack=frame_stack, chunk_len=chunk_len, num_threads=0)
    fill_both(data, delta, LazyTensorStorage(size), batch_sizes)
    table = delta._indices["pixels"].table
    # distinct random frames: only rows whose frames straddle two chunks need verbatim ids
    # (at most F rows per chunk change; a stream stores at most 2 frames per step)
    crossings_per_stream = 2 * steps // chunk_len + 1
    assert table.num_exceptions() <= frame_stack * num_envs * crossings_per_stream


def test_single_stream_in_one_chunk_stores_no_exception():
    data = make_transitions(
        num_envs=1, steps=40, frame_stack=4, channels=1, seed=3, done_prob=0.1, repeat_prob=0.0
    )
    delta = DeltaFrameStorage(40, frame_stack=4, chunk_len=256, num_threads=0)
    fill_both(data, delta, LazyTensorStorage(40), [7])
    table = delta._indices["pixels"].table
    assert table.num_exceptions() == 0
    assert table.nbytes() == 40 * 6


def test_checkpoint_of_format_2_is_converted_exactly():
    data = make_transitions(num_envs=2, steps=20, frame_stack=3, channels=1, seed=4)
    delta = DeltaFrameStorage(64, frame_stack=3, chunk_len=8, num_threads=0)
    _, lazy = fill_both(data, delta, LazyTensorStorage(64), [5, 3])
    state = delta.state_dict()
    del state["checksums"]
    state["config"]["format_version"] = 2
    for entry in state["pixels"]:
        table = FrameIdTable(64, frame_stack=3)
        table.load_state_dict(entry["index"]["table"])
        entry["index"]["table"] = table.all_rows().to(torch.int32)  # the format-2 layout
    restored = DeltaFrameStorage(64, frame_stack=3, chunk_len=8, num_threads=0)
    restored.load_state_dict(seal_state(state))
    assert_same(restored[:], lazy[:])
    for storage in (restored, lazy.storage):  # and keeps working
        storage.set(torch.arange(40, 44), data[:4])
    assert_same(restored[:], lazy.storage[:])
