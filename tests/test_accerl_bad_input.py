"""Compressed policies and weight packets given bad input: clear errors, nothing half-applied."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.modules import MLP

from torchrl_seer.collectors import (
    CompressedPolicy,
    CompressedWeightStrategy,
    CompressedWeightSyncScheme,
    PolicyCompressor,
)

SPECS = ["int8", "bf16", "fp32", "prune0.5+int8"]


def actor(hidden=32, in_features=4, seed=0):
    torch.manual_seed(seed)
    return TensorDictModule(
        MLP(in_features=in_features, out_features=2, num_cells=[hidden]),
        in_keys=["observation"],
        out_keys=["action"],
    )


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_observation_is_refused(spec, bad):
    # int8 used to return finite actions for every row, all of them changed by the NaN
    policy = CompressedPolicy(actor(), PolicyCompressor.from_spec(spec))
    observation = torch.randn(3, 4)
    observation[1, 2] = bad
    with pytest.raises(ValueError, match=r"1 non-finite value\(s\) in 'observation'"):
        policy(TensorDict(observation=observation, batch_size=[3]))
    with pytest.raises(ValueError, match="non-finite"):
        policy(TensorDict(observation=observation[1], batch_size=[]))


@pytest.mark.parametrize("spec", SPECS)
def test_wrong_width_observation_names_the_expected_width(spec):
    policy = CompressedPolicy(actor(), PolicyCompressor.from_spec(spec))
    with pytest.raises(ValueError, match=r"shapes \{'observation': \(3, 5\)\}.*takes 4 input"):
        policy(TensorDict(observation=torch.randn(3, 5), batch_size=[3]))
    out = policy(TensorDict(observation=torch.randn(3, 4), batch_size=[3]))
    assert out["action"].shape == (3, 2)  # still acts on good input


@pytest.mark.parametrize("spec", ["int8", "bf16", "fp32", "prune0.5", "prune0.5+int8"])
def test_packet_of_a_bigger_network_is_refused_and_the_running_one_kept(spec):
    # int8 used to load it silently; the others failed with size-mismatch or index errors
    worker = CompressedPolicy(actor(hidden=16), PolicyCompressor.from_spec(spec))
    observation = TensorDict(observation=torch.randn(3, 4), batch_size=[3])
    before = worker(observation.clone())["action"]
    packet = PolicyCompressor.from_spec(spec).pack(actor(hidden=32), version=3)
    with pytest.raises(ValueError, match="another network"):
        CompressedWeightStrategy().apply_weights(worker, packet)
    with pytest.raises(ValueError, match="another network"):
        worker.check_packet(packet)
    assert worker.version == 0
    torch.testing.assert_close(worker(observation.clone())["action"], before)


def test_sender_refuses_a_learner_policy_the_collector_cannot_load():
    scheme = CompressedWeightSyncScheme(PolicyCompressor.from_spec("int8"))
    collector_policy = CompressedPolicy(actor(hidden=16))
    scheme.model = collector_policy  # held by a weak reference, as a collector does
    with pytest.raises(ValueError, match="another network"):
        scheme.prepare_weights(actor(hidden=32), "policy", scheme.strategy)
    assert scheme.version == 0  # nothing was shipped
    packet = scheme.prepare_weights(actor(hidden=16, seed=1), "policy", scheme.strategy)
    assert int(packet["version"]) == 1


def test_a_tensordict_that_is_not_a_packet_is_refused():
    with pytest.raises(ValueError, match="not a weight packet"):
        PolicyCompressor.rebuild(actor(), TensorDict(pipeline=PolicyCompressor(), batch_size=[]))
