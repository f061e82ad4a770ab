"""The replay-rewiring core: resizable writer vs a LazyTensorStorage oracle, refused writes,
exact growth of DeltaFrameStorage, atomic freezes and restores of FreezeEncoderHook."""

import copy
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensordict import TensorDict
from torch import nn
from torchrl.data import (
    LazyTensorStorage,
    PrioritizedSampler,
    ReplayBuffer,
    SliceSampler,
    TensorDictReplayBuffer,
)

from torchrl_seer.data import (
    DeltaFrameStorage,
    LatentReplayOptions,
    QuantizedStorage,
    ResizableRoundRobinWriter,
    grow_replay_buffer,
)
from torchrl_seer.data.torchrl_internals import oldest_first_slots, writer_position
from torchrl_seer.modules import DataEfficientAtariEncoder
from torchrl_seer.trainers import FreezeEncoderHook

SIZE = 25


# ----------------------------------------------------------------------------- helpers
def rows(start, n):
    """Transitions identified by a global id, in trajectories of 5 steps."""
    ids = torch.arange(start, start + n)
    return TensorDict(
        {
            "id": ids,
            "obs": ids.float().unsqueeze(-1).expand(n, 3).clone(),
            "episode": ids // 5,
            ("next", "done"): (ids % 5 == 4).unsqueeze(-1),
        },
        [n],
    )


def frame_batch(start, n, *, stack=2, size=8):
    """Frame-stacked transitions of one long episode (frames identified by their index)."""
    frames = torch.arange(start, start + n + stack, dtype=torch.int64)
    frames = (frames.view(-1, 1, 1, 1) * 7 % 251).to(torch.uint8).expand(-1, 1, size, size)
    idx = torch.arange(n)
    obs = torch.cat([frames[idx + i] for i in range(stack)], 1)
    nxt = torch.cat([frames[idx + i + 1] for i in range(stack)], 1)
    return TensorDict(
        {
            "pixels": obs.contiguous(),
            "id": torch.arange(start, start + n),
            ("next", "pixels"): nxt.contiguous(),
            ("next", "done"): torch.zeros(n, 1, dtype=torch.bool),
        },
        [n],
    )


def contents(rb):
    return rb.storage.get(torch.arange(len(rb)))


def assert_same(a, b):
    assert set(a.keys(True, True)) == set(b.keys(True, True))
    for key in a.keys(True, True):
        assert torch.equal(a[key], b[key]), key


def tree(sampler, n):
    return torch.as_tensor(sampler._sum_tree[torch.arange(n).numpy()])


# ------------------------------------------------------- resizable writer vs an oracle
class Oracle:
    """A LazyTensorStorage buffer; a resize rebuilds it from the newest rows, oldest first.

    Raw priorities are tracked per transition (a new one gets the sampler's default, the
    running maximum) and re-applied after a rebuild, which also keeps the running maximum.
    """

    def __init__(self, capacity, sampler_factory):
        self.sampler_factory = sampler_factory
        self.rb = self._make(capacity)
        self.priority = {}  # id -> raw priority

    def _make(self, capacity):
        return TensorDictReplayBuffer(
            storage=LazyTensorStorage(capacity),
            sampler=self.sampler_factory(capacity),
            batch_size=4,
        )

    def extend(self, data):
        if isinstance(self.rb.sampler, PrioritizedSampler):
            default = float(self.rb.sampler.default_priority)
            self.priority.update(dict.fromkeys(data["id"].tolist(), default))
        self.rb.extend(data)

    def resize(self, capacity):
        previous = self.rb
        self.rb = self._make(capacity)
        if not len(previous):
            return
        kept = previous.storage.get(oldest_first_slots(previous))[-capacity:]
        self.rb.extend(kept.exclude("index"))
        if isinstance(self.rb.sampler, PrioritizedSampler):
            values = torch.tensor([self.priority[i] for i in kept["id"].tolist()])
            self.rb.update_priority(torch.arange(len(kept)), values)
            self.rb.sampler._max_priority = previous.sampler._max_priority

    def set_priority(self, slots, values, ids):
        self.rb.update_priority(slots, values)
        self.priority.update(zip(ids.tolist(), values.tolist(), strict=True))


def prioritized(capacity):
    return PrioritizedSampler(capacity, alpha=0.7, beta=0.5)


def slices(capacity):
    return SliceSampler(slice_len=2, traj_key="episode", strict_length=False)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("extend"), st.integers(1, 7)),
        st.tuples(st.just("resize"), st.integers(1, 12)),
        st.tuples(st.just("priority"), st.integers(0, 10**6)),
    ),
    min_size=1,
    max_size=8,
)


@pytest.mark.parametrize("sampler_factory", [prioritized, slices], ids=["prioritized", "slice"])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=operations)
def test_resizable_writer_matches_a_lazy_tensor_storage_oracle(sampler_factory, ops):
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(6),
        sampler=sampler_factory(6),
        writer=ResizableRoundRobinWriter(),
        batch_size=4,
    )
    oracle = Oracle(6, sampler_factory)
    written = 0
    for op, arg in ops:
        if op == "extend":
            rb.extend(rows(written, arg))
            oracle.extend(rows(written, arg))
            written += arg
        elif op == "resize":
            rb.writer.resize(arg)
            oracle.resize(arg)
        elif len(rb) and isinstance(rb.sampler, PrioritizedSampler):
            gen = torch.Generator().manual_seed(arg)
            values = torch.rand(len(rb), generator=gen) * 10
            rb.update_priority(torch.arange(len(rb)), values)
            ids = contents(rb)["id"]
            # the same transitions get the same priorities in the oracle
            order = {x: i for i, x in enumerate(contents(oracle.rb)["id"].tolist())}
            slots = torch.tensor([order[x] for x in ids.tolist()])
            oracle.set_priority(slots, values, ids)
        # same transitions, in the same chronological order, at the same capacity
        assert rb.storage.max_size == oracle.rb.storage.max_size
        assert len(rb) == len(oracle.rb)
        if len(rb):
            ours = rb.storage.get(oldest_first_slots(rb)).exclude("index")
            theirs = oracle.rb.storage.get(oldest_first_slots(oracle.rb)).exclude("index")
            assert_same(ours, theirs)
        if isinstance(rb.sampler, PrioritizedSampler) and len(rb):
            ours = tree(rb.sampler, rb.storage.max_size)[oldest_first_slots(rb)]
            theirs = tree(oracle.rb.sampler, oracle.rb.storage.max_size)[
                oldest_first_slots(oracle.rb)
            ]
            torch.testing.assert_close(ours, theirs)
            assert float(rb.sampler._sum_tree.query(len(rb), rb.storage.max_size)) == 0.0
        if not len(rb):
            continue
        # the same slots, so the same slices under the same seed
        assert_same(contents(rb).exclude("index"), contents(oracle.rb).exclude("index"))
        if len(rb) >= 2 and isinstance(rb.sampler, SliceSampler):
            torch.manual_seed(written)
            ours = rb.sample()["id"]
            torch.manual_seed(written)
            assert torch.equal(ours, oracle.rb.sample()["id"])


def test_writer_checkpoint_keeps_the_capacity(tmp_path):
    rb = ReplayBuffer(storage=LazyTensorStorage(4), writer=ResizableRoundRobinWriter())
    rb.extend(rows(0, 6))
    rb.writer.resize(9)
    rb.extend(rows(6, 2))
    # state_dict into a buffer built with the original capacity
    restored = ReplayBuffer(storage=LazyTensorStorage(4), writer=ResizableRoundRobinWriter())
    restored.load_state_dict(rb.state_dict())
    assert restored.storage.max_size == 9 and writer_position(restored.writer) == (6, 8)
    assert_same(contents(restored), contents(rb))
    # dumps/loads into a buffer of the checkpoint's capacity
    rb.dumps(tmp_path / "rb")
    loaded = ReplayBuffer(storage=LazyTensorStorage(9), writer=ResizableRoundRobinWriter())
    loaded.loads(tmp_path / "rb")
    assert writer_position(loaded.writer) == (6, 8)
    assert_same(contents(loaded), contents(rb))
    # a filled buffer of another capacity is refused clearly
    other = ReplayBuffer(storage=LazyTensorStorage(5), writer=ResizableRoundRobinWriter())
    other.extend(rows(0, 5))
    with pytest.raises(ValueError, match="capacity 9"):
        other.writer.load_state_dict(rb.writer.state_dict())


def test_grow_replay_buffer_on_quantized_storage_keeps_the_codes():
    storage = QuantizedStorage(6, keys=["obs"], dtype="int8")
    rb = ReplayBuffer(storage=storage)
    rb.extend(rows(0, 9))
    before = rb.storage.get(oldest_first_slots(rb))
    grow_replay_buffer(rb, 10)
    assert_same(contents(rb), before)
    rb.extend(rows(9, 2))
    assert contents(rb)["id"].tolist() == list(range(3, 11))


# ----------------------------------------------------- issue 14 item 8: delta growth
@pytest.mark.parametrize("capacity", [12, 4], ids=["grow", "shrink"])
def test_grow_delta_frame_storage_is_exact_and_can_be_extended(capacity):
    delta = ReplayBuffer(storage=DeltaFrameStorage(6, frame_stack=2, num_threads=0))
    lazy = ReplayBuffer(storage=LazyTensorStorage(6))
    for rb in (delta, lazy):
        rb.extend(frame_batch(0, 9))  # wraps: the newest 6 held
    grow_replay_buffer(delta, capacity)
    grow_replay_buffer(lazy, capacity)
    assert_same(contents(delta), contents(lazy))
    for rb in (delta, lazy):
        rb.extend(frame_batch(9, 5))
    assert_same(contents(delta), contents(lazy))
    assert contents(delta)["id"].tolist() == contents(lazy)["id"].tolist()


def test_shrinking_delta_storage_frees_the_frames_it_dropped():
    rb = ReplayBuffer(storage=DeltaFrameStorage(20, frame_stack=2, num_threads=0, chunk_len=4))
    rb.extend(frame_batch(0, 20))
    frames = rb.storage.num_frames()
    grow_replay_buffer(rb, 5)
    assert rb.storage.num_frames() < frames
    assert contents(rb)["id"].tolist() == list(range(15, 20))


# ------------------------------------------------------ issue 14 item 3: refused writes
def bad_pixels(start, n):
    data = frame_batch(start, n)
    data["pixels"] = data["pixels"].float()
    return data


def test_refused_extend_leaves_storage_and_writer_bit_identical():
    rb = ReplayBuffer(storage=DeltaFrameStorage(8, frame_stack=2, num_threads=0))
    rb.extend(frame_batch(0, 5))
    position, before = writer_position(rb.writer), contents(rb)
    with pytest.raises(TypeError):
        rb.extend(bad_pixels(5, 3))
    assert writer_position(rb.writer) == position
    assert_same(contents(rb), before)
    rb.extend(frame_batch(5, 3))
    assert contents(rb)["id"].tolist() == list(range(8))


def test_a_refused_direct_set_moves_no_writer():
    rb = ReplayBuffer(storage=DeltaFrameStorage(8, frame_stack=2, num_threads=0))
    rb.extend(frame_batch(0, 5))
    position = writer_position(rb.writer)
    with pytest.raises(TypeError):
        rb.storage.set(torch.arange(0, 3), bad_pixels(0, 3))
    assert writer_position(rb.writer) == position == (5, 5)


def test_a_refused_write_rewinds_only_the_writer_that_moved():
    storage = DeltaFrameStorage(8, frame_stack=2, num_threads=0)
    first = ReplayBuffer(storage=storage)
    second = ReplayBuffer(storage=storage)
    first.extend(frame_batch(0, 3))
    second.extend(frame_batch(3, 2))
    positions = writer_position(first.writer), writer_position(second.writer)
    with pytest.raises(TypeError):
        second.extend(bad_pixels(5, 2))
    assert (writer_position(first.writer), writer_position(second.writer)) == positions


@pytest.mark.parametrize("writer", [ResizableRoundRobinWriter, None], ids=["ours", "torchrl"])
def test_a_write_quantized_storage_refuses_leaves_the_writer_in_place(writer):
    rb = ReplayBuffer(
        storage=QuantizedStorage(8, keys=["obs"], dtype="fp16"),
        writer=writer() if writer is not None else None,
    )
    rb.extend(rows(0, 3))
    huge = rows(3, 2)
    huge["obs"] = huge["obs"] * 1e6
    with pytest.raises(ValueError, match="fp16 range"):
        rb.extend(huge)
    assert writer_position(rb.writer) == (3, 3)
    rb.extend(rows(3, 2))
    assert contents(rb)["id"].tolist() == list(range(5))


# --------------------------------------- issue 14 item 10: atomic freeze and restore
def pixel_rows(start, n):
    gen = torch.Generator().manual_seed(start)
    pixels = torch.randint(0, 256, (n, 4, SIZE, SIZE), dtype=torch.uint8, generator=gen)
    ids = torch.arange(start, start + n)
    return TensorDict({"pixels": pixels, ("next", "pixels"): pixels.flip(-1), "id": ids}, [n])


def seer(options=None, *, storage=None):
    """A SEER setup: encoder, head, optimizer, pixel buffer and hook (freeze at step 1)."""
    torch.manual_seed(0)
    run = SimpleNamespace(encoder=DataEfficientAtariEncoder(4, screen_size=SIZE))
    run.head = nn.Linear(64, 3)
    run.optim = torch.optim.Adam([*run.encoder.parameters(), *run.head.parameters()])
    run.rb = ReplayBuffer(storage=storage or LazyTensorStorage(32), batch_size=4)
    run.hook = FreezeEncoderHook(
        run.encoder,
        freeze_at=1,
        optimizers=[run.optim],
        replay_buffer=run.rb,
        replay_options=options or LatentReplayOptions(progress=False),
    )
    return run


def train(run):
    sample = run.rb.sample()
    if "latent" in sample.keys():
        features = run.encoder.encode_latent(sample["latent"])
    else:
        features = run.encoder(sample["pixels"])
    run.optim.zero_grad()
    run.head(features).sum().backward()
    run.optim.step()


def test_a_failing_migration_leaves_everything_as_it_was():
    def broken_storage(capacity):
        raise RuntimeError("no memory for the latent storage")

    run = seer(LatentReplayOptions(storage_factory=broken_storage, progress=False))
    run.rb.extend(pixel_rows(0, 12))
    train(run)
    params = copy.deepcopy(run.encoder.state_dict())
    groups = [list(g["params"]) for g in run.optim.param_groups]
    state = {id(p): copy.deepcopy(s) for p, s in run.optim.state.items()}
    storage, before = run.rb.storage, contents(run.rb)
    with pytest.raises(RuntimeError, match="no memory"):
        run.hook.step(1)
    assert not run.hook.frozen and run.hook.storage_mode == "pixels"
    assert run.hook.freeze_report == {}
    assert all(p.requires_grad for p in run.encoder.parameters())
    assert [list(g["params"]) for g in run.optim.param_groups] == groups
    assert {id(p) for p in run.optim.state} == set(state)
    for p, s in run.optim.state.items():
        for key, value in s.items():
            assert torch.equal(value, state[id(p)][key])
    for name, value in run.encoder.state_dict().items():
        assert torch.equal(value, params[name]), name
    assert run.rb.storage is storage and len(run.rb.transform) == 0
    assert_same(contents(run.rb), before)
    train(run)  # still trains on pixels


def test_restoring_a_frozen_hook_twice_keeps_the_buffer_and_one_transform():
    run = seer()
    run.rb.extend(pixel_rows(0, 12))
    run.hook.step(1)
    run.rb.extend(pixel_rows(12, 4))
    state, before = run.hook.state_dict(), contents(run.rb)
    run.hook.load_state_dict(state)
    run.hook.load_state_dict(state)
    assert len(run.rb.transform) == 1 and run.hook.frozen
    assert_same(contents(run.rb), before)
    train(run)


def test_restoring_the_buffer_before_the_hook_from_state_dicts_is_refused():
    run = seer()
    run.rb.extend(pixel_rows(0, 12))
    run.hook.step(1)
    hook_state, rb_state = run.hook.state_dict(), run.rb.state_dict()
    # TorchRL refuses the latent transform's state on a pixel buffer (after loading its rows),
    # then the hook refuses to drop those rows; the networks are left alone
    run2 = seer()
    with pytest.raises(RuntimeError, match="frozen_encoder"):
        run2.rb.load_state_dict(rb_state)
    with pytest.raises(RuntimeError, match="restore FreezeEncoderHook before the replay buffer"):
        run2.hook.load_state_dict(hook_state)
    assert not run2.hook.frozen and len(run2.rb.transform) == 0
    assert all(p.requires_grad for p in run2.encoder.parameters())


def delta_pixels():
    return DeltaFrameStorage(32, frame_stack=1, num_threads=0)


@pytest.mark.parametrize("pixels", [None, delta_pixels], ids=["lazy", "delta"])
def test_dumps_checkpoints_restore_the_buffer_before_the_hook(tmp_path, pixels):
    run = seer(storage=pixels() if pixels else None)
    run.rb.extend(pixel_rows(0, 12))
    run.hook.step(1)
    run.rb.extend(pixel_rows(12, 3))
    run.rb.dumps(tmp_path / "rb")
    hook_state, before = run.hook.state_dict(), contents(run.rb)

    run2 = seer(storage=pixels() if pixels else None)
    run2.rb.loads(tmp_path / "rb")  # the buffer first: it switches itself to latent replay
    run2.hook.load_state_dict(hook_state)
    assert run2.hook.frozen and len(run2.rb.transform) == 1
    assert run2.rb.storage.max_size == run.rb.storage.max_size
    assert_same(contents(run2.rb), before)
    run2.rb.extend(pixel_rows(15, 2))
    assert "pixels" not in contents(run2.rb).keys() and len(run2.rb) == 17
    train(run2)
