"""AcceRL actors on Ray (optional extra): compressed weight packets reach RayCollector workers."""

import pytest
import torch
from test_accerl_weight_sync import force_action, make_actor  # shared with the pipe tests
from torchrl.envs import GymEnv

from torchrl_seer.collectors import (
    CompressedPolicy,
    CompressedRayWeightSyncScheme,
    CompressedWeightSyncScheme,
    PolicyCompressor,
)

# A lambda: cloudpickle ships it by value (Ray workers cannot import this test module).
make_env = lambda: GymEnv("CartPole-v1", categorical_action_encoding=True)  # noqa: E731


@pytest.fixture
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


def test_scheme_packs_versioned_packets_and_rejects_other_input():
    scheme = CompressedRayWeightSyncScheme(PolicyCompressor.from_spec("prune0.5+int8"))
    actor = make_actor()
    first = scheme.prepare_weights(actor, "policy", scheme.strategy)
    second = scheme.prepare_weights(actor, "policy", scheme.strategy)
    assert (int(first["version"]), int(second["version"])) == (1, 2)
    assert scheme.prepare_weights(second, "policy", scheme.strategy) is second
    with pytest.raises(TypeError, match="learner's policy"):
        scheme.prepare_weights({"weight": torch.zeros(2)}, "policy", scheme.strategy)
    with pytest.raises(TypeError, match="weight packet"):
        scheme.receive_packet({"weight": torch.zeros(2)})


@pytest.mark.slow
def test_local_ray_collector_runs_compressed_policy(ray_session):
    from torchrl.collectors.distributed import RayCollector

    collector = RayCollector(
        [make_env],
        policy=CompressedPolicy(make_actor(), PolicyCompressor.from_spec("int8")),
        frames_per_batch=32,
        total_frames=64,
    )
    try:
        batch = next(iter(collector))
        assert "action_log_prob" in batch.keys() and (batch["policy_version"] == 0).all()
    finally:
        collector.shutdown()


@pytest.mark.slow
def test_shipped_compressed_weights_reach_ray_collector_workers(ray_session):
    from torchrl.collectors.distributed import RayCollector

    actor = make_actor()
    force_action(actor, 1)
    compressor = PolicyCompressor.from_spec("prune0.5+int8")
    scheme = CompressedRayWeightSyncScheme(compressor)
    collector = RayCollector(
        [make_env],
        policy=CompressedPolicy(actor, compressor),
        frames_per_batch=16,
        total_frames=48,
        sync=True,  # a batch is requested only when the test asks for it
        weight_sync_schemes={"policy": scheme},
    )
    try:
        force_action(actor, 0)
        collector.update_policy_weights_(actor)  # initial sync (version 0), then version 1
        batches = iter(collector)
        first = next(batches)
        assert (first["policy_version"] == 1).all() and (first["action"] == 0).all()
        # the behaviour log-prob is the compressed policy's (probability ~1 for action 0)
        assert torch.allclose(first["action_log_prob"], torch.zeros(()), atol=1e-4)

        force_action(actor, 1)
        collector.update_policy_weights_(actor)
        second = next(batches)
        assert (second["policy_version"] == 2).all() and (second["action"] == 1).all()

        # a pipeline switch (the Monitor's fallback) changes the packet layout: still shipped
        scheme.compressor = PolicyCompressor.from_spec("bf16")
        force_action(actor, 0)
        collector.update_policy_weights_(actor)
        third = next(batches)
        assert (third["policy_version"] == 3).all() and (third["action"] == 0).all()
        assert collector.remote_collectors  # the batches came from a remote Ray actor
    finally:
        collector.shutdown()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_packets_cascade_to_the_processes_of_a_multiprocess_ray_worker(ray_session):
    from torchrl.collectors.distributed import RayCollector

    actor = make_actor()
    force_action(actor, 1)
    compressor = PolicyCompressor.from_spec("int8")
    collector = RayCollector(
        [make_env],
        policy=CompressedPolicy(actor, compressor),
        frames_per_batch=16,
        total_frames=32,
        sync=True,
        collector_class="sync",  # a MultiSyncCollector with one process on the Ray worker
        collector_kwargs={
            "weight_sync_schemes": {"policy": CompressedWeightSyncScheme(compressor)}
        },
        weight_sync_schemes={"policy": CompressedRayWeightSyncScheme(compressor)},
    )
    try:
        force_action(actor, 0)
        collector.update_policy_weights_(actor)
        batch = next(iter(collector))
        newest = batch[batch["policy_version"] == 1]
        assert batch["policy_version"].flatten()[-1] == 1 and (newest["action"] == 0).all()
    finally:
        collector.shutdown()
