"""DeltaFrameStorage honours TorchRL's storage contract as LazyTensorStorage does, or refuses."""

from __future__ import annotations

import copy
import io
import multiprocessing
import pickle
import tempfile
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest
import torch
import torch.multiprocessing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict, tensorclass
from test_delta_frame_storage import assert_same, make_transitions
from torchrl.data import (
    LazyTensorStorage,
    ReplayBuffer,
    SliceSampler,
    TensorDictReplayBuffer,
    TensorDictRoundRobinWriter,
)
from torchrl.data.postprocs import MultiStep

from torchrl_seer.data import CheckpointCorruptedError, DeltaFrameStorage, QuantizedStorage
from torchrl_seer.data.checkpoint_checksums import CHECKSUM_MANIFEST

FRAME_STACK = 4


def frames(rows, *, seed=0, num_envs=2, done_prob=0.1, **options):
    """``rows`` transitions of ``num_envs`` interleaved episodes, 4x16x16 uint8 stacks."""
    data = make_transitions(
        num_envs=num_envs,
        steps=-(-rows // num_envs),
        frame_stack=FRAME_STACK,
        channels=1,
        size=16,
        seed=seed,
        done_prob=done_prob,
        **options,
    )
    return data[:rows]


def delta_storage(max_size=16, **kwargs):
    kwargs.setdefault("chunk_len", 4)
    return DeltaFrameStorage(max_size, frame_stack=FRAME_STACK, num_threads=0, **kwargs)


def filled(max_size=16, steps=10, *, seed=0, **kwargs):
    """A DeltaFrameStorage and a LazyTensorStorage holding the same transitions."""
    data = frames(steps, seed=seed)
    delta, lazy = delta_storage(max_size, **kwargs), LazyTensorStorage(max_size)
    rb, rb_lazy = ReplayBuffer(storage=delta), ReplayBuffer(storage=lazy)
    rb.extend(data)
    rb_lazy.extend(data)
    return rb, rb_lazy


def fingerprint(storage):
    """Every byte the storage holds (raw keys, index tables, chunks) and its length/cursor."""
    return storage.state_dict()["checksums"]["state"]


# ------------------------------------------------------------ item 1: processes
def _child(rb):  # pragma: no cover - never runs: pickling is refused first
    rb.extend(frames(2))


def test_handing_to_a_spawned_process_is_refused():
    rb, _ = filled()
    process = multiprocessing.get_context("spawn").Process(target=_child, args=(rb,))
    with pytest.raises(RuntimeError, match="cannot be shared with another process"):
        process.start()


@pytest.mark.parametrize("pickler", ["pickle", "torch-forking-pickler", "deepcopy"])
def test_pickled_copy_is_independent(pickler):
    rb, rb_lazy = filled()
    if pickler == "pickle":
        clone = pickle.loads(pickle.dumps(rb.storage))
    elif pickler == "deepcopy":
        clone = copy.deepcopy(rb.storage)
    else:  # what torch.multiprocessing queues use: tensors travel in shared memory
        buffer = io.BytesIO()
        ForkingPickler(buffer).dump(rb.storage)
        clone = pickle.loads(buffer.getvalue())
    before = fingerprint(rb.storage)
    assert_same(clone[:], rb_lazy.storage[:])
    ReplayBuffer(storage=clone).extend(frames(12, seed=5))
    assert fingerprint(rb.storage) == before
    assert_same(rb.storage[:], rb_lazy.storage[:])


# ------------------------------------------------------------- item 2: copies
def test_state_dict_is_a_copy():
    rb, _ = filled()
    state = rb.storage.state_dict()
    expected = rb.storage[:].clone()
    rb.extend(frames(12, seed=3))  # overwrites raw keys and frames in place
    restored = delta_storage()
    restored.load_state_dict(state)
    assert_same(restored[:], expected)
    # nor does the restored storage alias the state dict
    state["other"]["action"].fill_(7)
    assert_same(restored[:], expected)


def test_snapshot_restored_in_place_restores_pixels_and_raw_keys():
    rb, rb_lazy = filled()
    snapshot = rb.storage.state_dict()
    expected = rb.storage[:].clone()
    rb.extend(frames(14, seed=4))
    rb.storage.load_state_dict(snapshot)
    assert_same(rb.storage[:], expected)
    assert rb.storage._last_cursor_index == rb_lazy.storage._last_cursor_index


@tensorclass
class Transition:
    pixels: torch.Tensor
    action: torch.Tensor
    next: TensorDict


def as_tensorclass(data):
    return Transition(
        pixels=data["pixels"], action=data["action"], next=data["next"], batch_size=data.shape
    )


def test_tensorclass_comes_back_as_written():
    data = frames(6)
    delta, lazy = delta_storage(), LazyTensorStorage(16)
    for storage in (delta, lazy):
        ReplayBuffer(storage=storage).extend(as_tensorclass(data))
    assert type(delta[:]) is type(lazy[:]) is Transition
    assert type(delta[2]) is Transition
    assert_same(delta[:].to_tensordict(), lazy[:].to_tensordict())
    snapshot = delta.state_dict()
    ReplayBuffer(storage=delta).extend(as_tensorclass(frames(6, seed=1)))
    delta.load_state_dict(snapshot)  # in place: the storage keeps its tensorclass
    assert type(delta[:]) is Transition
    assert_same(delta[:].to_tensordict(), lazy[:].to_tensordict())


# -------------------------------------------------------- item 4: validation
def float64_reward(data):
    data = data.clone()
    data["next", "reward"] = data["next", "reward"].double()
    return data


def float_action(data):
    data = data.clone()
    data["action"] = data["action"].float()
    return data


@pytest.mark.parametrize("spoil", [float64_reward, float_action])
def test_refused_extend_leaves_storage_bit_identical(spoil):
    rb, rb_lazy = filled()
    before = fingerprint(rb.storage)
    bad = spoil(frames(3, seed=9))
    with pytest.raises(RuntimeError, match="dtypes match"):  # LazyTensorStorage refuses it too
        copy.deepcopy(rb_lazy).extend(bad)
    with pytest.raises(ValueError, match=r"expected '?\(?'?\w+.*of dtype torch\.\w+"):
        rb.extend(bad)
    assert fingerprint(rb.storage) == before
    assert_same(rb.storage[:], rb_lazy.storage[:])


@pytest.mark.parametrize("spoil", [float64_reward, float_action])
def test_slice_write_casts_like_lazy_tensor_storage(spoil):
    rb, rb_lazy = filled()
    data = spoil(frames(3, seed=9))
    rb[2:5] = data
    rb_lazy[2:5] = data
    assert_same(rb.storage[:], rb_lazy.storage[:])


def test_first_write_must_be_uint8_frames_of_whole_stacks():
    data = frames(3)
    bad_stack = data.clone()
    bad_stack["pixels"] = bad_stack["pixels"][:, :3]
    bad_stack["next", "pixels"] = bad_stack["next", "pixels"][:, :3]
    with pytest.raises(ValueError, match="multiple of frame_stack=4"):
        delta_storage().set(torch.arange(3), bad_stack)
    as_float = data.clone()
    as_float["pixels"] = as_float["pixels"].float()
    with pytest.raises(TypeError, match="uint8 frames only"):
        delta_storage().set(torch.arange(3), as_float)


# ---------------------------------------------------- item 5: in-place updates
def pixel_updates():
    zeros = torch.zeros(2, FRAME_STACK, 16, 16, dtype=torch.uint8)
    return {
        "set_at_ pixels": lambda rb: rb.set_at_("pixels", zeros, torch.tensor([1, 3])),
        "set_at_ next pixels": lambda rb: rb.set_at_(("next", "pixels"), zeros, [0, 2]),
        "set_ pixels": lambda rb: rb.set_("pixels", torch.ones(10, FRAME_STACK, 16, 16)),
        "update_": lambda rb: rb.update_(frames(10, seed=8)),
        "update_ next only": lambda rb: rb.update_(
            {"next": {"pixels": torch.full((10, FRAME_STACK, 16, 16), 3, dtype=torch.uint8)}}
        ),
        "set_at_ action": lambda rb: rb.set_at_("action", torch.tensor([3]), [4]),
    }


@pytest.mark.parametrize("update", sorted(pixel_updates()))
def test_in_place_updates_match_lazy_tensor_storage(update):
    rb, rb_lazy = filled()
    pixel_updates()[update](rb)
    pixel_updates()[update](rb_lazy)
    assert_same(rb.storage[:], rb_lazy.storage[:])
    # and later writes keep matching
    rb.extend(frames(4, seed=2))
    rb_lazy.extend(frames(4, seed=2))
    assert_same(rb.storage[:], rb_lazy.storage[:])


@pytest.mark.parametrize("key", ["pixels", ("next", "pixels"), ("next", "reward")])
def test_update_if_present_matches_lazy_tensor_storage(key):
    data = frames(5)
    buffers = []
    for storage in (delta_storage(), LazyTensorStorage(16)):
        rb = TensorDictReplayBuffer(
            storage=storage, writer=TensorDictRoundRobinWriter(track_generations=True)
        )
        rb.extend(data)
        buffers.append(rb)
    index, generation = torch.tensor([1, 7]), torch.tensor([0, 0])  # slot 7 was never written
    patch = torch.full((2, *data.get(key).shape[1:]), 5, dtype=data.get(key).dtype)
    results = [
        rb.update_if_present(index=index, generation=generation, patch={key: patch})
        for rb in buffers
    ]
    assert results[0].updated.tolist() == results[1].updated.tolist() == [True, False]
    assert_same(buffers[0].storage[:], buffers[1].storage[:])


# ------------------------------------------------------- item 6: reads are pure
def test_reads_store_nothing():
    rb, _ = filled(max_size=16, steps=20, cache_bytes=0)  # full and wrapped
    rb.storage[0]  # creates the decompression context counted by bytes()
    held, keys = rb.storage.bytes(), set(rb.storage._storage.keys(True, True))
    with tempfile.TemporaryDirectory() as path:
        rb.dumps(Path(path) / "a")
        size = (Path(path) / "a" / "storage" / "delta_frame_storage.pt").stat().st_size
        rb.storage[:]
        rb[:]
        repr(rb)
        repr(rb.storage)
        sampler = SliceSampler(slice_len=2, traj_key=("collector", "traj_ids"), strict_length=False)
        ReplayBuffer(storage=rb.storage, sampler=sampler, batch_size=4).sample()
        assert rb.storage.bytes() == held
        assert set(rb.storage._storage.keys(True, True)) == keys
        rb.dumps(Path(path) / "b")
        assert (Path(path) / "b" / "storage" / "delta_frame_storage.pt").stat().st_size == size


@pytest.mark.parametrize(
    "sampler",
    [
        lambda: SliceSampler(slice_len=4, traj_key=("collector", "traj_ids")),
        lambda: SliceSampler(slice_len=4, end_key=("next", "done")),
    ],
)
def test_slice_sampler_decodes_only_the_chunks_its_slices_touch(sampler):
    data = frames(60, num_envs=1, done_prob=0.05)
    rb = ReplayBuffer(
        storage=delta_storage(64, chunk_len=4, cache_bytes=0), sampler=sampler(), batch_size=4
    )
    rb.extend(data)
    pool = rb.storage._indices["pixels"].pool
    decoded = []
    original = pool._decode
    pool._decode = lambda slot, *rest: (decoded.append(slot), original(slot, *rest))[1]
    _, info = rb.sample(return_info=True)
    touched = rb.storage._indices["pixels"].table.rows(info["index"]) // pool.chunk_len
    assert decoded and set(decoded) <= set(touched.flatten().tolist())
    assert len(set(decoded)) < pool.num_chunks() / 2


# -------------------------------------------------------- item 7: checksums
def corrupt(state, path):
    *parents, leaf = path
    for part in parents:
        state = state[part]
    value = state[leaf]
    if isinstance(value, torch.Tensor):
        value.view(-1).view(torch.uint8)[0] ^= 1
    else:
        state[leaf] = value + 1


@pytest.mark.parametrize(
    "path",
    [
        ("other", "action"),
        ("other", "next", "reward"),
        ("other", "next", "done"),
        ("other", "collector", "traj_ids"),
        ("pixels", 0, "index", "table", "newest"),
        ("pixels", 0, "index", "table", "padding"),
        ("pixels", 0, "index", "table", "exceptions"),
        ("pixels", 0, "index", "pool", "payload"),
        ("pixels", 0, "index", "pool", "lengths"),
        ("len",),
        ("last_cursor",),
    ],
)
def test_any_corrupted_tensor_or_value_of_a_state_dict_is_refused(path):
    rb, _ = filled()
    rb.storage.flush()
    state = rb.storage.state_dict()
    corrupt(state, path)
    with pytest.raises(CheckpointCorruptedError, match="corrupted"):
        delta_storage().load_state_dict(state)


def test_old_format_version_is_named():
    rb, _ = filled()
    state = rb.storage.state_dict()
    state["config"]["format_version"] = 1
    with pytest.raises(ValueError, match="format version 1 is not supported"):
        delta_storage().load_state_dict(state)
    with pytest.raises(ValueError, match="not written by DeltaFrameStorage"):
        delta_storage().load_state_dict(LazyTensorStorage(4).state_dict())


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")
    rb, _ = filled()
    rb.dumps(root / "delta")
    quantized = QuantizedStorage(16, keys=["observation"], dtype="int8")
    quantized.set(torch.arange(8), TensorDict({"observation": torch.randn(8, 3)}, [8]))
    quantized.dumps(root / "quantized")
    return root, rb


def load_delta(path):
    ReplayBuffer(storage=delta_storage()).loads(path)


def load_quantized(path):
    QuantizedStorage(16, keys=["observation"], dtype="int8").loads(path)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(kind=st.sampled_from(["delta", "quantized"]), choice=st.data())
def test_any_corrupted_byte_of_a_checkpoint_file_is_refused(checkpoints, kind, choice):
    root, _ = checkpoints
    source = root / kind
    files = sorted(p.relative_to(source) for p in source.rglob("*") if p.is_file())
    if kind == "delta":  # the storage folder; sampler/writer files are TorchRL's
        files = [f for f in files if f.parts[0] == "storage"]
    name = choice.draw(st.sampled_from(files))
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "copy"
        for file in source.rglob("*"):
            if file.is_file():
                dest = target / file.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(file.read_bytes())
        raw = bytearray((target / name).read_bytes())
        position = choice.draw(st.integers(0, len(raw) - 1))
        raw[position] ^= choice.draw(st.integers(1, 255))
        (target / name).write_bytes(bytes(raw))
        load = load_delta if kind == "delta" else load_quantized
        with pytest.raises(CheckpointCorruptedError):
            load(target)


def test_intact_checkpoints_load(checkpoints):
    root, rb = checkpoints
    restored = ReplayBuffer(storage=delta_storage())
    restored.loads(root / "delta")
    assert_same(restored.storage[:], rb.storage[:])
    load_quantized(root / "quantized")
    assert (root / "quantized" / CHECKSUM_MANIFEST).exists()


# ------------------------------------------------- crashes with unclear messages
def test_slice_copy_onto_itself_matches_lazy_tensor_storage():
    rb, rb_lazy = filled()
    rb[:4] = rb[:4]
    rb_lazy[:4] = rb_lazy[:4]
    # overlapping views: LazyTensorStorage refuses them, DeltaFrameStorage copies first
    probe = copy.deepcopy(rb_lazy)
    with pytest.raises(RuntimeError, match="single memory location"):
        probe[2:6] = probe[0:4]
    rb[2:6] = rb[0:4]
    rb_lazy[2:6] = rb_lazy[0:4].clone()
    assert_same(rb.storage[:], rb_lazy.storage[:])


def test_save_hooks_and_other_checkpointers_are_refused():
    rb, _ = filled()
    with pytest.raises(NotImplementedError, match="does not support save hooks"):
        rb.register_save_hook(lambda data, path: data)
    with pytest.raises(NotImplementedError, match="does not support load hooks"):
        rb.storage.register_load_hook(lambda data, out: data)
    with pytest.raises(TypeError, match="compressed form"):
        rb.storage.checkpointer = LazyTensorStorage(2).checkpointer


def test_zero_capacity_is_refused():
    with pytest.raises(ValueError, match="max_size must be >= 1"):
        DeltaFrameStorage(0)


def test_empty_batch():
    rb, rb_lazy = filled()
    empty = frames(2)[:0]
    rb.storage.set(torch.arange(0), empty)
    rb_lazy.storage.set(torch.arange(0), empty)
    assert_same(rb.storage[:], rb_lazy.storage[:])
    with pytest.raises(ValueError, match="empty batch"):
        delta_storage().set(torch.arange(0), empty)


def test_extend_with_a_list_and_negative_index_writes():
    data = frames(6)
    rb, rb_lazy = ReplayBuffer(storage=delta_storage()), ReplayBuffer(storage=LazyTensorStorage(16))
    for buffer in (rb, rb_lazy):
        buffer.extend([data[0], data[1], data[2]])
        buffer[-1] = data[3]  # slot max_size - 1, as LazyTensorStorage writes it
        buffer[torch.tensor([-2, 1])] = data[4:6]
        buffer.extend(frames(16, seed=1))
    assert_same(rb.storage[:], rb_lazy.storage[:])


def test_checkpoint_of_another_storage_kind_is_named(tmp_path):
    rb_lazy = ReplayBuffer(storage=LazyTensorStorage(16))
    rb_lazy.extend(frames(4))
    rb_lazy.dumps(tmp_path / "lazy")
    with pytest.raises(FileNotFoundError, match="another storage kind"):
        ReplayBuffer(storage=delta_storage()).loads(tmp_path / "lazy")


# ------------------------------------------- property: any accepted write sequence
OPERATIONS = st.one_of(
    st.tuples(st.just("extend"), st.integers(1, 12)),
    st.tuples(st.just("add"), st.just(1)),
    st.tuples(st.just("slice"), st.integers(-12, 11), st.integers(1, 6)),
    st.tuples(st.just("index"), st.lists(st.integers(-12, 11), min_size=1, max_size=5)),
    st.tuples(st.just("int"), st.integers(-12, 11)),
    st.tuples(st.just("refused"), st.sampled_from([float64_reward, float_action])),
    st.tuples(st.just("state_dict"), st.just(0)),
    st.tuples(st.just("dumps"), st.just(0)),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    operations=st.lists(OPERATIONS, min_size=1, max_size=8),
    chunk_len=st.integers(1, 5),
    device_cache_bytes=st.sampled_from([0, 2_000, 2**20]),  # off, a few chunks, all chunks
    seed=st.integers(0, 1000),
)
def test_any_write_sequence_matches_lazy_tensor_storage(
    operations, chunk_len, device_cache_bytes, seed
):
    max_size = 12
    data = frames(40, seed=seed)  # two interleaved environments
    position = 0
    options = {"chunk_len": chunk_len, "device": "cpu", "device_cache_bytes": device_cache_bytes}

    def take(n):
        nonlocal position
        rows = torch.arange(position, position + n) % len(data)
        position += n
        return data[rows]

    rb = ReplayBuffer(storage=delta_storage(max_size, max_streams=2, **options))
    rb_lazy = ReplayBuffer(storage=LazyTensorStorage(max_size, device="cpu"))
    for operation in operations:
        kind = operation[0]
        if kind == "extend":
            batch = take(operation[1])
            rb.extend(batch)
            rb_lazy.extend(batch)
        elif kind == "add":
            row = take(1)[0]
            rb.add(row)
            rb_lazy.add(row)
        elif kind == "slice":
            start = operation[1] % max_size
            stop = min(start + operation[2], max_size)
            batch = take(stop - start)
            rb.storage[start:stop] = batch
            rb_lazy.storage[start:stop] = batch
        elif kind == "index":
            slots = list(dict.fromkeys(i % max_size for i in operation[1]))
            index = torch.tensor([s - max_size if s % 2 else s for s in slots])  # some negative
            batch = take(len(slots))
            rb.storage[index] = batch
            rb_lazy.storage[index] = batch
        elif kind == "int":
            row = take(1)[0]
            rb.storage[operation[1]] = row
            rb_lazy.storage[operation[1]] = row
        elif kind == "refused":
            bad = operation[1](take(3))
            if len(rb.storage) == 0:
                continue  # the first write defines the keys' dtypes
            before = fingerprint(rb.storage)
            with pytest.raises(RuntimeError):
                copy.deepcopy(rb_lazy.storage)[torch.arange(3)] = bad
            with pytest.raises(ValueError):
                rb.storage[torch.arange(3)] = bad
            assert fingerprint(rb.storage) == before
        elif kind == "state_dict":
            restored = delta_storage(max_size, max_streams=2, **options)
            restored.load_state_dict(rb.storage.state_dict())
            if len(rb.storage):
                assert_same(restored[:], rb.storage[:])
            rb.storage.load_state_dict(restored.state_dict())
        else:
            with tempfile.TemporaryDirectory() as path:
                rb.dumps(path)
                rb = ReplayBuffer(storage=delta_storage(max_size, **options))
                rb.loads(path)
        assert len(rb.storage) == len(rb_lazy.storage)
        if len(rb_lazy.storage):
            assert_same(rb.storage[:], rb_lazy.storage[:])


# ------------------------------------------------- MultiStep: each frame stored once
@pytest.mark.parametrize("n_steps", [2, 3])
def test_multistep_writes_store_each_frame_once(n_steps):
    steps, num_envs = 48, 2
    # all frames distinct (no repeats): the count of stored frames is known
    data = frames(
        steps * num_envs,
        seed=n_steps,
        num_envs=num_envs,
        done_prob=0.05,
        repeat_prob=0.0,
        order="env-major",
    ).reshape(num_envs, steps)
    delta, lazy = delta_storage(500, chunk_len=8), LazyTensorStorage(500)
    rb, rb_lazy = ReplayBuffer(storage=delta), ReplayBuffer(storage=lazy)
    for start in range(0, steps, 12):  # collector batches of 12 steps per environment
        batch = MultiStep(gamma=0.9, n_steps=n_steps)(data[:, start : start + 12].clone())
        rb.extend(batch.reshape(-1))
        rb_lazy.extend(batch.reshape(-1))
    assert_same(delta[:], lazy[:])
    episodes = num_envs + int(data["next", "done"][:, :-1].sum())
    assert delta.num_frames() == steps * num_envs + episodes
