"""AcceRL Monitor: steps compression down on injected divergence and back up after recovery."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import MLP, ProbabilisticActor
from torchrl.record import CSVLogger

from torchrl_seer.collectors import CompressionMonitor, CompressionStep, PolicyCompressor


class InjectedNoise(CompressionStep):
    """A test compression whose error is set from outside (class attribute)."""

    scale = 0.0

    def spec(self):
        return "noise"

    def apply(self, module, *, plan=None):
        with torch.no_grad():
            last = [m for m in module.modules() if isinstance(m, nn.Linear)][-1]
            g = torch.Generator().manual_seed(0)
            last.weight.add_(self.scale * torch.randn(last.weight.shape, generator=g))
        return module, TensorDict()


def make_actor():
    torch.manual_seed(0)
    return ProbabilisticActor(
        TensorDictModule(
            MLP(in_features=4, out_features=3, num_cells=[32]),
            in_keys=["observation"],
            out_keys=["logits"],
        ),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )


@pytest.fixture
def batch():
    return TensorDict(observation=torch.randn(64, 4), batch_size=[64])


def test_monitor_steps_down_on_divergence_and_back_up_with_hysteresis(tmp_path, batch):
    logger = CSVLogger(exp_name="monitor", log_dir=str(tmp_path))
    ladder = [PolicyCompressor([InjectedNoise()]), PolicyCompressor.from_spec("bf16"), "fp32"]
    monitor = CompressionMonitor(
        make_actor(), ladder=ladder, kl_bound=0.05, patience=2, recover_patience=3, logger=logger
    )
    InjectedNoise.scale = 0.0
    for step in range(3):
        monitor.check(batch, step=step)
    assert monitor.level == 0 and not monitor.events

    InjectedNoise.scale = 5.0  # inject divergence
    monitor.check(batch, step=3)
    assert monitor.level == 0  # one diverged check is not enough (patience=2)
    monitor.check(batch, step=4)
    assert monitor.level == 1 and monitor.compressor.spec() == "bf16"
    assert monitor.events[-1]["direction"] == "down"

    # still diverging at the more compressed level: never step back up
    for step in range(5, 10):
        monitor.check(batch, step=step)
    assert monitor.level == 1

    # hysteresis: KL of the compressed candidate between recover_fraction*bound and bound
    InjectedNoise.scale = 0.0
    kl_probe = {}
    for scale in (0.05, 0.1, 0.2, 0.4, 0.8):
        InjectedNoise.scale = scale
        kl_probe[scale] = monitor._divergence(0, batch)["kl"]
    middle = [s for s, kl in kl_probe.items() if 0.5 * 0.05 < kl <= 0.05]
    if middle:
        InjectedNoise.scale = middle[0]
        for step in range(10, 16):
            monitor.check(batch, step=step)
        assert monitor.level == 1

    InjectedNoise.scale = 0.0  # recovery
    for step in range(16, 18):
        monitor.check(batch, step=step)
    assert monitor.level == 1  # recover_patience=3
    monitor.check(batch, step=18)
    assert monitor.level == 0 and monitor.events[-1]["direction"] == "up"

    logged = (tmp_path / "monitor" / "scalars" / "monitor" / "level.csv").read_text()
    assert len(logged.strip().splitlines()) == len(monitor.history)


def test_monitor_passive_mode_never_changes_level(batch):
    ladder = [PolicyCompressor([InjectedNoise()]), "fp32"]
    monitor = CompressionMonitor(make_actor(), ladder=ladder, patience=1, enabled=False)
    InjectedNoise.scale = 5.0
    for step in range(3):
        stats = monitor.check(batch, step=step)
    assert monitor.level == 0 and stats["monitor/kl"] > monitor.kl_bound
    InjectedNoise.scale = 0.0


def test_monitor_measures_ratios_lag_and_rates(batch):
    actor = make_actor()
    monitor = CompressionMonitor(actor)
    with torch.no_grad():
        data = actor(batch.clone())
    data["action_log_prob"] = data["action_log_prob"] - 0.5  # behaviour less likely: rho > 1
    data["policy_version"] = torch.full((64,), 3)
    monitor.record_actor(1000, 2.0)
    monitor.record_learner(10, 5.0, version=7)
    stats = monitor.check(data, step=0)
    assert stats["monitor/rho_mean"] == pytest.approx(torch.tensor(0.5).exp().item(), rel=1e-4)
    assert stats["monitor/rho_truncated_fraction"] == 1.0
    assert stats["monitor/policy_lag_mean"] == 4.0
    assert stats["monitor/actor_steps_per_s"] == 500.0
    assert stats["monitor/learner_updates_per_s"] == 2.0


def test_monitor_bad_configuration():
    with pytest.raises(ValueError, match="ladder"):
        CompressionMonitor(make_actor(), ladder=[])
    with pytest.raises(ValueError, match="start_level"):
        CompressionMonitor(make_actor(), start_level=5)
    with pytest.raises(TypeError, match="get_dist"):
        monitor = CompressionMonitor(TensorDictModule(nn.Linear(4, 3), ["observation"], ["y"]))
        monitor.check(TensorDict(observation=torch.randn(4, 4), batch_size=[4]), step=0)
