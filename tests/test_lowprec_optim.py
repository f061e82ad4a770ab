import copy
import math

import pytest
import torch

from torchrl_seer.optim import AmpStyleLossScaler, CompoundLossScaler, HAdam, LossScalingStepper


def _quadratic_problem(dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    target = torch.randn(64, generator=gen, dtype=torch.float64).to(dtype)
    scales = torch.logspace(-3, 2, 64, dtype=torch.float64).to(dtype)
    return target, scales


def _loss(weight, target, scales):
    return (scales * (weight - target) ** 2).sum()


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_hadam_equals_adam_with_rescaled_eps(amsgrad, weight_decay):
    betas = (0.9, 0.999)
    eps = 1e-9  # the hypot's mu / (M + eps) is exact for M >> eps
    adam_eps = eps * math.sqrt(1 - betas[1]) / (1 - betas[0])  # spec 2.1: ~0.316 eps
    target, scales = _quadratic_problem()
    w_h = torch.nn.Parameter(torch.zeros(64))
    w_a = torch.nn.Parameter(torch.zeros(64))
    hadam = HAdam([w_h], lr=1e-2, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)
    adam = torch.optim.Adam(
        [w_a], lr=1e-2, betas=betas, eps=adam_eps, weight_decay=weight_decay, amsgrad=amsgrad
    )
    for _ in range(200):
        for weight, opt in ((w_h, hadam), (w_a, adam)):
            opt.zero_grad()
            _loss(weight, target, scales).backward()
            opt.step()
    torch.testing.assert_close(w_h, w_a, rtol=1e-5, atol=1e-6)
    assert "exp_avg_sq" not in hadam.state[w_h]
    expected = {"step", "exp_avg", "exp_avg_hypot"} | ({"max_exp_avg_hypot"} if amsgrad else set())
    assert set(hadam.state[w_h]) == expected


def test_hadam_hypot_matches_sqrt_of_adam_second_moment():
    w = torch.nn.Parameter(torch.zeros(5))
    opt = HAdam([w], lr=1e-3, eps=1e-12)
    ref = torch.optim.Adam([torch.nn.Parameter(torch.zeros(5))], lr=1e-3)
    ref_param = ref.param_groups[0]["params"][0]
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        g = torch.randn(5, generator=gen) * 10
        w.grad, ref_param.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    c = (1 - 0.9) / math.sqrt(1 - 0.999)
    torch.testing.assert_close(
        opt.state[w]["exp_avg_hypot"],
        c * ref.state[ref_param]["exp_avg_sq"].sqrt(),
        rtol=1e-5,
        atol=0,
    )


def test_hadam_fp16_no_overflow_where_adam_fails():
    w_h = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    w_a = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    hadam = HAdam([w_h], lr=1e-3, eps=1e-4)
    adam = torch.optim.Adam([w_a], lr=1e-3)
    grad = torch.tensor([0.0, 1e-5, 1.0, 3000.0], dtype=torch.float16)  # 3000^2 overflows fp16
    w_h.grad, w_a.grad = grad.clone(), grad.clone()
    hadam.step()
    adam.step()
    assert torch.isfinite(w_h).all()
    assert not torch.isfinite(w_a).all()


def test_hadam_kahan_keeps_tiny_updates_in_fp16():
    # update lr=1e-4 is below half an ulp of 1.0 in fp16 (2**-11 ~ 4.9e-4)
    w_plain = torch.nn.Parameter(torch.ones(8, dtype=torch.float16))
    w_kahan = torch.nn.Parameter(torch.ones(8, dtype=torch.float16))
    w_ref = torch.nn.Parameter(torch.ones(8, dtype=torch.float64))
    opts = [
        HAdam([w_plain], lr=1e-4, eps=1e-4),
        HAdam([w_kahan], lr=1e-4, eps=1e-4, kahan=True),
        HAdam([w_ref], lr=1e-4, eps=1e-4),
    ]
    for _ in range(100):
        for w, opt in zip((w_plain, w_kahan, w_ref), opts, strict=False):
            w.grad = torch.ones_like(w)
            opt.step()
    err_plain = (w_plain.double() - w_ref).abs().max()
    err_kahan = (w_kahan.double() - w_ref).abs().max()
    assert err_plain > 5e-3  # the plain fp16 weight never moved
    assert err_kahan < 1e-3
    assert "kahan_compensation" in opts[1].state[w_kahan]


def test_hadam_rejects_eps_that_rounds_to_zero():
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float16))
    w.grad = torch.ones_like(w)
    with pytest.raises(ValueError, match="rounds to zero"):
        HAdam([w], eps=1e-8).step()


def test_hadam_invalid_arguments():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="lr"):
        HAdam([w], lr=-1.0)
    with pytest.raises(ValueError, match="betas"):
        HAdam([w], betas=(1.0, 0.9))


def _scaled_setup(init_scale=1e4, growth_interval=10_000, min_scale=1.0):
    w = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    opt = HAdam([w], lr=1e-3, eps=1e-8 * init_scale)
    return (
        w,
        opt,
        CompoundLossScaler(
            opt, init_scale=init_scale, growth_interval=growth_interval, min_scale=min_scale
        ),
    )


def test_compound_scaler_halves_on_injected_inf():
    w, opt, scaler = _scaled_setup()
    scaler.scale((w * 2).sum()).backward()
    assert scaler.step()
    opt.zero_grad()
    m, s = (opt.state[w][k].clone() for k in ("exp_avg", "exp_avg_hypot"))
    before = w.detach().clone()
    w.grad = torch.tensor([1.0, float("inf"), 1.0, 1.0], dtype=torch.float16)
    assert not scaler.step()
    assert scaler.loss_scale == 5e3
    assert opt.param_groups[0]["eps"] == pytest.approx(5e-5)
    torch.testing.assert_close(opt.state[w]["exp_avg"], m / 2)
    torch.testing.assert_close(opt.state[w]["exp_avg_hypot"], s / 2)
    torch.testing.assert_close(w.detach(), before)  # step skipped
    assert scaler.skipped_steps == 1 and scaler.finite_steps == 0


def test_compound_scaler_checks_headroom():
    # the check multiplies g by headroom * beta1 / sqrt(beta2) = 1.1 * 0.9005 = 0.99 in fp16
    w, _opt, scaler = _scaled_setup()
    w.grad = torch.full((4,), 65504.0, dtype=torch.float16)
    assert scaler.step()  # 65504 * 0.99 is finite
    w.grad = torch.full((4,), 65504.0, dtype=torch.float16)
    scaler.headroom = 1.2
    assert not scaler.step()


def test_compound_scaler_eps_floor():
    w, opt, scaler = _scaled_setup(init_scale=1e-1, min_scale=1e-3)  # the scale floor
    for _ in range(5):
        w.grad = torch.full_like(w, float("nan"))
        scaler.step()
    assert opt.param_groups[0]["eps"] == pytest.approx(1e-7)


def test_compound_scaler_doubles_after_n_finite_steps():
    w, opt, scaler = _scaled_setup(init_scale=1e3, growth_interval=5)
    for i in range(5):
        assert scaler.loss_scale == 1e3, f"grew too early, at step {i}"
        opt.zero_grad()
        scaler.scale((w**2).sum()).backward()
        assert scaler.step()
    # after the 5th finite step the scale and eps have doubled
    assert scaler.loss_scale == 2e3
    assert opt.param_groups[0]["eps"] == pytest.approx(2e-5)
    assert scaler.finite_steps == 0


def test_compound_scaler_growth_doubles_moments():
    w, opt, scaler = _scaled_setup(init_scale=1e3, growth_interval=1)
    scaler.scale((w**2).sum()).backward()
    # moments right after the optimizer step, before growth: recompute by hand
    grad = w.grad.clone()
    m_expected = 0.1 * grad
    assert scaler.step()
    torch.testing.assert_close(opt.state[w]["exp_avg"], 2 * m_expected)
    assert scaler.loss_scale == 2e3


def test_compound_scaler_no_growth_without_headroom():
    w, opt, scaler = _scaled_setup(init_scale=1e4, growth_interval=1)
    w.grad = torch.full_like(w, 60000.0)  # m = s = 6000: 2.2 * m is finite, so S doubles
    assert scaler.step()
    assert scaler.loss_scale == 2e4
    opt.state[w]["exp_avg"].fill_(40000.0)  # 2.2 * 40000 overflows fp16
    w.grad = torch.ones_like(w)
    assert scaler.step()
    assert scaler.loss_scale == 2e4


def test_compound_scaler_update_is_scale_invariant():
    ws = []
    for init_scale in (1.0, 1024.0):
        w = torch.nn.Parameter(torch.linspace(-1, 1, 8, dtype=torch.float64))
        opt = HAdam([w], lr=1e-2, eps=1e-8 * init_scale)
        scaler = CompoundLossScaler(opt, init_scale=init_scale)
        for _ in range(30):
            opt.zero_grad()
            scaler.scale((w**4).sum()).backward()
            scaler.step()
        ws.append(w.detach())
    torch.testing.assert_close(ws[0], ws[1], rtol=1e-10, atol=1e-12)


def test_compound_scaler_rejects_adam():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(TypeError, match="linear_moments"):
        CompoundLossScaler(torch.optim.Adam([w]))


def test_amp_style_scaler_unscales_and_underflows():
    w = torch.nn.Parameter(torch.ones(2, dtype=torch.float16))
    opt = torch.optim.SGD([w], lr=1.0)
    scaler = AmpStyleLossScaler(opt, init_scale=65536.0)
    w.grad = torch.tensor([1e-3, 1.0], dtype=torch.float16)  # a scaled gradient
    assert scaler.step()
    # 1e-3 / 65536 = 1.5e-8 underflows fp16: the naive unscale loses the small gradient
    assert w.detach()[0] == 1.0
    w.grad = torch.tensor([float("inf"), 1.0], dtype=torch.float16)
    assert not scaler.step()
    assert scaler.loss_scale == 32768.0


def test_stepper_state_dict_roundtrip():
    w, opt, scaler = _scaled_setup()
    stepper = LossScalingStepper({"loss_w": (opt, scaler)})
    from tensordict import TensorDict

    out = stepper.optimize(TensorDict({"loss_w": (w**2).sum()}, []))
    assert int(out["skipped_steps"]) == 0
    state = stepper.state_dict()
    _w2, opt2, scaler2 = _scaled_setup(init_scale=1.0)
    stepper2 = LossScalingStepper({"loss_w": (opt2, scaler2)})
    stepper2.load_state_dict(state)
    assert scaler2.loss_scale == scaler.loss_scale
    with pytest.raises(KeyError, match="loss_other"):
        LossScalingStepper({"loss_other": opt}).optimize(TensorDict({"loss_w": w.sum()}, []))


def test_hadam_slicing_and_non_contiguous_match_whole_tensor_update(monkeypatch):
    import torchrl_seer.optim.hadam as hadam_module

    gen = torch.Generator().manual_seed(0)
    base = torch.randn(6, 5, generator=gen, dtype=torch.float16)
    grads = [torch.randn(6, 5, generator=gen, dtype=torch.float16) for _ in range(5)]

    def run(chunk, transpose):
        monkeypatch.setattr(hadam_module, "_CHUNK", chunk)
        data = base.t().contiguous().t() if transpose else base.clone()
        w = torch.nn.Parameter(data)
        opt = HAdam([w], lr=1e-2, eps=1e-4, kahan=True)
        for g in grads:
            w.grad = g.t().contiguous().t() if transpose else g.clone()
            opt.step()
        return w.detach().contiguous()

    whole = run(1 << 17, transpose=False)
    assert torch.equal(run(7, transpose=False), whole)  # 30 elements in slices of 7
    assert torch.equal(run(7, transpose=True), whole)  # non-contiguous: processed whole


@pytest.mark.parametrize(
    ("dtype", "steps", "numel"), [(torch.bfloat16, 1500, 512), (torch.float16, 150, 64)]
)
def test_hadam_int8_kahan_tracks_the_exact_sum_of_its_updates(monkeypatch, dtype, steps, numel):
    import torchrl_seer.optim.hadam as hadam_module
    from torchrl_seer.optim import (
        COMPENSATION_FRACTION_BITS,
        compensated_add_,
        compensated_value,
        residual_quantum,
    )

    recorded = []

    def recording_add(value, compensation, increment, **kwargs):
        recorded.append(increment.double().clone())
        compensated_add_(value, compensation, increment, **kwargs)

    monkeypatch.setattr(hadam_module, "compensated_add_", recording_add)
    gen = torch.Generator().manual_seed(0)
    start = (torch.randn(numel, generator=gen, dtype=torch.float64) * 0.05).to(dtype)
    grads = [
        (torch.randn(numel, generator=gen, dtype=torch.float64) + 0.5).to(dtype)
        for _ in range(steps)
    ]

    def run(**kwargs):
        w = torch.nn.Parameter(start.clone())
        opt = HAdam([w], lr=1e-4, eps=1e-4, **kwargs)
        for g in grads:
            w.grad = g.clone()
            opt.step()
        return w.detach(), opt.state[w]

    recorded.clear()
    w16, _ = run(kahan=True)
    updates16 = list(recorded)
    recorded.clear()
    w8, state8 = run(kahan=True, compensation_dtype=torch.int8)
    assert state8["kahan_compensation"].dtype == torch.int8
    # m and s do not depend on the weights: both runs add the very same updates
    assert all(torch.equal(a, b) for a, b in zip(updates16, recorded, strict=True))
    w_plain, _ = run()
    reference = start.double() + torch.stack(recorded).sum(0)
    pair8 = compensated_value(w8, state8["kahan_compensation"]).double()
    pair8_err = (pair8 - reference).abs().max().item()
    largest = reference.abs().max().item()
    quantum = residual_quantum(torch.tensor([largest], dtype=dtype)).item()
    # each step loses < one quantum, zero on average (see test_lowprec_compensated_sum)
    assert pair8_err < 5 * math.sqrt(steps) * quantum / 2 + steps * 2.0**-24 * largest
    half_ulp = quantum * 2 ** (COMPENSATION_FRACTION_BITS - 1)
    err8 = (w8.double() - reference).abs().max().item()
    err16 = (w16.double() - reference).abs().max().item()
    err_plain = (w_plain.double() - reference).abs().max().item()
    assert err8 < half_ulp + pair8_err and err16 < half_ulp * 1.1, (err8, err16, half_ulp)
    assert err_plain > 3 * max(err8, err16), (err_plain, err8, err16)


def test_hadam_compensation_dtype_validation():
    w = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="compensation_dtype"):
        HAdam([w], kahan=True, compensation_dtype=torch.float16)
    w.grad = torch.ones_like(w)
    with pytest.raises(ValueError, match=r"float16 or torch\.bfloat16"):
        HAdam([w], kahan=True, compensation_dtype=torch.int8).step()


def test_hadam_stochastic_rounding_keeps_sub_ulp_updates_on_average(monkeypatch):
    import torchrl_seer.optim.hadam as hadam_module
    from torchrl_seer.optim import stochastic_add_

    recorded = []

    def recording_add(value, increment, **kwargs):
        recorded.append(increment.double().clone())
        stochastic_add_(value, increment, **kwargs)

    monkeypatch.setattr(hadam_module, "stochastic_add_", recording_add)
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.ones(2048, dtype=torch.bfloat16))
    opt = HAdam([w], lr=1e-4, eps=1e-4, stochastic_rounding=True)
    plain = torch.nn.Parameter(torch.ones(2048, dtype=torch.bfloat16))
    plain_opt = HAdam([plain], lr=1e-4, eps=1e-4)
    for _ in range(200):  # updates of ~1e-4, below half an ulp of 1.0 in bf16 (2**-9)
        w.grad, plain.grad = torch.ones_like(w), torch.ones_like(plain)
        opt.step()
        plain_opt.step()
    reference = 1 + torch.stack(recorded).sum(0)
    ulp = 2.0**-8  # bf16 spacing just below 1
    assert torch.equal(plain.detach(), torch.ones_like(plain))  # every update rounded away
    assert abs(w.double().mean().item() - reference.mean().item()) < 5 * math.sqrt(200 / 2048) * ulp
    assert set(opt.state[w]) == {"step", "exp_avg", "exp_avg_hypot"}  # no extra state
    with pytest.raises(ValueError, match="exclusive"):
        HAdam([w], kahan=True, stochastic_rounding=True)
    fp32 = torch.nn.Parameter(torch.ones(2))
    fp32.grad = torch.ones(2)
    with pytest.raises(ValueError, match=r"float16 or torch\.bfloat16"):
        HAdam([fp32], stochastic_rounding=True).step()


def test_hadam_int8_compensation_survives_a_state_dict_roundtrip():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(64, dtype=torch.bfloat16))
    opt = HAdam([w], lr=1e-3, eps=1e-4, kahan=True, compensation_dtype=torch.int8)
    for _ in range(5):
        w.grad = torch.randn_like(w)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())  # state_dict() shares the moment tensors
    other_w = torch.nn.Parameter(w.detach().clone())
    other = HAdam([other_w], lr=1e-3, eps=1e-4, kahan=True, compensation_dtype=torch.int8)
    other.load_state_dict(saved)  # torch casts floating-parameter state to the param dtype
    restored = other.state[other_w]["kahan_compensation"]
    assert restored.dtype == torch.int8
    assert torch.equal(restored, opt.state[w]["kahan_compensation"])
    grad = torch.randn_like(w)
    for weight, optimizer in ((w, opt), (other_w, other)):
        weight.grad = grad.clone()
        torch.manual_seed(1)
        optimizer.step()
    assert torch.equal(w, other_w)


def _second_moment_after_spike(dtype, **hadam_kwargs):
    """hAdam's s after one gradient of 10 then 1,000 gradients of 0.01 (beta2 = 0.998).

    sqrt(beta2) = 0.999 changes s by 1e-3, below half a bf16 ulp (2e-3 relative).
    """
    torch.manual_seed(0)
    weight = torch.nn.Parameter(torch.zeros(256, dtype=dtype))
    optimizer = HAdam([weight], lr=0.0, betas=(0.9, 0.998), **hadam_kwargs)
    for step in range(1001):
        weight.grad = torch.full_like(weight, 10.0 if step == 0 else 0.01)
        optimizer.step()
    return optimizer.state[weight]["exp_avg_hypot"].double()


def test_bf16_second_moment_decays_only_with_stochastic_decay():
    reference = _second_moment_after_spike(torch.float32).mean().item()
    stuck = _second_moment_after_spike(torch.bfloat16)
    decayed = _second_moment_after_spike(torch.bfloat16, stochastic_moment_decay=True)
    assert reference < 0.5  # fp32: s decays from its spike
    assert stuck.min().item() == pytest.approx(1.0, rel=0.01)  # round-to-nearest: never decays
    assert decayed.mean().item() == pytest.approx(reference, rel=0.1)
    fp32_weight = torch.nn.Parameter(torch.zeros(2))
    fp32_weight.grad = torch.ones(2)
    with pytest.raises((TypeError, ValueError), match=r"float16|bfloat16"):
        HAdam([fp32_weight], stochastic_moment_decay=True).step()
