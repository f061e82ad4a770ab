"""QuantizedStorage: error bounds, capacity under a budget, checkpoints, bad inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage, ReplayBuffer

from torchrl_seer.data import QuantizedStorage, equal_budget_capacity, grow_replay_buffer


def states(n, dim=6, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    obs = torch.randn(n, dim, generator=gen) * scale
    return TensorDict(
        {
            "observation": obs,
            "action": torch.randn(n, 2, generator=gen),
            ("next", "observation"): obs * 2,
        },
        [n],
    )


@settings(max_examples=10, deadline=None)
@given(
    scale=st.floats(1e-3, 1e3),
    offset=st.floats(-1e3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_int8_error_bound_holds(scale, offset, seed):
    data = states(64, scale=scale, seed=seed)
    data["observation"] = data["observation"] + offset
    storage = QuantizedStorage(64, keys=["observation", ("next", "observation")], dtype="int8")
    storage.calibrate(data)
    storage.set(torch.arange(64), data)
    decoded = storage.get(torch.arange(64))
    for key in ["observation", ("next", "observation")]:
        err = (decoded[key] - data[key]).abs()
        bound = storage.max_abs_error(key)
        # scale / 2 plus float32 rounding of the decode
        assert (err <= bound * (1 + 1e-4) + 1e-6 * data[key].abs().max()).all()
    assert torch.equal(decoded["action"], data["action"])  # unlisted keys stay exact
    assert storage.num_nonfinite == 0 and storage.num_requantizations == 0


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_relative_error_bound(dtype):
    data = states(32, scale=100.0)
    storage = QuantizedStorage(32, keys=["observation"], dtype=dtype)
    storage.set(torch.arange(32), data)
    decoded = storage.get(torch.arange(32))["observation"]
    assert decoded.dtype == torch.float32
    rel = float(storage.max_abs_error("observation"))
    assert ((decoded - data["observation"]).abs() <= rel * data["observation"].abs()).all()


def test_first_write_sets_the_range_and_a_wider_value_widens_it():
    storage = QuantizedStorage(16, keys=["observation"], dtype="int8")
    storage.set(torch.arange(4), TensorDict({"observation": torch.tensor([[0.0], [1.0]] * 2)}, [4]))
    assert storage.calibrated
    storage.set(4, TensorDict({"observation": torch.tensor([2.0])}, []))
    # never clipped: the range doubles to [0, 2] and the four stored rows are re-quantized
    assert storage.num_requantizations == 1
    assert float(storage.get(4)["observation"]) == pytest.approx(2.0)
    decoded = storage.get(torch.arange(4))["observation"]
    bound = storage.max_abs_error("observation")
    assert ((decoded - torch.tensor([[0.0], [1.0]] * 2)).abs() <= bound).all()


def test_int8_multiplies_capacity_by_four_under_one_budget():
    data = TensorDict({"latent": torch.randn(8, 50), ("next", "latent"): torch.randn(8, 50)}, [8])
    budget = 1_000_000
    fp32 = LazyTensorStorage(1)
    int8 = QuantizedStorage(1, keys=["latent", ("next", "latent")], dtype="int8")
    int8.calibrate(data)
    from torchrl_seer.data.latent_migration import transition_nbytes

    c_fp32 = equal_budget_capacity(budget, transition_nbytes(data, fp32))
    c_int8 = equal_budget_capacity(budget, transition_nbytes(data, int8))
    assert c_int8 == 4 * c_fp32
    # and the allocation honours the budget as measured
    storage = QuantizedStorage(c_int8, keys=["latent", ("next", "latent")], dtype="int8")
    storage.calibrate(data)
    storage.set(torch.arange(8), data)
    params = storage.fixed_nbytes(data)  # the per-feature ranges of both keys
    assert params == 2 * 50 * 9  # float32 low and high, one flag, per feature
    assert storage.nbytes_held() - params <= budget


def test_checkpoint_roundtrip_dumps_and_state_dict(tmp_path):
    data = states(20)
    storage = QuantizedStorage(30, keys=["observation"], dtype="int8")
    rb = ReplayBuffer(storage=storage, batch_size=4)
    rb.extend(data)
    rb.dumps(tmp_path / "rb")
    restored = QuantizedStorage(30, keys=["observation"], dtype="int8")
    rb2 = ReplayBuffer(storage=restored, batch_size=4)
    rb2.loads(tmp_path / "rb")
    torch.testing.assert_close(restored.get(torch.arange(20)), storage.get(torch.arange(20)))
    other = QuantizedStorage(30, keys=["observation"], dtype="int8")
    other.load_state_dict(storage.state_dict())
    torch.testing.assert_close(other.get(torch.arange(20)), storage.get(torch.arange(20)))


def test_grows_in_place_with_encoded_rows():
    storage = QuantizedStorage(8, keys=["observation"], dtype="int8")
    rb = ReplayBuffer(storage=storage, batch_size=4)
    rb.extend(states(8))
    before = storage.get(torch.arange(8))
    grow_replay_buffer(rb, 32)
    assert storage.max_size == 32 and storage._storage["observation"].dtype == torch.uint8
    torch.testing.assert_close(storage.get(torch.arange(8)), before)


def test_bad_inputs():
    with pytest.raises(ValueError, match="dtype must be one of"):
        QuantizedStorage(4, keys=["x"], dtype="int4")
    storage = QuantizedStorage(4, keys=["observation"], dtype="int8")
    with pytest.raises(KeyError, match="expected key 'observation'"):
        storage.set(0, TensorDict({"obs": torch.zeros(3)}, []))
    with pytest.raises(TypeError, match="only quantize float keys"):
        storage.set(0, TensorDict({"observation": torch.zeros(3, dtype=torch.long)}, []))
    fp16 = QuantizedStorage(4, keys=["observation"], dtype="fp16")
    with pytest.raises(ValueError, match="fp16 range"):
        fp16.set(0, TensorDict({"observation": torch.full((3,), 1e6)}, []))
