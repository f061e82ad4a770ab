"""ParameterConvergence: both statistics, watch-only use in the freeze hook, exact restore."""

import pytest
import torch
from torch import nn

from torchrl_seer.trainers import CONVERGENCE_STATISTICS, ParameterConvergence


def walk(
    layer: nn.Linear, criterion: ParameterConvergence, steps: int, *, drift: float, noise: float
):
    """Moves the layer by ``drift`` (one direction) plus Gaussian ``noise`` per check."""
    gen = torch.Generator().manual_seed(0)
    direction = torch.ones_like(layer.weight) / layer.weight.numel() ** 0.5
    fired = []
    for step in range(steps):
        with torch.no_grad():
            layer.weight.add_(
                drift * direction + noise * torch.randn(layer.weight.shape, generator=gen)
            )
        fired.append(criterion.update(step))
    return fired


def test_drift_ratio_is_one_for_directed_motion_and_about_inverse_sqrt_window_for_jitter():
    window = 16
    directed = nn.Linear(64, 64)
    crit = ParameterConvergence(
        directed.parameters(), check_interval=1, statistic="drift_ratio", window=window
    )
    assert not any(walk(directed, crit, 40, drift=1.0, noise=0.0))
    assert all(value == pytest.approx(1.0, abs=1e-5) for _, value in crit.history)
    assert crit.history[0][0] == window  # defined once the window is full
    jitter = nn.Linear(64, 64)
    crit = ParameterConvergence(
        jitter.parameters(), check_interval=1, statistic="drift_ratio", window=window
    )
    fired = walk(jitter, crit, 40, drift=0.0, noise=0.01)
    values = [value for _, value in crit.history]
    assert all(abs(v - window**-0.5) < 0.05 for v in values)
    assert fired[window + 2] and crit.fired_at == window + 2  # patience 3 from the first value


def test_relative_change_never_fires_at_an_adam_like_noise_floor_where_drift_ratio_does():
    """Constant-size steps in random directions: r stays at its floor, d falls to ~1/sqrt(k)."""
    layer = nn.Linear(32, 32)
    relative = ParameterConvergence(layer.parameters(), check_interval=1)
    drift = ParameterConvergence(layer.parameters(), check_interval=1, statistic="drift_ratio")
    gen = torch.Generator().manual_seed(1)
    for step in range(30):
        with torch.no_grad():
            layer.weight.add_(0.05 * torch.randn(layer.weight.shape, generator=gen).sign())
        relative.update(step)
        drift.update(step)
    assert relative.fired_at is None and min(v for _, v in relative.history) > 0.1
    assert drift.fired_at is not None


def test_restore_continues_exactly_and_keeps_the_trajectory():
    torch.manual_seed(0)
    layer = nn.Linear(8, 8)
    kwargs = dict(check_interval=2, statistic="drift_ratio", window=3, keep_trajectory=True)
    straight = ParameterConvergence(layer.parameters(), **kwargs)
    moves = [torch.randn(8, 8) for _ in range(12)]
    restored = None
    for step, move in enumerate(moves):
        with torch.no_grad():
            layer.weight.add_(move)
        straight.update(2 * step)
        if step == 5:
            restored = ParameterConvergence(layer.parameters(), **kwargs)
            restored.load_state_dict(straight.state_dict())
        elif restored is not None:
            restored.update(2 * step)
    assert restored.history == straight.history
    assert (
        [s for s, _ in restored.trajectory]
        == [s for s, _ in straight.trajectory]
        == list(range(0, 24, 2))
    )
    assert all(
        torch.equal(a, b)
        for (_, a), (_, b) in zip(restored.trajectory, straight.trajectory, strict=True)
    )


def test_bad_arguments_are_refused():
    layer = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="statistic must be one of"):
        ParameterConvergence(layer.parameters(), statistic="norm")
    with pytest.raises(ValueError, match="window"):
        ParameterConvergence(layer.parameters(), statistic="drift_ratio", window=0)
    assert (
        ParameterConvergence(layer.parameters(), statistic="drift_ratio").threshold
        == CONVERGENCE_STATISTICS["drift_ratio"]
    )


def test_checks_before_min_step_do_not_count():
    """Before learning starts nothing moves (statistic 0): that is not convergence."""
    layer = nn.Linear(4, 4)
    criterion = ParameterConvergence(layer.parameters(), check_interval=1, patience=2, min_step=5)
    assert not any(criterion.update(step) for step in range(6))  # still, then step 5 counts once
    assert [v for _, v in criterion.history] == [0.0] * 5
    assert criterion.update(6) and criterion.fired_at == 6
