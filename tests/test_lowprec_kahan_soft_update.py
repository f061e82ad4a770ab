import pytest
import torch
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import DQNLoss, SoftUpdate

from torchrl_seer.objectives import KahanSoftUpdate


def _loss(dtype, seed=0):
    torch.manual_seed(seed)
    net = MLP(in_features=4, out_features=3, num_cells=[32]).to(dtype)
    value = ValueOperator(net, in_keys=["observation"], out_keys=["action_value"])
    return DQNLoss(value, action_space="one-hot", delay_value=True)


def _drift(loss, gen):
    # a slow random walk of the online weights, like an optimizer with a small lr
    with torch.no_grad():
        for p in loss.value_network_params.values(True, True):
            step = torch.randn(p.shape, generator=gen, dtype=torch.float64) * 1e-3 + 2e-4
            p.data.copy_((p.double() + step).to(p.dtype))


def _run(dtype_updater_pairs, steps=3000):
    """Drive fp64 reference + low-precision copies with identical online weights."""
    reference = _loss(torch.float64)
    ref_updater = SoftUpdate(reference, tau=0.005)
    copies = []
    for dtype, make in dtype_updater_pairs:
        loss = _loss(dtype)
        copies.append((loss, make(loss)))
    gen = torch.Generator().manual_seed(1)
    for _ in range(steps):
        _drift(reference, gen)
        for loss, _ in copies:
            with torch.no_grad():
                for src, dst in zip(
                    reference.value_network_params.values(True, True),
                    loss.value_network_params.values(True, True),
                    strict=False,
                ):
                    dst.data.copy_(src.to(dst.dtype))
        ref_updater.step()
        for _, updater in copies:
            updater.step()
    errors = []
    ref_target = torch.cat(
        [t.flatten() for t in reference.target_value_network_params.values(True, True)]
    )
    for loss, _ in copies:
        target = torch.cat(
            [t.double().flatten() for t in loss.target_value_network_params.values(True, True)]
        )
        errors.append((target - ref_target).abs().max().item())
    return errors


def test_kahan_soft_update_tracks_fp64_far_better_than_naive():
    configs = [(torch.float16, 1e4), (torch.bfloat16, 1.0)]
    pairs = []
    for dtype, scale in configs:
        pairs.append((dtype, lambda loss: SoftUpdate(loss, tau=0.005)))
        pairs.append((dtype, lambda loss, s=scale: KahanSoftUpdate(loss, tau=0.005, scale=s)))
    errors = _run(pairs, steps=2000)
    for i, (dtype, _) in enumerate(configs):
        naive_err, kahan_err = errors[2 * i], errors[2 * i + 1]
        assert kahan_err < torch.finfo(dtype).eps, (dtype, kahan_err)  # rounding of the target
        assert naive_err > 10 * kahan_err, (dtype, naive_err, kahan_err)


def test_kahan_soft_update_scale_one_allocates_no_scaled_copy():
    loss = _loss(torch.bfloat16)
    updater = KahanSoftUpdate(loss, tau=0.005, scale=1.0)
    assert updater._scaled_targets is updater._targets
    scaled = KahanSoftUpdate(_loss(torch.float16), tau=0.005, scale=1e4)
    assert scaled._scaled_targets is not scaled._targets


def test_kahan_soft_update_overflow_hazard_detected():
    loss = _loss(torch.float16)
    with torch.no_grad():
        next(iter(loss.value_network_params.values(True, True))).data[0] = 7.0  # > 65504 / 1e4
    with pytest.raises(OverflowError, match="scale <"):
        KahanSoftUpdate(loss, tau=0.005, scale=1e4)
    ok = _loss(torch.float16)
    updater = KahanSoftUpdate(ok, tau=0.005, scale=1e4)
    with torch.no_grad():
        next(iter(ok.value_network_params.values(True, True))).data[0] = 7.0
    with pytest.raises(OverflowError):
        updater.step()


def test_kahan_soft_update_state_dict_roundtrip():
    loss = _loss(torch.float16)
    updater = KahanSoftUpdate(loss, tau=0.005, scale=1e3)
    with torch.no_grad():
        for p in loss.value_network_params.values(True, True):
            p.data.add_(0.01)
    for _ in range(3):
        updater.step()
    state = updater.state_dict()
    assert {"compensation", "scaled_targets", "initialized"} <= set(state)
    other = KahanSoftUpdate(_loss(torch.float16), tau=0.005, scale=1e3)
    other.load_state_dict(state)
    for a, b in zip(
        other._compensation.values(True, True),
        updater._compensation.values(True, True),
        strict=False,
    ):
        torch.testing.assert_close(a, b)


def test_kahan_soft_update_argument_errors():
    with pytest.raises(ValueError, match="scale"):
        KahanSoftUpdate(_loss(torch.float16), tau=0.005, scale=0.0)
    with pytest.raises(ValueError, match="One and only one"):
        KahanSoftUpdate(_loss(torch.float16), tau=0.005, eps=0.995)
