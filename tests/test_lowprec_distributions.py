import math

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torchrl.modules.distributions import TanhNormal

from torchrl_seer.modules import StableNormal, StableTanhNormal, ThresholdedTanhTransform


def _reference_log_prob(x, loc, scale):
    x, loc, scale = (t.double() for t in (x, loc, scale))
    return -0.5 * ((x - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)


def test_stable_normal_finite_and_accurate_where_normal_underflows():
    # sigma in [1e-4, 7e-3]: sigma^2 is subnormal or zero in fp16, (x - mu)^2 underflows
    scale = torch.logspace(-4, math.log10(7e-3), 50).to(torch.float16)
    loc = torch.zeros(50, dtype=torch.float16)
    x = (0.5 * scale.float()).to(torch.float16)  # half a standard deviation away
    reference = _reference_log_prob(x, loc, scale)
    naive = torch.distributions.Normal(loc, scale).log_prob(x)
    stable = StableNormal(loc, scale).log_prob(x)
    assert torch.isfinite(stable).all()
    assert not torch.isfinite(naive).all()  # 0/0 where both squares underflow
    stable_err = (stable.double() - reference).abs()
    assert stable_err.max() < 0.02  # fp16 rounding of a value of magnitude ~10
    finite = torch.isfinite(naive)
    naive_err = (naive.double() - reference).abs()[finite]
    assert naive_err.max() > 10 * stable_err.max()


@settings(max_examples=50, deadline=None)
@given(
    loc=st.floats(-3, 3),
    log_scale=st.floats(-5, 2),
    z=st.floats(-4, 4),
)
def test_stable_normal_matches_fp64(loc, log_scale, z):
    scale = math.exp(log_scale)
    x = loc + z * scale
    args = [torch.tensor([v], dtype=torch.float16) for v in (x, loc, scale)]
    stable = StableNormal(args[1], args[2]).log_prob(args[0])
    reference = _reference_log_prob(*args)
    assert torch.isfinite(stable).all()
    assert (stable.double() - reference).abs().item() < 0.05 + 2e-3 * reference.abs().item()


def test_stable_normal_equals_normal_in_fp32():
    gen = torch.Generator().manual_seed(0)
    loc, scale = torch.randn(100, generator=gen), torch.rand(100, generator=gen) + 0.1
    x = torch.randn(100, generator=gen)
    torch.testing.assert_close(
        StableNormal(loc, scale).log_prob(x), torch.distributions.Normal(loc, scale).log_prob(x)
    )


def test_tanh_log_det_finite_for_large_preactivations():
    u = torch.tensor([-1000.0, -60.0, -20.0, -11.5, -10.0, 0.0, 10.0, 11.5, 20.0, 60.0, 1000.0])
    u16 = u.to(torch.float16).requires_grad_(True)
    transform = ThresholdedTanhTransform(threshold=10.0)
    log_det = transform.log_abs_det_jacobian(u16, transform(u16))
    assert torch.isfinite(log_det).all()
    log_det.sum().backward()
    assert torch.isfinite(u16.grad).all()
    reference = 2 * (math.log(2) - u.double() - F.softplus(-2 * u.double()))
    torch.testing.assert_close(log_det.double(), reference, rtol=2e-3, atol=0.05)


def test_softplus_default_threshold_overflows_when_exp_is_fp16():
    # The hazard the fix removes: with threshold 20, log1p(exp(x)) is evaluated for
    # x in (11.09, 20], and exp overflows fp16 there.
    x = torch.tensor([12.0, 19.0], dtype=torch.float16)
    assert not torch.isfinite(torch.log1p(torch.exp(x))).all()
    assert (x > 10.0).all()  # the thresholded softplus takes the linear branch here


def test_stable_tanh_normal_matches_tanh_normal_in_fp64():
    gen = torch.Generator().manual_seed(0)
    loc = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    scale = torch.rand(6, 3, generator=gen, dtype=torch.float64) + 0.05
    for low, high in ((-1.0, 1.0), (-2.0, 3.0)):
        ref = TanhNormal(loc, scale, low=low, high=high)
        ours = StableTanhNormal(loc, scale, low=low, high=high)
        sample = ref.sample()
        torch.testing.assert_close(ours.log_prob(sample), ref.log_prob(sample))
        assert isinstance(ours.root_dist, StableNormal)


def test_stable_tanh_normal_fp16_rsample_log_prob_finite():
    torch.manual_seed(0)
    loc = torch.randn(256, 2).mul(8).to(torch.float16)  # saturating tanh
    scale = torch.full((256, 2), math.exp(-5), dtype=torch.float16)  # log-std lower clamp
    dist = StableTanhNormal(loc, scale)
    action, log_prob = dist.rsample_and_log_prob()
    assert action.dtype == log_prob.dtype == torch.float16
    assert torch.isfinite(log_prob).all()


def test_stable_tanh_normal_switches_off_to_torchrl():
    loc, scale = torch.zeros(3), torch.ones(3)
    dist = StableTanhNormal(loc, scale, stable_normal=False, tanh_threshold=None)
    assert type(dist.root_dist) is torch.distributions.Normal
    assert not isinstance(dist.transforms[0], ThresholdedTanhTransform)
    dist.update(loc + 1, scale)  # in-place update keeps working
    assert torch.isfinite(dist.log_prob(dist.sample())).all()
