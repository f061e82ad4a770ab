"""AcceRL with overlapped acting: workers act while the learner learns (MultiAsyncCollector)."""

import json

import pytest
import torch
from _recipes import run_recipe
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.collectors import MultiAsyncCollector
from torchrl.envs import GymEnv
from torchrl.modules import MLP, ProbabilisticActor

from torchrl_seer.collectors import (
    CompressedPolicy,
    CompressedWeightSyncScheme,
    CompressionMonitor,
    PolicyCompressor,
    fallback_ladder,
)
from torchrl_seer.trainers.helpers.accerl import make_actor_collector, ship_weights


def make_env(seed):
    env = GymEnv("CartPole-v1", categorical_action_encoding=True)
    env.set_seed(seed)
    return env


def make_actor():
    torch.manual_seed(0)
    return ProbabilisticActor(
        TensorDictModule(MLP(in_features=4, out_features=2, num_cells=[32]),
                         in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"], distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )  # fmt: skip


def test_overlapped_workers_record_the_behaviour_log_probs_of_the_version_they_ran():
    actor = make_actor()
    compressor = PolicyCompressor.from_spec("int8")
    policy = CompressedPolicy(actor, compressor)
    scheme = CompressedWeightSyncScheme(compressor)
    monitor = CompressionMonitor(actor, ladder=fallback_ladder(compressor))
    # the actor of every version shipped, as the workers rebuild it from the packets
    versions = {0: CompressedPolicy(actor, compressor)}
    collector = make_actor_collector(
        make_env, policy, scheme, workers=1, frames_per_batch=32, total_frames=192, seed=0,
        overlap=True,
    )  # fmt: skip
    assert isinstance(collector, MultiAsyncCollector)
    seen = set()
    try:
        for batch in collector:
            batch = batch.reshape(-1)
            for step in batch:  # a single-environment worker acts at batch 1
                mu = versions[int(step["policy_version"])]
                out = mu(TensorDict(observation=step["observation"][None], batch_size=[1]))
                dist = torch.distributions.Categorical(logits=out["logits"][0])
                expected = dist.log_prob(step["action"])
                torch.testing.assert_close(step["action_log_prob"], expected)
            seen.update(batch["policy_version"].tolist())
            # the learner moves on while the worker keeps acting, and ships its weights
            with torch.no_grad():
                for param in actor.parameters():
                    param.add_(0.3 * torch.randn_like(param))
            ship_weights(collector, actor, policy, scheme, workers=1)
            versions[scheme.version] = CompressedPolicy(actor, compressor)
            monitor.record_learner(1, 0.01, version=scheme.version)
            stats = monitor.check(batch, step=0)
            # the Monitor measures the divergence and the lag of the overlapped batch
            assert stats["monitor/kl"] >= 0.0 and stats["monitor/policy_lag_mean"] >= 1.0
            assert stats["monitor/rho_mean"] > 0.0
    finally:
        collector.shutdown()
    assert len(seen) > 1  # the workers picked up shipped weights while acting


class _RecordingCollector:
    """Stands in for a collector with workers: records what update_policy_weights_ sent."""

    def __init__(self):
        self.sent = []

    def update_policy_weights_(self, packet):
        self.sent.append(packet)


@pytest.mark.parametrize("workers", [0, 1])
def test_ship_weights_rebuilds_the_learner_side_policy_only_when_it_acts(workers):
    actor = make_actor()
    compressor = PolicyCompressor.from_spec("int8")
    policy = CompressedPolicy(actor, compressor)
    scheme = CompressedWeightSyncScheme(compressor)
    collector = _RecordingCollector()
    network = policy.network
    ship_weights(collector, actor, policy, scheme, workers=workers)
    ship_weights(collector, actor, policy, scheme, workers=workers)
    assert scheme.version == 2 and int(scheme.last_packet["version"]) == 2
    if workers:  # the workers get every packet; the learner's copy, which does not act, waits
        assert [int(p["version"]) for p in collector.sent] == [1, 2]
        assert policy.network is network and policy.version == 0
    else:  # the policy acts in the learner's process: it runs the latest packet
        assert collector.sent == [] and policy.version == 2
        assert policy.packet is scheme.last_packet


def test_a_checkpoint_with_worker_processes_holds_the_packet_last_shipped(tmp_path):
    report = run_recipe(
        "accerl_impala", "accerl.compression=int8", "collector.workers=1", "network.width=32",
        "collector.total_frames=512", "collector.frames_per_batch=128", "accerl.ship_every=1",
        "checkpoint.interval=256", "accerl.compare=false", "logger.backend=null",
        f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    saved = torch.load(report.parent / "checkpoint" / "state.pt", weights_only=False)
    extra = saved["extra"]
    assert saved["frames"] == 512 and extra["version"] == 4  # a shipment after every batch
    assert int(extra["packet"]["version"]) == extra["version"]


def test_impala_recipe_with_overlapped_acting(tmp_path):
    report = run_recipe(
        "accerl_impala", "accerl.compression=int8", "collector.workers=1",
        "collector.overlap=true", "network.width=32", "collector.total_frames=512",
        "collector.frames_per_batch=128", "accerl.monitor_every=1", "accerl.compare=false",
        "logger.backend=null", f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    saved = json.loads((report.parent / "report.json").read_text())
    (run,) = saved["runs"]
    assert saved["config"]["collector"]["overlap"] is True
    assert run["frames"] == 512 and run["final_pipeline"] == "int8"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["collector.workers=0"], "needs collector.workers >= 1"),
        (["collector.workers=1", "checkpoint.interval=512"], "cannot checkpoint"),
    ],
)
def test_overlap_refuses_what_it_cannot_do(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_recipe(
            "accerl_impala", "collector.overlap=true", *overrides,
            f"logger.output_dir={tmp_path}",
        )  # fmt: skip
    assert not any(tmp_path.iterdir())
