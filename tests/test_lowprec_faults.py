"""Fault injection into the low-precision learner, in every preset of LowPrecisionSACLoss.

NaN/inf in observations and rewards, rewards beyond the dtype's range, inf gradients: no
parameter (networks, targets, log-alpha) may ever hold a non-finite value, and every faulty
step must be skipped and counted. fp16 has no fast CPU kernels: networks and batches are tiny.
"""

import warnings

import pytest
import torch
from test_lowprec_sac_loss import _batch, _networks

from torchrl_seer.objectives import PRECISION_PRESETS, LowPrecisionSACLoss
from torchrl_seer.optim import (
    NONFINITE_INPUTS_KEY,
    AmpStyleLossScaler,
    CompoundLossScaler,
    HAdam,
    LossScalingStepper,
    all_finite,
    finite_step,
)

FAULTS = [
    "nan_observation",
    "inf_next_observation",
    "nan_reward",
    "inf_reward",
    "reward_1e6",  # beyond fp16 (65504): inf once cast
    "reward_1e39",  # beyond bf16 and fp32
    "inf_gradient",
]
BAD_BATCH = {
    "nan_observation": True,
    "inf_next_observation": True,
    "nan_reward": True,
    "inf_reward": True,
    "reward_1e39": True,
    "inf_gradient": False,
}


def _all_parameters(loss):
    return [
        *loss.actor_network_params.values(True, True),
        *loss.qvalue_network_params.values(True, True),
        *loss.target_qvalue_network_params.values(True, True),
        loss.log_alpha,
    ]


def _inject(batch, loss, fault):
    """Corrupts ``batch`` (or the next backward pass); returns a hook handle to remove."""
    reward = batch.get(("next", "reward"))
    if fault == "nan_observation":
        batch["observation"][0, 0] = float("nan")
    elif fault == "inf_next_observation":
        batch["next", "observation"][1, 2] = float("inf")
    elif fault == "nan_reward":
        reward[0] = float("nan")
    elif fault == "inf_reward":
        reward[0] = float("inf")
    elif fault == "reward_1e6":
        reward[0] = 1e6
    elif fault == "reward_1e39":
        batch.set(("next", "reward"), reward.double())
        batch["next", "reward"][0] = 1e39
    elif fault == "inf_gradient":
        critic_weight = next(iter(loss.qvalue_network_params.values(True, True)))
        return critic_weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    return None


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("preset", list(PRECISION_PRESETS))
def test_faults_are_skipped_and_counted_and_parameters_stay_finite(preset, fault):
    actor, qvalue, _ = _networks(hidden=8)
    loss = LowPrecisionSACLoss(actor, qvalue, **PRECISION_PRESETS[preset], alpha_init=0.1)
    loss.make_value_estimator(gamma=0.99)
    stepper = loss.make_optimization_stepper(lr=1e-3)
    updater = loss.make_target_updater(tau=0.005)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for step in range(3):
            batch = _batch(8, seed=step)
            before_skips = dict(stepper.skipped_steps)
            before = [p.detach().clone() for p in _all_parameters(loss)]
            handle = _inject(batch, loss, fault) if step == 1 else None
            losses = loss(batch)
            metrics = stepper.optimize(losses)
            if handle is not None:
                handle.remove()
            updater.step()
            assert all(bool(torch.isfinite(p).all()) for p in _all_parameters(loss)), step
            if step != 1:
                continue
            cast_overflows = fault == "reward_1e6" and loss.dtype == torch.float16
            if BAD_BATCH.get(fault, False) or cast_overflows:
                # the whole update is skipped, counted, and the networks are untouched
                assert int(losses[NONFINITE_INPUTS_KEY]) >= 1
                assert int(metrics["skipped_steps"]) == len(stepper.optimizers)
                assert stepper.skipped_updates == 1
                online = before[
                    : -len(list(loss.target_qvalue_network_params.values(True, True))) - 1
                ]
                for old, new in zip(online, _all_parameters(loss), strict=False):
                    assert torch.equal(old, new.detach())
            elif fault == "inf_gradient":
                assert int(losses[NONFINITE_INPUTS_KEY]) == 0
                assert stepper.skipped_steps["loss_qvalue"] == before_skips["loss_qvalue"] + 1
            else:  # a reward of 1e6 fits bf16 and fp32: an ordinary (large) target
                assert int(losses[NONFINITE_INPUTS_KEY]) == 0
                assert stepper.skipped_updates == 0


def test_fp16_huge_reward_never_makes_an_infinite_target_train():
    # smooth-L1 keeps the gradient of an infinite target finite (+-1): it used to train
    actor, qvalue, _ = _networks(hidden=8)
    loss = LowPrecisionSACLoss(actor, qvalue, **PRECISION_PRESETS["fp16"], alpha_init=0.1)
    stepper = loss.make_optimization_stepper(lr=1e-3)
    critic = [p.detach().clone() for p in loss.qvalue_network_params.values(True, True)]
    batch = _batch(8)
    batch["next", "reward"][:] = 1e6
    losses = loss(batch)
    assert int(losses[NONFINITE_INPUTS_KEY]) == 8
    stepper.optimize(losses)
    after = loss.qvalue_network_params.values(True, True)
    assert all(torch.equal(a, b.detach()) for a, b in zip(critic, after, strict=True))
    assert stepper.skipped_updates == 1
    assert stepper.state_dict()["skipped_updates"] == 1


@pytest.mark.parametrize("scaler_cls", [CompoundLossScaler, AmpStyleLossScaler])
def test_scaler_stops_at_its_floor_and_training_resumes(scaler_cls):
    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.float16))
    if scaler_cls is CompoundLossScaler:
        optimizer = HAdam([weight], lr=1e-2, eps=1e-4)
    else:
        optimizer = torch.optim.SGD([weight], lr=1e-2)
    scaler = scaler_cls(optimizer, init_scale=1e4, growth_interval=3, min_scale=2.0)
    with pytest.warns(RuntimeWarning, match="reached its floor min_scale=2") as record:
        for _ in range(2000):  # a long run of non-finite steps
            weight.grad = torch.full_like(weight, float("nan"))
            assert not scaler.step()
    assert len(record) == 1  # said once, on arrival
    assert scaler.loss_scale == 2.0 and scaler.skipped_steps == 2000
    assert torch.equal(weight.detach(), torch.ones(4, dtype=torch.float16))
    for _ in range(3):  # finite again: the steps apply and the scale grows back
        optimizer.zero_grad()
        scaler.scale((weight**2).sum()).backward()
        assert scaler.step()
    assert scaler.loss_scale == 4.0
    assert bool((weight.detach() < 1).all())
    if scaler_cls is CompoundLossScaler:
        assert optimizer.param_groups[0]["eps"] > 0


def test_scaler_floor_is_validated():
    weight = torch.nn.Parameter(torch.ones(1))
    with pytest.raises(ValueError, match="min_scale"):
        CompoundLossScaler(HAdam([weight]), init_scale=1e4, min_scale=0.0)
    with pytest.raises(ValueError, match="min_scale"):
        AmpStyleLossScaler(torch.optim.Adam([weight]), init_scale=8.0, min_scale=16.0)


def test_fp16_learner_recovers_after_a_long_run_of_overflows():
    actor, qvalue, _ = _networks(hidden=8)
    loss = LowPrecisionSACLoss(actor, qvalue, **PRECISION_PRESETS["fp16"], alpha_init=0.1)
    stepper = loss.make_optimization_stepper(lr=1e-3, growth_interval=2)
    critic_weight = next(iter(loss.qvalue_network_params.values(True, True)))
    scaler = stepper.scalers["loss_qvalue"]
    handle = critic_weight.register_hook(lambda grad: torch.full_like(grad, float("inf")))
    with pytest.warns(RuntimeWarning, match="floor"):
        for step in range(20):  # 1e4 halves to the floor of 1 in 14 steps
            stepper.optimize(loss(_batch(8, seed=step)))
    handle.remove()
    assert scaler.loss_scale == 1.0 and stepper.skipped_steps["loss_qvalue"] == 20
    before = critic_weight.detach().clone()
    metrics = stepper.optimize(loss(_batch(8, seed=99)))
    assert int(metrics["skipped_steps"]) == 0 and not torch.equal(before, critic_weight.detach())
    stepper.optimize(loss(_batch(8, seed=100)))
    assert scaler.loss_scale == 2.0  # growing back
    assert all(bool(torch.isfinite(p).all()) for p in _all_parameters(loss))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_all_finite_finds_any_non_finite_value_and_checks_headroom(dtype, bad):
    clean = [torch.zeros(0, dtype=dtype), torch.linspace(-3, 2, 7, dtype=dtype)]
    assert all_finite(clean) and all_finite([])
    for position in (0, 3, 6):
        tainted = clean[1].clone()
        tainted[position] = bad
        assert not all_finite([*clean, tainted])
    peak = torch.finfo(dtype).max / 2
    near_limit = [torch.tensor([-peak, 1.0], dtype=dtype)]  # the negative peak counts too
    assert all_finite(near_limit, factor=1.5) and not all_finite(near_limit, factor=2.5)


def test_finite_step_undoes_an_overflowing_update_and_its_state():
    weight = torch.nn.Parameter(torch.full((3,), 60000.0, dtype=torch.float16))
    optimizer = torch.optim.Adam([weight], lr=1e4)
    weight.grad = torch.tensor([-1.0, 0.0, 0.0], dtype=torch.float16)
    assert not finite_step(optimizer)  # 60000 + 1e4 overflows
    assert torch.equal(weight.detach(), torch.full((3,), 60000.0, dtype=torch.float16))
    assert optimizer.state == {} or all(not s for s in optimizer.state.values())


def test_unscaled_stepper_skips_nonfinite_gradients_and_updates():
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    stepper = LossScalingStepper({"loss_w": optimizer})
    from tensordict import TensorDict

    losses = TensorDict({"loss_w": (weight * float("inf")).sum()}, [])
    assert int(stepper.optimize(losses)["skipped_steps"]) == 1  # non-finite loss
    grad_fault = weight.register_hook(lambda grad: grad * float("nan"))
    assert int(stepper.optimize(TensorDict({"loss_w": weight.sum()}, []))["skipped_steps"]) == 1
    grad_fault.remove()
    assert stepper.skipped_steps == {"loss_w": 2}
    assert torch.equal(weight.detach(), torch.ones(2))
    assert int(stepper.optimize(TensorDict({"loss_w": weight.sum()}, []))["skipped_steps"]) == 0
    assert torch.equal(weight.detach(), torch.zeros(2))


def test_kahan_target_update_refuses_an_overflowing_step_before_writing():
    # the scaled fp16 target (s = 1e4) overflows for weights above 6.55: the error used to come
    # after the step, leaving inf in the targets
    actor, qvalue, _ = _networks(hidden=8)
    loss = LowPrecisionSACLoss(actor, qvalue, **PRECISION_PRESETS["fp16"], alpha_init=0.1)
    updater = loss.make_target_updater(tau=0.005)
    source = next(iter(loss.qvalue_network_params.values(True, True)))
    with torch.no_grad():
        source.data[0] = 7.0
    targets = [t.detach().clone() for t in loss.target_qvalue_network_params.values(True, True)]
    with pytest.raises(OverflowError, match="no target was updated"):
        updater.step()
    after = list(loss.target_qvalue_network_params.values(True, True))
    assert all(torch.equal(a, b.detach()) for a, b in zip(targets, after, strict=True))
