import pytest
import torch
from tensordict import TensorDictBase
from torchrl.modules import MLP, ValueOperator
from torchrl.objectives import DQNLoss, SoftUpdate

from torchrl_seer.objectives import KahanSoftUpdate
from torchrl_seer.optim import COMPENSATION_FRACTION_BITS, compensated_value, residual_quantum

TAU = 0.005


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


def _flat(tensors):
    return torch.cat([t.double().flatten() for t in tensors])


def _pair_value(updater):
    """The value each (target, compensation) pair represents, in target units."""
    pairs = []
    targets = updater._targets.values(True, True)
    for target, comp in zip(targets, updater._compensation.values(True, True), strict=True):
        if comp.dtype == torch.int8:
            pairs.append(compensated_value(target, comp))
        else:
            scaled = target * updater.scale if updater.scale != 1.0 else target
            pairs.append(compensated_value(scaled, comp) / updater.scale)
    return _flat(pairs)


def _run(dtype_updater_pairs, steps):
    """Drive an fp64 reference and low-precision copies with identical online weights.

    Returns per copy (max |target - ref|, max |pair - ref| or None, max |ref|).
    """
    reference = _loss(torch.float64)
    ref_updater = SoftUpdate(reference, tau=TAU)
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
                    strict=True,
                ):
                    dst.data.copy_(src.to(dst.dtype))
        ref_updater.step()
        for _, updater in copies:
            updater.step()
    ref_target = _flat(reference.target_value_network_params.values(True, True))
    results = []
    for loss, updater in copies:
        target = _flat(loss.target_value_network_params.values(True, True))
        pair_err = None
        if isinstance(updater, KahanSoftUpdate):
            pair_err = (_pair_value(updater) - ref_target).abs().max().item()
        results.append(
            ((target - ref_target).abs().max().item(), pair_err, ref_target.abs().max().item())
        )
    return results


@pytest.mark.parametrize(
    ("dtype", "scale", "steps"), [(torch.bfloat16, 1.0, 2000), (torch.float16, 1e4, 400)]
)
def test_kahan_soft_update_int8_tracks_fp64_like_16bit_and_far_better_than_naive(
    dtype, scale, steps
):
    results = _run(
        [
            (dtype, lambda loss: SoftUpdate(loss, tau=TAU)),
            (dtype, lambda loss: KahanSoftUpdate(loss, tau=TAU, scale=scale)),
            (
                dtype,
                lambda loss: KahanSoftUpdate(
                    loss, tau=TAU, scale=1.0, compensation_dtype=torch.int8
                ),
            ),
        ],
        steps=steps,
    )
    (naive, _, largest), (kahan16, _, _), (kahan8, pair8, _) = results
    eps = torch.finfo(dtype).eps  # ulp(1); targets stay below 2 in magnitude
    assert largest < 2
    # the 16-bit target the network reads is a rounding of the tracked sum
    assert kahan16 < eps, kahan16
    assert kahan8 < eps, kahan8
    assert naive > 10 * max(kahan16, kahan8), (naive, kahan16, kahan8)
    # the int8 pair: each step loses less than one quantum u = ulp/2^k <= eps/2^k (zero on
    # average) and the soft update contracts errors by (1 - tau): in steady state the error
    # is at most u/tau in the worst case, ~u/sqrt(2 tau) = 10 u typically
    quantum = eps / 2**COMPENSATION_FRACTION_BITS
    assert pair8 < quantum / TAU, (pair8, quantum / TAU)
    assert pair8 < 0.1 * eps, pair8  # well inside the target's own half-ulp rounding


def test_one_persistent_copy_matches_two_copy_reference_update():
    """For a power-of-two scale the one-copy update is the paper's two-copy update, bit for bit;
    for s = 1e4 both track the fp64 soft update to within two ulps of the target."""
    for scale, exact in ((2.0**13, True), (1e4, False)):
        loss = _loss(torch.float16)
        updater = KahanSoftUpdate(loss, tau=TAU, scale=scale)
        source = loss.value_network_params
        target = loss.target_value_network_params
        # the paper's algorithm, with a persistent scaled copy
        scaled = target.apply(lambda t, s=scale: t.data * s)
        comp = target.apply(lambda t: torch.zeros_like(t.data))
        two_copy = target.apply(lambda t: t.data.clone())
        fp64 = target.apply(lambda t: t.data.double())
        gen = torch.Generator().manual_seed(3)
        for _ in range(300):
            _drift(loss, gen)
            with torch.no_grad():
                u = (source.data * scale - scaled) * TAU
                y = u - comp
                total = scaled + y
                comp.copy_((total - scaled) - y)
                scaled.copy_(total)
                two_copy.copy_(scaled / scale)
                fp64.lerp_(source.data.double(), TAU)
            updater.step()
        leaves = zip(
            target.values(True, True),
            two_copy.values(True, True),
            fp64.values(True, True),
            strict=True,
        )
        for ours, ref, ref64 in leaves:
            if exact:
                assert torch.equal(ours.data, ref)
            else:  # a non-power-of-two scale rounds in t / s and s * t: measured ~1.3 ulp
                ulp = residual_quantum(ref).double() * 2**COMPENSATION_FRACTION_BITS
                ours_err = ((ours.data.double() - ref64).abs() / ulp).max()
                two_copy_err = ((ref.double() - ref64).abs() / ulp).max()
                assert ours_err <= 2 and two_copy_err <= 2, (ours_err, two_copy_err)
                assert ours_err <= two_copy_err + 0.5, (ours_err, two_copy_err)


def test_persistent_state_is_target_plus_compensation():
    for dtype, scale, comp_dtype in (
        (torch.float16, 1e4, None),
        (torch.bfloat16, 1.0, None),
        (torch.float16, 1.0, torch.int8),
        (torch.bfloat16, 1.0, torch.int8),
    ):
        loss = _loss(dtype)
        updater = KahanSoftUpdate(loss, tau=TAU, scale=scale, compensation_dtype=comp_dtype)
        updater.step()
        # every tensor the updater holds that the loss module does not
        owned = {t.data_ptr() for t in loss.parameters()} | {t.data_ptr() for t in loss.buffers()}
        extra = [
            name
            for name, value in vars(updater).items()
            if isinstance(value, TensorDictBase)
            and any(t.data_ptr() not in owned for t in value.values(True, True))
        ]
        assert extra == ["_compensation"], extra
        comps = list(updater._compensation.values(True, True))
        targets = list(loss.target_value_network_params.values(True, True))
        assert [c.dtype for c in comps] == [comp_dtype or dtype] * len(targets)
        assert [c.shape for c in comps] == [t.shape for t in targets]


def test_int8_compensation_needs_no_scale_and_lifts_the_fp16_overflow_hazard():
    loss = _loss(torch.float16)
    with torch.no_grad():
        next(iter(loss.value_network_params.values(True, True))).data[0] = 7.0  # > 65504 / 1e4
    updater = KahanSoftUpdate(loss, tau=TAU, scale=1.0, compensation_dtype=torch.int8)
    for _ in range(3):
        updater.step()
    with pytest.raises(ValueError, match=r"scale=1\.0"):
        KahanSoftUpdate(_loss(torch.float16), tau=TAU, scale=1e4, compensation_dtype=torch.int8)
    with pytest.raises(ValueError, match=r"float16 or torch\.bfloat16"):
        KahanSoftUpdate(_loss(torch.float32), tau=TAU, scale=1.0, compensation_dtype=torch.int8)
    with pytest.raises(ValueError, match="compensation_dtype"):
        KahanSoftUpdate(_loss(torch.float16), tau=TAU, compensation_dtype=torch.int16)


def test_kahan_soft_update_overflow_hazard_detected():
    loss = _loss(torch.float16)
    with torch.no_grad():
        next(iter(loss.value_network_params.values(True, True))).data[0] = 7.0  # > 65504 / 1e4
    with pytest.raises(OverflowError, match="scale <"):
        KahanSoftUpdate(loss, tau=TAU, scale=1e4)
    ok = _loss(torch.float16)
    updater = KahanSoftUpdate(ok, tau=TAU, scale=1e4)
    _drift(ok, torch.Generator().manual_seed(0))  # every leaf has an increment to write
    with torch.no_grad():
        list(ok.value_network_params.values(True, True))[-1].data[0] = 7.0  # the last leaf
    targets = [t.data.clone() for t in ok.target_value_network_params.values(True, True)]
    with pytest.raises(OverflowError, match="no target was updated"):
        updater.step()
    leaves = ok.target_value_network_params.values(True, True)
    assert all(torch.equal(t.data, before) for t, before in zip(leaves, targets, strict=True))


@pytest.mark.parametrize("comp_dtype", [None, torch.int8])
def test_kahan_soft_update_state_dict_roundtrip(comp_dtype):
    scale = 1e3 if comp_dtype is None else 1.0

    def make():
        return KahanSoftUpdate(
            _loss(torch.float16), tau=TAU, scale=scale, compensation_dtype=comp_dtype
        )

    updater = make()
    with torch.no_grad():
        for p in updater.loss_module.value_network_params.values(True, True):
            p.data.add_(0.01)
    for _ in range(3):
        updater.step()
    state = updater.state_dict()
    assert set(state) == {"compensation", "initialized"}
    other = make()
    other.load_state_dict(state)
    for a, b in zip(
        other._compensation.values(True, True),
        updater._compensation.values(True, True),
        strict=True,
    ):
        assert a.dtype == (comp_dtype or torch.float16)
        torch.testing.assert_close(a, b)


def test_kahan_soft_update_argument_errors():
    with pytest.raises(ValueError, match="scale"):
        KahanSoftUpdate(_loss(torch.float16), tau=TAU, scale=0.0)
    with pytest.raises(ValueError, match="One and only one"):
        KahanSoftUpdate(_loss(torch.float16), tau=TAU, eps=0.995)
