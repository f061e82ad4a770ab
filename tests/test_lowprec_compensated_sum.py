import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from torchrl_seer.optim import (
    COMPENSATION_FRACTION_BITS,
    check_compensation_dtype,
    compensated_add_,
    compensated_value,
    residual_quantum,
    stochastic_add_,
    store_compensated_,
)

LOW = (torch.bfloat16, torch.float16)
FP32_MAX = float(torch.finfo(torch.float32).max)


@settings(max_examples=300, deadline=None)
@given(
    values=st.lists(
        st.floats(min_value=-FP32_MAX, max_value=FP32_MAX, width=32), min_size=1, max_size=16
    ),
    dtype=st.sampled_from(LOW),
)
def test_int8_residual_never_overflows_and_is_within_one_quantum(values, dtype):
    exact = torch.tensor(values, dtype=torch.float32)
    value = torch.empty_like(exact, dtype=dtype)
    residual = torch.empty_like(exact, dtype=torch.int8)
    store_compensated_(value, residual, exact.clone())
    rounded = exact.to(dtype)  # round-to-nearest; the stored value may be the float below it
    finite = torch.isfinite(rounded)
    quantum = residual_quantum(rounded)
    # the residual t - x lies in [-2^(k-1), 2^(k-1)] = [-64, 64] quanta (|t - x| <= ulp(t)/2)
    raw = ((rounded.float() - exact) / quantum)[finite]
    assert (raw.abs() <= 2 ** (COMPENSATION_FRACTION_BITS - 1)).all(), raw
    assert (residual.int().abs() <= 64).all()
    assert (residual[~finite] == 0).all()  # values that overflow the 16-bit range store 0
    # the pair represents x to within one quantum
    err = (compensated_value(value, residual) - exact)[finite].abs()
    assert (err < quantum[finite]).all(), (err, quantum)


def test_residual_of_a_tie_is_half_an_ulp_and_fits_in_int8():
    # midpoints between neighbouring 16-bit floats round to the even one: |t - x| = ulp / 2,
    # the largest residual, 2^(k-1) = 64 quanta either way
    for dtype in LOW:
        ulp_one = (
            residual_quantum(torch.ones(1, dtype=dtype)).item() * 2**COMPENSATION_FRACTION_BITS
        )
        ties = torch.tensor([1 + ulp_one / 2, 1 + 1.5 * ulp_one, -(1 + 1.5 * ulp_one)])
        for seed in range(10):
            value = torch.empty(3, dtype=dtype)
            residual = torch.empty(3, dtype=torch.int8)
            gen = torch.Generator().manual_seed(seed)
            store_compensated_(value, residual, ties.clone(), generator=gen)
            assert residual.abs().tolist() == [64, 64, 64], residual
            torch.testing.assert_close(compensated_value(value, residual), ties, rtol=0, atol=0)


def test_quantum_is_a_power_of_two_fraction_of_the_ulp_for_all_kinds_of_values():
    for dtype in LOW:
        info = torch.finfo(dtype)
        mantissa_bits = {torch.bfloat16: 7, torch.float16: 10}[dtype]
        values = torch.tensor([1.0, -1.5, 3.0, info.max, info.tiny, 0.0], dtype=dtype)
        spacing = [2.0**-mantissa_bits, 2.0**-mantissa_bits, 2.0 ** (1 - mantissa_bits)]
        top = 2.0 ** (math.floor(math.log2(info.max)) - mantissa_bits)
        subnormal = info.tiny * 2.0**-mantissa_bits
        spacing += [top, subnormal, subnormal]
        expected = torch.tensor(spacing, dtype=torch.float64) / 2**COMPENSATION_FRACTION_BITS
        torch.testing.assert_close(residual_quantum(values).double(), expected, rtol=0, atol=0)
    # bf16's subnormal quantum 2^-140 is an fp32 subnormal, still exact
    assert residual_quantum(torch.zeros(1, dtype=torch.bfloat16)).item() == 2.0**-140


def _accumulate(dtype, compensation_dtype, increments, start):
    value = start.clone()
    if compensation_dtype is None:
        compensation = torch.zeros_like(value)
        for inc in increments:
            compensated_add_(value, compensation, inc.to(dtype))
    else:
        compensation = torch.zeros_like(value, dtype=compensation_dtype)
        gen = torch.Generator().manual_seed(0)
        for inc in increments:
            compensated_add_(value, compensation, inc.float(), generator=gen)
    return value.double(), compensated_value(value, compensation).double()


@pytest.mark.parametrize(
    ("dtype", "steps", "numel"), [(torch.bfloat16, 4000, 2048), (torch.float16, 1000, 256)]
)
@pytest.mark.parametrize("kind", ["steady", "noisy"])
def test_int8_compensated_sum_tracks_fp64_nearly_like_16bit(dtype, steps, numel, kind):
    gen = torch.Generator().manual_seed(1)
    start = (torch.rand(numel, generator=gen, dtype=torch.float64) * 0.03 + 0.01).to(dtype)
    magnitude = 2e-5  # an Adam-like update: far below half an ulp of the weights in bf16
    if kind == "steady":  # the same increment every step: round-to-nearest would drift
        step = torch.rand(numel, generator=gen, dtype=torch.float64) * magnitude
        increments = [step] * steps
    else:
        increments = [
            (torch.randn(numel, generator=gen, dtype=torch.float64) + 0.3) * magnitude
            for _ in range(steps)
        ]
    reference = start.double() + torch.stack(increments).sum(0)
    naive = start.clone()
    for inc in increments:
        naive += inc.to(dtype)
    naive_err = (naive.double() - reference).abs().max().item()
    t16, pair16 = _accumulate(dtype, None, increments, start)
    t8, pair8 = _accumulate(dtype, torch.int8, increments, start)
    pair16_err = (pair16 - reference).abs().max().item()
    pair8_err = (pair8 - reference).abs().max().item()
    # derived bound: each addition loses < u (zero on average, variance <= u^2/4) plus fp32
    # rounding <= 2^-24 |x|; over n steps and 2048 elements, 5 standard deviations suffice
    largest = reference.abs().max().item()
    quantum = residual_quantum(torch.tensor([largest], dtype=dtype)).item()
    bound = 5 * math.sqrt(steps) * quantum / 2 + steps * 2.0**-24 * largest
    assert pair8_err < bound, (pair8_err, bound)
    # what the network reads: the 16-bit part, within half an ulp (+ the pair's error), and
    # as close as with a 16-bit compensation. Measured pair errors: bf16 steady 2.6e-4 (16-bit
    # Kahan 1.6e-3: its bf16 arithmetic rounds the steady increment the same way each step),
    # bf16 noisy 2.3e-4 (2.6e-5); the 16-bit parts 4.3e-4 / 3.1e-4 (1.7e-3 / 2.5e-4)
    half_ulp = quantum * 2 ** (COMPENSATION_FRACTION_BITS - 1)
    t8_err = (t8 - reference).abs().max().item()
    t16_err = (t16 - reference).abs().max().item()
    assert t8_err < half_ulp + pair8_err
    assert t16_err < half_ulp + pair16_err
    assert t8_err < 1.5 * t16_err, (t8_err, t16_err)
    assert naive_err > 20 * pair8_err, (naive_err, pair8_err)


def test_round_to_nearest_would_drift_where_stochastic_rounding_does_not():
    # a steady increment of 1/3 of a quantum: deterministic rounding of the residual would
    # lose it entirely at every step; the stochastic rounding keeps it on average
    value = torch.ones(512, dtype=torch.bfloat16)
    residual = torch.zeros(512, dtype=torch.int8)
    quantum = residual_quantum(value[:1]).item()
    gen = torch.Generator().manual_seed(0)
    for _ in range(3000):
        compensated_add_(value, residual, torch.tensor(quantum / 3), generator=gen)
    total = compensated_value(value, residual).double()
    expected = 1 + 3000 * quantum / 3
    assert ((total - expected).abs() < 5 * math.sqrt(3000) * quantum / 2).all()


def test_non_finite_sums_store_zero_residual():
    value = torch.tensor([60000.0, 1.0], dtype=torch.float16)
    residual = torch.zeros(2, dtype=torch.int8)
    compensated_add_(value, residual, torch.tensor([10000.0, 1e-4]))
    assert torch.isinf(value[0]) and residual[0] == 0
    assert torch.isfinite(value[1])


def test_compensation_dtype_validation():
    check_compensation_dtype(None, torch.float32)
    check_compensation_dtype(torch.int8, torch.float16)
    with pytest.raises(ValueError, match=r"None .* or torch\.int8"):
        check_compensation_dtype(torch.float16)
    with pytest.raises(ValueError, match=r"float16 or torch\.bfloat16"):
        check_compensation_dtype(torch.int8, torch.float32)


@pytest.mark.parametrize("dtype", LOW)
def test_stochastic_add_is_exact_on_average_and_never_further_than_one_ulp(dtype):
    gen = torch.Generator().manual_seed(0)
    value = torch.ones(4096, dtype=dtype)
    ulp_above = residual_quantum(value[:1]).item() * 2**COMPENSATION_FRACTION_BITS
    # a third of an ulp: round-to-nearest would drop it every time
    for _ in range(30):
        stochastic_add_(value, torch.tensor(ulp_above / 3), generator=gen)
    expected = 1 + 30 * ulp_above / 3
    mean = value.double().mean().item()
    # each element is a sum of 30 unbiased roundings of variance <= ulp^2 / 4
    assert abs(mean - expected) < 5 * math.sqrt(30 / 4096) * ulp_above / 2
    assert ((value.double() - expected).abs() < 5 * math.sqrt(30) * ulp_above / 2).all()
    # one addition lands on one of the two neighbours of the exact sum
    exact = torch.randn(1000, generator=gen, dtype=torch.float64)
    start = exact.to(dtype)
    stepped = start.clone()
    stochastic_add_(stepped, (exact - start.double()).float(), generator=gen)
    below = torch.nextafter(stepped, torch.full_like(stepped, -math.inf)).double()
    above = torch.nextafter(stepped, torch.full_like(stepped, math.inf)).double()
    assert ((below <= exact) & (exact <= above)).all()


def test_stochastic_add_keeps_non_finite_values():
    value = torch.tensor([60000.0, math.inf, 1.0], dtype=torch.float16)
    stochastic_add_(value, torch.tensor([10000.0, 1.0, 1e-4]))
    assert torch.isinf(value[0]) and torch.isinf(value[1]) and torch.isfinite(value[2])
