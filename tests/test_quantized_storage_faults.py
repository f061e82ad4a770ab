"""QuantizedStorage under faults: running int8 ranges, NaN/inf, every dtype and range.

The oracle is TorchRL's ``LazyTensorStorage`` fed the same writes: quantized keys must come
back within ``error_bound`` of what it returns (NaN and infinities exactly), other keys exact.
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict, tensorclass
from torchrl.data import LazyTensorStorage, ReplayBuffer

from torchrl_seer.data import LatentEncodeTransform, QuantizedStorage, migrate_to_latent_replay
from torchrl_seer.modules import DataEfficientAtariEncoder

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def assert_within_bound(storage, key, decoded, expected):
    """``decoded`` equals ``expected`` on non-finite entries and is within the bound elsewhere."""
    assert decoded.dtype == expected.dtype
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isnan(decoded), torch.isnan(expected))
    assert torch.equal(decoded[~finite & ~expected.isnan()], expected[~finite & ~expected.isnan()])
    err = (decoded.double() - expected.double()).abs()
    bound = storage.error_bound(key, expected)
    assert bool((err[finite] <= bound[finite]).all()), float((err - bound)[finite].max())


def write(rb, data, order, gen):
    if order == "add":
        for row in data.unbind(0):
            rb.add(row)
    elif order == "extend":
        half = len(data) // 2
        rb.extend(data[:half]) if half else None
        rb.extend(data[half:])
    else:  # set at indices, in a random order
        index = torch.randperm(len(data), generator=gen) % rb.storage.max_size
        rb.storage.set(index, data)


@st.composite
def batches(draw):
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.integers(1, 10))
    features = draw(st.integers(1, 3))
    # magnitudes from fp16's subnormals (2**-24) to huge values of the wide dtypes
    exponent = draw(st.sampled_from([-30, -20, -14, -3, 0, 5, 15, 40, 120]))
    offset = draw(st.sampled_from([0.0, 1.0, -1000.0]))
    seed = draw(st.integers(0, 2**16))
    gen = torch.Generator().manual_seed(seed)
    values = (torch.randn(n, features, generator=gen, dtype=torch.float64) * 2.0**exponent) + (
        offset * 2.0**exponent
    )
    specials = draw(st.sampled_from([None, "nan", "inf", "-inf"]))
    if specials is not None:
        mask = torch.rand(n, features, generator=gen) < 0.3
        values[mask] = float(specials)
    values = values.to(dtype)  # fp16 overflows to inf and flushes below 2**-25: that is data
    return values, seed


@settings(max_examples=60, deadline=None)
@given(
    batch=batches(),
    fmt=st.sampled_from(["int8", "bf16", "fp16"]),
    order=st.sampled_from(["add", "extend", "set_at"]),
    capacity_slack=st.integers(-2, 2),
)
def test_matches_lazy_tensor_storage_within_the_bound(batch, fmt, order, capacity_slack):
    values, seed = batch
    n = len(values)
    data = TensorDict(
        {"obs": values, "action": torch.arange(n).float().unsqueeze(-1)},
        [n],
    )
    if fmt != "int8":
        finite = torch.isfinite(values)
        if bool(
            (
                finite
                & ~torch.isfinite(values.to(torch.float16 if fmt == "fp16" else torch.bfloat16))
            ).any()
        ):
            # out of the format's range: refused, storage untouched (tested below)
            storage = QuantizedStorage(4, keys=["obs"], dtype=fmt)
            with pytest.raises(ValueError, match="range"):
                storage.set(torch.arange(n) % 4, data)
            assert not storage.initialized and storage.num_nonfinite == 0
            return
    if fmt == "int8" and bool((values.double().abs() > 2.0**125)[values.isfinite()].any()):
        return
    capacity = max(1, n + capacity_slack)
    quantized = ReplayBuffer(storage=QuantizedStorage(capacity, keys=["obs"], dtype=fmt))
    oracle = ReplayBuffer(storage=LazyTensorStorage(capacity))
    write(quantized, data, order, torch.Generator().manual_seed(seed))
    write(oracle, data, order, torch.Generator().manual_seed(seed))
    assert len(quantized) == len(oracle)
    index = torch.arange(len(oracle))
    got, expected = quantized.storage.get(index), oracle.storage.get(index)
    assert torch.equal(got["action"], expected["action"])
    assert_within_bound(quantized.storage, "obs", got["obs"], expected["obs"])
    assert quantized.storage.num_nonfinite == int((~torch.isfinite(values)).sum())


def test_rows_added_one_at_a_time_decode_to_themselves():
    # calibrating on the first row made every scale 0: every row decoded to the first one
    storage = QuantizedStorage(50, keys=["obs"], dtype="int8")
    rb = ReplayBuffer(storage=storage, batch_size=4)
    rows = torch.randn(50, 5, generator=torch.Generator().manual_seed(1))
    for row in rows:
        rb.add(TensorDict({"obs": row}, []))
    decoded = storage.get(torch.arange(50))["obs"]
    bound = storage.max_abs_error("obs")
    assert ((decoded - rows).abs() <= bound).all()
    # a useful bound: each widening at least doubles a range, so it spans under ~4x the
    # data range and the bound stays within 2% of it (calibrate first for range / 504)
    assert (bound < 0.02 * (rows.max(0).values - rows.min(0).values)).all()
    assert storage.num_requantizations > 0


def test_migrating_a_one_transition_buffer_then_writing_more():
    torch.manual_seed(0)
    encoder = DataEfficientAtariEncoder(4, screen_size=25)
    pixels = torch.randint(0, 256, (6, 4, 25, 25), dtype=torch.uint8)
    batch = TensorDict({"pixels": pixels, ("next", "pixels"): pixels.flip(-1)}, [6])
    rb = ReplayBuffer(storage=LazyTensorStorage(10), batch_size=2)
    rb.extend(batch[:1])
    keys = ["latent", ("next", "latent")]
    transform = LatentEncodeTransform(encoder)
    migrate_to_latent_replay(
        rb,
        transform,
        storage_factory=lambda c: QuantizedStorage(c, keys=keys, dtype="int8"),
        capacity=10,
        progress=False,
    )
    rb.extend(batch[1:])
    storage = rb.storage
    expected = transform.inv(batch.clone())
    decoded = storage.get(torch.arange(6))
    for key in keys:
        err = (decoded[key] - expected[key]).abs()
        assert (err <= storage.max_abs_error(key)).all()
        # not all equal to the first transition
        assert not torch.equal(decoded[key][1], decoded[key][0])


def test_nan_and_inf_never_poison_a_range_and_are_stored_exactly():
    storage = QuantizedStorage(8, keys=["obs"], dtype="int8")
    first = torch.tensor([[float("nan"), 0.0], [float("inf"), 1.0], [-1.0, -float("inf")]])
    storage.calibrate(TensorDict({"obs": first}, [3]))  # NaN/inf in the calibration batch
    storage.set(torch.arange(3), TensorDict({"obs": first}, [3]))
    assert storage.lows["obs"].tolist() == [-1.0, 0.0] and storage.highs["obs"].tolist() == [
        -1.0,
        1.0,
    ]
    later = torch.tensor([[-0.5, float("nan")]])
    storage.set(torch.arange(3, 4), TensorDict({"obs": later}, [1]))
    decoded = storage.get(torch.arange(4))["obs"]
    expected = torch.cat([first, later])
    assert_within_bound(storage, "obs", decoded, expected)
    assert torch.isnan(decoded[3, 1])  # a NaN after calibration decodes to NaN, not the minimum
    assert storage.num_nonfinite == 4


@pytest.mark.parametrize("fmt", ["fp16", "bf16"])
def test_half_range_check_is_not_disabled_by_nan(fmt):
    storage = QuantizedStorage(4, keys=["obs"], dtype=fmt)
    big = 1e6 if fmt == "fp16" else 1e39
    dtype = torch.float32 if fmt == "fp16" else torch.float64
    values = torch.tensor([float("nan"), big, 1.0], dtype=dtype)
    with pytest.raises(ValueError, match=f"beyond the {fmt} range"):
        storage.set(0, TensorDict({"obs": values}, []))
    assert not storage.initialized and storage.num_nonfinite == 0
    storage.set(
        0, TensorDict({"obs": torch.tensor([float("nan"), float("inf"), 1.0], dtype=dtype)}, [])
    )
    decoded = storage.get(0)["obs"]
    assert decoded.dtype == dtype and decoded[0].isnan() and decoded[1] == float("inf")
    assert storage.num_nonfinite == 2


def test_float64_keys_keep_their_precision():
    # scales kept in fp32 broke the bound for float64 input
    values = 1e6 + torch.linspace(0, 1e-3, 40, dtype=torch.float64).unsqueeze(-1)
    storage = QuantizedStorage(40, keys=["obs"], dtype="int8")
    storage.set(torch.arange(40), TensorDict({"obs": values}, [40]))
    decoded = storage.get(torch.arange(40))["obs"]
    assert decoded.dtype == torch.float64
    bound = storage.max_abs_error("obs")
    assert ((decoded - values).abs() <= bound).all()
    assert float(bound) < 1e-5  # resolution of the data range, not of fp32 at 1e6 (0.06)


def test_fp16_subnormal_values_keep_an_absolute_bound():
    values = torch.tensor([[2.0**-24], [3 * 2.0**-24], [2.0**-20], [0.0]], dtype=torch.float16)
    for fmt in ["int8", "fp16"]:
        storage = QuantizedStorage(4, keys=["obs"], dtype=fmt)
        storage.set(torch.arange(4), TensorDict({"obs": values}, [4]))
        decoded = storage.get(torch.arange(4))["obs"]
        assert_within_bound(storage, "obs", decoded, values)
    fp16_of_fp32 = QuantizedStorage(2, keys=["obs"], dtype="fp16")
    tiny = torch.tensor([2.0**-26, 3e-8])  # below fp16's smallest subnormal
    fp16_of_fp32.set(torch.arange(2), TensorDict({"obs": tiny}, [2]))
    assert_within_bound(fp16_of_fp32, "obs", fp16_of_fp32.get(torch.arange(2))["obs"], tiny)


def test_refused_writes_leave_the_storage_untouched():
    storage = QuantizedStorage(8, keys=["obs"], dtype="int8")
    rb = ReplayBuffer(storage=storage, batch_size=2)
    rb.extend(TensorDict({"obs": torch.randn(4, 3)}, [4]))
    before = storage.state_dict()
    with pytest.raises(ValueError, match=r"rows of shape \(3,\)"):
        storage.set(torch.arange(4, 6), TensorDict({"obs": torch.randn(2, 4)}, [2]))
    with pytest.raises(ValueError, match="int8 domain"):
        storage.set(4, TensorDict({"obs": torch.tensor([1e38, 0.0, 0.0])}, []))
    with pytest.raises(TypeError, match="stores TensorDicts"):
        storage.set(4, torch.zeros(3))
    after = storage.state_dict()
    assert torch.equal(after["_storage"]["obs"], before["_storage"]["obs"])
    assert after["_len"] == before["_len"]
    for table in ["lows", "highs", "requantized"]:
        assert torch.equal(
            after["quantization"][table]["obs"], before["quantization"][table]["obs"]
        )
    fresh = QuantizedStorage(8, keys=["obs"], dtype="int8")
    with pytest.raises(TypeError, match="only quantize float keys"):
        fresh.set(0, TensorDict({"obs": torch.zeros(3, dtype=torch.long)}, []))
    assert fresh.source_dtypes == {} and fresh.lows == {}


def test_later_writes_are_cast_to_the_stored_dtype_like_lazy_tensor_storage():
    quantized = QuantizedStorage(4, keys=["obs"], dtype="int8")
    oracle = LazyTensorStorage(4)
    first = TensorDict({"obs": torch.tensor([[0.0, 1.0]])}, [1])
    second = TensorDict({"obs": torch.tensor([[0.25, 3.0]], dtype=torch.float64)}, [1])
    third = TensorDict({"obs": torch.tensor([[2, -1]])}, [1])  # ints into a float key
    for index, batch in enumerate([first, second, third]):
        # LazyTensorStorage casts on slice and int cursors (it refuses tensor cursors)
        quantized.set(slice(index, index + 1), batch)
        oracle.set(slice(index, index + 1), batch)
    expected = oracle.get(torch.arange(3))["obs"]
    assert_within_bound(quantized, "obs", quantized.get(torch.arange(3))["obs"], expected)


def test_state_dict_restores_ranges_flags_and_counters(tmp_path):
    storage = QuantizedStorage(8, keys=["obs"], dtype="int8")
    for value in [0.0, 1.0, float("nan"), 5.0]:
        storage.set(len(storage), TensorDict({"obs": torch.tensor([value])}, []))
    restored = QuantizedStorage(8, keys=["obs"], dtype="int8")
    restored.load_state_dict(storage.state_dict())
    torch.testing.assert_close(
        restored.get(torch.arange(4)), storage.get(torch.arange(4)), equal_nan=True
    )
    assert restored.num_nonfinite == 1 and bool(restored.requantized["obs"].all())
    # a later widening re-quantizes the restored rows too
    restored.set(4, TensorDict({"obs": torch.tensor([-20.0])}, []))
    expected = torch.tensor([0.0, 1.0, float("nan"), 5.0, -20.0]).unsqueeze(-1)
    assert_within_bound(restored, "obs", restored.get(torch.arange(5))["obs"], expected)


@tensorclass
class Transition:
    obs: torch.Tensor
    reward: torch.Tensor


def test_tensorclass_and_list_writes_behave_as_lazy_tensor_storage():
    data = Transition(obs=torch.randn(3, 2), reward=torch.randn(3, 1), batch_size=[3])
    quantized = QuantizedStorage(6, keys=["obs"], dtype="int8")
    oracle = LazyTensorStorage(6)
    for storage in (quantized, oracle):
        storage.set(torch.arange(3), data)
    got, expected = quantized.get(torch.arange(3)), oracle.get(torch.arange(3))
    assert type(got) is type(expected) is Transition
    assert torch.equal(got.reward, expected.reward)
    assert_within_bound(quantized, "obs", got.obs, expected.obs)
    rows = [TensorDict({"obs": torch.randn(2)}, []) for _ in range(2)]
    listed = QuantizedStorage(4, keys=["obs"], dtype="bf16")
    listed.set(torch.arange(2), rows)
    assert_within_bound(
        listed, "obs", listed.get(torch.arange(2))["obs"], torch.stack([r["obs"] for r in rows])
    )


def test_refused_write_through_a_buffer_rewinds_its_writer():
    storage = QuantizedStorage(8, keys=["obs"], dtype="fp16")
    rb = ReplayBuffer(storage=storage, batch_size=2)
    rb.extend(TensorDict({"obs": torch.randn(3, 2), "action": torch.zeros(3, 1)}, [3]))
    with pytest.raises(ValueError, match="beyond the fp16 range"):
        rb.extend(TensorDict({"obs": torch.full((2, 2), 1e6), "action": torch.zeros(2, 1)}, [2]))
    with pytest.raises(ValueError, match=r"'action' rows of shape \(1,\)"):
        rb.extend(TensorDict({"obs": torch.randn(2, 2), "action": torch.zeros(2, 3)}, [2]))
    assert len(rb) == 3
    rb.extend(TensorDict({"obs": torch.ones(1, 2), "action": torch.ones(1, 1)}, [1]))
    assert float(storage.get(3)["action"]) == 1.0 and len(rb) == 4  # next slot, not slot 5


@pytest.mark.parametrize("capacity", [4, 16])
def test_resizing_keeps_rows_and_later_widenings_exact(capacity):
    from torchrl_seer.data import ResizableRoundRobinWriter, grow_replay_buffer

    storage = QuantizedStorage(8, keys=["obs"], dtype="int8")
    rb = ReplayBuffer(storage=storage, writer=ResizableRoundRobinWriter(), batch_size=2)
    values = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    rb.extend(TensorDict({"obs": values}, [10]))  # wrapped: slots hold rows 8, 9, 2..7
    grow_replay_buffer(rb, capacity)  # shrinks when capacity < 8
    kept = values[10 - min(8, capacity) :]
    assert_within_bound(storage, "obs", storage.get(torch.arange(len(kept)))["obs"], kept)
    wide = torch.full((1, 3), 50.0)
    rb.extend(TensorDict({"obs": wide}, [1]))  # widens: every kept row is re-quantized
    expected = torch.cat([kept, wide])[-len(rb) :] if capacity < 8 else torch.cat([kept, wide])
    got = storage.get(torch.arange(len(rb)))["obs"]
    if capacity < 8:  # the full shrunk buffer wrapped: slot 0 now holds the new row
        got = torch.cat([got[1:], got[:1]])
    assert_within_bound(storage, "obs", got, expected)


def _read_in_child(storage, queue, ready, widened):
    queue.put(storage.get(torch.arange(3))["obs"].flatten().tolist())
    ready.set()
    widened.wait()
    queue.put(storage.get(torch.arange(4))["obs"].flatten().tolist())


@pytest.mark.slow  # spawns a process (~10 s)
def test_a_reader_process_sees_widened_ranges_and_requantized_rows():
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    storage = QuantizedStorage(8, keys=["obs"], dtype="int8")
    storage.set(torch.arange(3), TensorDict({"obs": torch.tensor([[0.0], [0.5], [1.0]])}, [3]))
    queue, ready, widened = ctx.Queue(), ctx.Event(), ctx.Event()
    child = ctx.Process(target=_read_in_child, args=(storage, queue, ready, widened))
    child.start()
    assert queue.get(timeout=120) == [0.0, 0.5, 1.0]
    ready.wait(timeout=120)
    storage.set(3, TensorDict({"obs": torch.tensor([10.0])}, []))  # widens, re-quantizes
    widened.set()
    seen = queue.get(timeout=120)
    child.join(timeout=120)
    assert seen == storage.get(torch.arange(4))["obs"].flatten().tolist()
    assert seen[1] != 0.5 and seen[3] == 10.0  # the child decodes the new grid
