"""HAdam's flat multi-tensor update (``foreach=True``) against its per-parameter update."""

import copy
import io

import pytest
import torch

from torchrl_seer.optim import CompoundLossScaler, HAdam, stochastic_store_

FP32 = {
    "fp32": {},
    "fp32 amsgrad, weight decay, maximize": {
        "amsgrad": True,
        "weight_decay": 0.01,
        "maximize": True,
    },
    "fp32 Kahan": {"kahan": True},
}
SIXTEEN_BIT = {
    "bf16 Kahan": (torch.bfloat16, {"kahan": True, "eps": 1e-4}),
    "fp16 Kahan": (torch.float16, {"kahan": True, "eps": 1e-4}),
    "bf16 stochastic moment decay": (
        torch.bfloat16,
        {"kahan": True, "stochastic_moment_decay": True, "eps": 1e-4},
    ),
    "bf16 int8 Kahan": (
        torch.bfloat16,
        {"kahan": True, "compensation_dtype": torch.int8, "eps": 1e-4},
    ),
    "bf16 stochastic rounding": (torch.bfloat16, {"stochastic_rounding": True, "eps": 1e-4}),
}


def _parameters(dtype, seed=0):
    """A matrix, a transposed (non-contiguous) matrix, a vector and a scalar."""
    gen = torch.Generator().manual_seed(seed)
    matrix = torch.randn(16, 8, generator=gen)
    transposed = torch.randn(8, 5, generator=gen).t()
    return [
        torch.nn.Parameter(t.to(dtype))
        for t in (matrix, transposed, torch.randn(7, generator=gen), torch.randn((), generator=gen))
    ]


def _gradients(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    return [
        (torch.randn(p.shape, generator=gen) * 10 ** (step % 3 - 1)).to(p.dtype) for p in params
    ]


def _train(params, optimizer, steps, first_step=0):
    for step in range(first_step, first_step + steps):
        for param, grad in zip(params, _gradients(params, step), strict=True):
            param.grad = grad
        optimizer.step()


def _run(dtype, kwargs, *, foreach, steps=6, seed=0):
    torch.manual_seed(seed)
    params = _parameters(dtype)
    optimizer = HAdam(params, lr=1e-2, foreach=foreach, **kwargs)
    _train(params, optimizer, steps)
    return params, optimizer


@pytest.mark.parametrize("config", FP32)
def test_fp32_foreach_update_is_the_per_parameter_update_bit_for_bit(config):
    flat_params, flat = _run(torch.float32, FP32[config], foreach=True)
    loop_params, loop = _run(torch.float32, FP32[config], foreach=False)
    for a, b in zip(flat_params, loop_params, strict=True):
        assert torch.equal(a, b)
        for name, value in loop.state[b].items():
            assert torch.equal(torch.as_tensor(flat.state[a][name]), torch.as_tensor(value)), name


@pytest.mark.parametrize("config", SIXTEEN_BIT)
def test_16_bit_foreach_update_differs_from_the_per_parameter_update_by_rounding_only(config):
    """In fp16/bf16 an element may round differently in the last bit when it moves between
    PyTorch's vectorized and scalar loops (fused multiply-add or not), and random rounding
    draws in another order: after 6 steps the two runs stay within a few ulps."""
    dtype, kwargs = SIXTEEN_BIT[config]
    flat_params, _ = _run(dtype, kwargs, foreach=True)
    loop_params, _ = _run(dtype, kwargs, foreach=False)
    for a, b, initial in zip(flat_params, loop_params, _parameters(dtype), strict=True):
        assert not torch.equal(b, initial)  # both trained
        ulp = torch.finfo(dtype).eps * b.float().abs().clamp_min(1.0)
        assert ((a.float() - b.float()).abs() <= 8 * ulp).all()


def test_state_is_a_view_of_one_flat_buffer_per_state_tensor():
    params, optimizer = _run(torch.bfloat16, {"kahan": True, "eps": 1e-4}, foreach=True)
    for name in ("exp_avg", "exp_avg_hypot", "kahan_compensation"):
        storages = {optimizer.state[p][name].untyped_storage().data_ptr() for p in params}
        assert len(storages) == 1, name
        assert all(optimizer.state[p][name].shape == p.shape for p in params)


@pytest.mark.parametrize(
    ("dtype", "kwargs", "saved_with_foreach"),
    [(*SIXTEEN_BIT["bf16 Kahan"], True), (torch.float32, FP32["fp32 Kahan"], False)],
)
def test_checkpoint_restores_exactly_across_layouts(dtype, kwargs, saved_with_foreach):
    """A state saved by either layout, loaded into a flat optimizer, resumes bit for bit
    (across layouts in fp32, where both layouts compute the same bits)."""
    params, optimizer = _run(dtype, kwargs, foreach=saved_with_foreach, steps=4)
    buffer = io.BytesIO()
    torch.save(
        {"params": [p.detach().clone() for p in params], "opt": optimizer.state_dict()}, buffer
    )
    _train(params, optimizer, 3, first_step=4)

    buffer.seek(0)
    saved = torch.load(buffer)
    restored = [torch.nn.Parameter(p) for p in saved["params"]]
    resumed = HAdam(restored, lr=1e-2, foreach=True, **kwargs)
    resumed.load_state_dict(saved["opt"])
    _train(restored, resumed, 3, first_step=4)
    for a, b in zip(restored, params, strict=True):
        assert torch.equal(a, b)


def test_replaced_state_tensor_is_gathered_again():
    dtype, kwargs = torch.float32, FP32["fp32"]
    results = []
    for foreach in (True, False):
        params, optimizer = _run(dtype, kwargs, foreach=foreach, steps=2)
        optimizer.state[params[0]]["exp_avg"] = torch.full_like(params[0], 0.5)
        _train(params, optimizer, 2, first_step=2)
        results.append(params)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_parameters_with_different_step_counts_update_separately():
    """A parameter without a gradient at the first step lags one step behind the others."""
    dtype, kwargs = torch.float32, FP32["fp32 Kahan"]
    results = []
    for foreach in (True, False):
        params = _parameters(dtype)
        optimizer = HAdam(params, lr=1e-2, foreach=foreach, **kwargs)
        for step in range(4):
            for param, grad in zip(params, _gradients(params, step), strict=True):
                param.grad = grad
            if step == 0:
                params[1].grad = None
            optimizer.step()
        assert optimizer.state[params[1]]["step"] == 3
        assert optimizer.state[params[0]]["step"] == 4
        results.append(params)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_deepcopy_and_loss_scaler_rescaling_keep_the_update():
    """A deep copy steps like the original; a scaler's in-place rescale reaches the flat state."""
    dtype, kwargs = SIXTEEN_BIT["fp16 Kahan"]
    params, optimizer = _run(dtype, kwargs, foreach=True, steps=3)
    copied = copy.deepcopy({"params": params, "opt": optimizer})
    _train(params, optimizer, 2, first_step=3)
    _train(copied["params"], copied["opt"], 2, first_step=3)
    for a, b in zip(params, copied["params"], strict=True):
        assert torch.equal(a, b)

    scaler = CompoundLossScaler(optimizer, init_scale=1024.0)
    before = [m.clone() for m in optimizer.linear_moments()]
    params[0].grad = torch.full_like(params[0], float("inf"))
    scaler.step()  # skipped: the moments are halved in place
    for moment, old in zip(optimizer.linear_moments(), before, strict=True):
        torch.testing.assert_close(moment, old / 2, rtol=0, atol=2.0**-24)  # subnormals
    flat = optimizer.state[params[0]]["exp_avg"]
    assert all(
        optimizer.state[p]["exp_avg"].untyped_storage().data_ptr()
        == flat.untyped_storage().data_ptr()
        for p in params
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_stochastic_store_is_unbiased_and_lands_on_the_two_neighbours(dtype):
    torch.manual_seed(0)
    lower = torch.tensor(1.0, dtype=dtype)
    upper = torch.nextafter(lower, torch.tensor(2.0, dtype=dtype))
    exact = lower.float() + 0.3 * (upper.float() - lower.float())  # 30 % of the way up
    value = torch.empty(200_000, dtype=dtype)
    stochastic_store_(value, exact.expand(200_000).clone())
    assert set(value.unique().tolist()) == {lower.item(), upper.item()}
    assert abs((value == upper).double().mean().item() - 0.3) < 0.005


def test_stochastic_store_rejects_what_it_cannot_store():
    with pytest.raises(ValueError, match=r"float16 or torch\.bfloat16"):
        stochastic_store_(torch.empty(3), torch.empty(3))
    with pytest.raises(ValueError, match=r"torch\.float32 tensor of shape \(3,\)"):
        stochastic_store_(torch.empty(3, dtype=torch.bfloat16), torch.empty(4))
    with pytest.raises(ValueError, match=r"torch\.float32 tensor of shape \(3,\)"):
        stochastic_store_(torch.empty(3, dtype=torch.bfloat16), torch.empty(3, dtype=torch.float64))


def test_large_tensors_update_on_their_own(monkeypatch):
    """Tensors above the gather limit keep their own state and are never copied."""
    import torchrl_seer.optim.hadam as hadam_module

    monkeypatch.setattr(hadam_module, "_GATHER_LIMIT", 100)  # the 16x8 matrix is "large"
    flat_params, flat = _run(torch.float32, FP32["fp32 Kahan"], foreach=True)
    loop_params, _ = _run(torch.float32, FP32["fp32 Kahan"], foreach=False)
    for a, b in zip(flat_params, loop_params, strict=True):
        assert torch.equal(a, b)
    storages = [flat.state[p]["exp_avg"].untyped_storage().data_ptr() for p in flat_params]
    assert storages[0] not in storages[1:]  # the matrix alone
    assert len(set(storages[1:])) == 1  # the three small tensors gathered
