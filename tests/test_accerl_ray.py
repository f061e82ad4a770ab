"""AcceRL actors on Ray (optional extra): a local Ray collector acts with a compressed policy."""

import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.envs import GymEnv
from torchrl.modules import MLP, ProbabilisticActor

from torchrl_seer.collectors import CompressedPolicy, PolicyCompressor


@pytest.mark.slow
def test_local_ray_collector_runs_compressed_policy():
    ray = pytest.importorskip("ray")
    from torchrl.collectors.distributed import RayCollector

    actor = ProbabilisticActor(
        TensorDictModule(
            MLP(in_features=4, out_features=2, num_cells=[32]),
            in_keys=["observation"],
            out_keys=["logits"],
        ),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        collector = RayCollector(
            [lambda: GymEnv("CartPole-v1", categorical_action_encoding=True)],
            policy=CompressedPolicy(actor, PolicyCompressor.from_spec("int8")),
            frames_per_batch=32,
            total_frames=64,
        )
        batch = next(iter(collector))
        assert "action_log_prob" in batch.keys() and (batch["policy_version"] == 0).all()
        collector.shutdown()
    finally:
        ray.shutdown()
