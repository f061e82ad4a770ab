"""AcceRL actors: compressed weights shipped to TorchRL collectors reach the acting policy."""

import pytest
import torch
from tensordict.nn import TensorDictModule
from torchrl.collectors import Collector, MultiSyncCollector
from torchrl.envs import GymEnv
from torchrl.modules import MLP, ProbabilisticActor

from torchrl_seer.collectors import CompressedPolicy, CompressedWeightSyncScheme, PolicyCompressor


def make_env():
    return GymEnv("CartPole-v1", categorical_action_encoding=True)


def make_actor():
    torch.manual_seed(0)
    return ProbabilisticActor(
        TensorDictModule(
            MLP(in_features=4, out_features=2, num_cells=[32]),
            in_keys=["observation"],
            out_keys=["logits"],
        ),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )


def force_action(actor, action):
    """Makes the learner's policy pick ``action`` with probability ~1."""
    last = actor.module[0].module[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([30.0, -30.0] if action == 0 else [-30.0, 30.0]))


def test_in_process_collector_acts_with_updated_compressed_policy():
    actor = make_actor()
    force_action(actor, 1)
    policy = CompressedPolicy(actor, PolicyCompressor.from_spec("int8"))
    collector = Collector(make_env(), policy, frames_per_batch=16, total_frames=32)
    batches = iter(collector)
    first = next(batches)
    assert (first["action"] == 1).all() and (first["policy_version"] == 0).all()
    force_action(actor, 0)
    policy.update_from(actor, version=4)
    second = next(batches)
    assert (second["action"] == 0).all() and (second["policy_version"] == 4).all()
    assert torch.allclose(second["action_log_prob"], torch.zeros(16), atol=1e-4)
    collector.shutdown()


@pytest.mark.timeout(600)
def test_shipped_weights_reach_worker_process_collectors():
    actor = make_actor()
    force_action(actor, 1)
    compressor = PolicyCompressor.from_spec("prune0.5+int8")
    scheme = CompressedWeightSyncScheme(compressor)
    collector = MultiSyncCollector(
        [make_env],
        policy=CompressedPolicy(actor, compressor),
        frames_per_batch=16,
        total_frames=48,
        weight_sync_schemes={"policy": scheme},
    )
    try:
        batches = iter(collector)
        first = next(batches)
        assert (first["action"] == 1).all() and (first["policy_version"] == 0).all()
        force_action(actor, 0)
        collector.update_policy_weights_(actor)  # compress + ship through pipes
        second = next(batches)
        # a batch may straddle the ship; the newest steps must come from the new policy
        assert second["policy_version"][..., -1].item() == 1
        newest = second[second["policy_version"] == 1]
        assert (newest["action"] == 0).all()
        # the behaviour log-prob is the compressed policy's (probability ~1 for action 0)
        assert torch.allclose(newest["action_log_prob"], torch.zeros(()), atol=1e-4)
        # the Monitor switching the pipeline takes effect at the next ship
        scheme.compressor = PolicyCompressor.from_spec("bf16")
        force_action(actor, 1)
        collector.update_policy_weights_(actor)
        third = next(batches)
        assert third["policy_version"][..., -1].item() == 2
        assert (third[third["policy_version"] == 2]["action"] == 1).all()
    finally:
        collector.shutdown()


def test_scheme_rejects_non_module_weights():
    scheme = CompressedWeightSyncScheme(PolicyCompressor())
    with pytest.raises(TypeError, match="learner's policy"):
        scheme.prepare_weights({"weight": torch.zeros(2)}, "policy", scheme.strategy)


@pytest.mark.slow
def test_shipped_weights_reach_async_collector_workers():
    from torchrl.collectors import MultiAsyncCollector

    actor = make_actor()
    force_action(actor, 1)
    compressor = PolicyCompressor.from_spec("int8")
    collector = MultiAsyncCollector(
        [make_env] * 2,
        policy=CompressedPolicy(actor, compressor),
        frames_per_batch=16,
        total_frames=320,
        weight_sync_schemes={"policy": CompressedWeightSyncScheme(compressor)},
    )
    try:
        seen_new = False
        for i, batch in enumerate(collector):
            if i == 0:
                assert (batch["action"] == 1).all()
                force_action(actor, 0)
                collector.update_policy_weights_(actor)
            elif (batch["policy_version"] == 1).any():
                assert (batch[batch["policy_version"] == 1]["action"] == 0).all()
                seen_new = True
                break
        assert seen_new
    finally:
        collector.shutdown()
