"""AcceRL compressor: agreement bounds, real structured pruning, packet round trips, bad input."""

import pickle

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.modules import MLP, ProbabilisticActor

from seer_benchmarks.bench_accerl import categorical_mlp, nature_cnn, tanh_normal_mlp
from torchrl_seer.collectors import (
    Cast,
    CompressedPolicy,
    CompressedWeightStrategy,
    Distill,
    PolicyCompressor,
    Prune,
    Quantize,
    UnsupportedLayerError,
    policy_divergence,
    select_compression,
)
from torchrl_seer.objectives import DistillationLoss

KL_BOUND = 0.02  # the Monitor's documented default bound


def discrete_actor(width=256, n_obs=8, n_act=4):
    torch.manual_seed(0)
    return categorical_mlp(n_obs, n_act, width)


def continuous_actor(width=256, n_obs=8, n_act=2):
    torch.manual_seed(0)
    return tanh_normal_mlp(n_obs, n_act, width)


def nature_cnn_actor(n_act=6):
    torch.manual_seed(0)
    return nature_cnn(n_act)


def obs(n=256, n_obs=8):
    return TensorDict(observation=torch.randn(n, n_obs), batch_size=[n])


@pytest.mark.parametrize("spec", ["int8", "bf16"])
@pytest.mark.parametrize("make_actor", [discrete_actor, continuous_actor])
def test_compressed_policy_agrees_within_bound(spec, make_actor):
    actor = make_actor()
    compressed = CompressedPolicy(actor, PolicyCompressor.from_spec(spec))
    stats = policy_divergence(actor, compressed, obs())
    assert stats["kl"] <= KL_BOUND
    assert stats["agreement"] >= 0.9


def test_fp16_cast_runs_and_agrees():
    actor = discrete_actor(width=16)
    compressed = CompressedPolicy(actor, PolicyCompressor([Cast("fp16")]))
    assert policy_divergence(actor, compressed, obs(8))["kl"] <= KL_BOUND


def test_compressed_policy_records_behaviour_log_prob_and_version():
    actor = discrete_actor(width=32)
    policy = CompressedPolicy(actor, PolicyCompressor.from_spec("int8"))
    out = policy(obs(5))
    dist = policy.network.get_dist(obs(5).update({"observation": out["observation"]}))
    torch.testing.assert_close(out["action_log_prob"], dist.log_prob(out["action"]))
    assert out["policy_version"].tolist() == [0] * 5
    single = policy(TensorDict(observation=torch.randn(8), batch_size=[]))  # unbatched env step
    assert single["action"].shape == () and single["policy_version"].item() == 0


def test_structured_pruning_really_shrinks_mlp_layers():
    actor = discrete_actor(width=64)
    pruned, _ = Prune(0.5)(actor)
    mlp = pruned.module[0].module
    linears = [m for m in mlp if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 32), (32, 32), (32, 4)]
    assert not any("mask" in name or "orig" in name for name, _ in pruned.named_parameters())
    full = sum(p.numel() for p in actor.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < 0.4 * full
    assert pruned(obs(3))["logits"].shape == (3, 4)


def test_structured_pruning_keeps_largest_units():
    layer1, layer2 = nn.Linear(2, 4), nn.Linear(4, 1)
    with torch.no_grad():
        layer1.weight.copy_(torch.tensor([[1.0, 1.0], [5.0, 5.0], [0.1, 0.1], [3.0, 3.0]]))
    pruned, plan = Prune(0.5).apply(nn.Sequential(layer1, nn.ReLU(), layer2))
    assert plan[":0"].tolist() == [1, 3]
    torch.testing.assert_close(pruned[2].weight, layer2.weight[:, [1, 3]])


def test_structured_pruning_removes_conv_channels_through_flatten():
    actor = nature_cnn_actor()
    pruned, _ = Prune(0.5)(actor)
    cnn = pruned.module[0].module
    assert [cnn[i].out_channels for i in (0, 2, 4)] == [16, 32, 32]
    assert cnn[7].in_features == 32 * 7 * 7 and cnn[7].out_features == 256
    td = TensorDict(pixels=torch.randn(2, 4, 84, 84), batch_size=[2])
    assert pruned(td)["logits"].shape == (2, 6)


def test_structured_pruning_without_loss_of_kept_function():
    # pruning 0 % keeps the function exactly
    actor = discrete_actor(width=32)
    pruned, _ = Prune(0.0)(actor)
    td = obs(4)
    torch.testing.assert_close(pruned(td.clone())["logits"], actor(td.clone())["logits"])


def test_unstructured_pruning_zeros_weights_and_keeps_names():
    net = MLP(in_features=8, out_features=2, num_cells=[64])
    pruned, _ = Prune(0.5, structured=False)(net)
    assert set(dict(pruned.named_parameters())) == set(dict(net.named_parameters()))
    zeros = (pruned[0].weight == 0).float().mean().item()
    assert 0.45 <= zeros <= 0.55


@pytest.mark.parametrize(
    "spec", ["fp32", "bf16", "int8", "prune0.5", "prune0.5+int8", "prune0.3u", "prune0.25+bf16"]
)
def test_packet_round_trip_rebuilds_identical_policy(spec):
    actor = discrete_actor(width=64)
    compressor = PolicyCompressor.from_spec(spec)
    packet = compressor.pack(actor, version=5)
    worker = CompressedPolicy(discrete_actor(width=64))  # different weights, same architecture
    CompressedWeightStrategy().apply_weights(worker, packet)
    expected, _ = compressor.compress(actor)
    td = obs(6)
    torch.testing.assert_close(worker.network(td.clone())["logits"], expected(td.clone())["logits"])
    assert worker.version == 5 and worker.compressor.spec() == compressor.spec()


def test_loading_the_running_packet_again_keeps_the_network_and_pickling_rebuilds_it():
    actor = discrete_actor(width=64)
    compressor = PolicyCompressor.from_spec("int8")
    policy = CompressedPolicy(actor, compressor)
    packet = compressor.pack(actor, version=3)
    policy.load_packet(packet)
    network = policy.network
    policy.load_packet(packet)  # the same packet: nothing to rebuild
    assert policy.network is network and policy.version == 3
    # a spawned worker unpickles the policy: the network is rebuilt from the packet it carried
    clone = pickle.loads(pickle.dumps(policy))
    assert clone.network is not network and clone.version == 3
    td = obs(6)
    torch.testing.assert_close(clone(td.clone())["logits"], policy(td.clone())["logits"])


def nudged(actor, seed):
    """The learner after an update: every weight moved a little."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in actor.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return actor


@pytest.mark.parametrize(
    "spec, reused", [("fp32", True), ("bf16", True), ("int8", True), ("int8+trace", True),
                     ("prune0.5+int8", False)],
)  # fmt: skip
def test_a_packet_of_the_running_structure_is_loaded_into_the_spare_network(spec, reused):
    compressor = PolicyCompressor.from_spec(spec)
    learner = discrete_actor(width=64)
    policy = CompressedPolicy(learner, compressor)
    networks = [policy.network]
    td = obs(6)
    for version in (1, 2, 3, 4):
        policy.load_packet(compressor.pack(nudged(learner, version), version=version))
        networks.append(policy.network)
        rebuilt = CompressedPolicy(learner, compressor)  # the same weights, built from scratch
        torch.testing.assert_close(policy(td.clone())["logits"], rebuilt(td.clone())["logits"])
        assert policy.version == version
    # two networks take turns when the structure stays (pruning keeps other units each time)
    assert (networks[2] is networks[0] and networks[3] is networks[1]) is reused
    assert networks[1] is not networks[0]


def test_a_network_a_step_still_runs_is_never_refilled():
    compressor = PolicyCompressor.from_spec("int8")
    learner = discrete_actor(width=64)
    policy = CompressedPolicy(learner, compressor)
    td = obs(6)
    step = policy._acting_network()  # a step that began before the next packets arrive
    running, _ = step.__enter__()
    before = running(td.clone())["logits"]
    for version in (1, 2):
        policy.load_packet(compressor.pack(nudged(learner, version), version=version))
        assert policy.network is not running
    assert torch.equal(running(td.clone())["logits"], before)
    step.__exit__(None, None, None)
    policy.load_packet(compressor.pack(nudged(learner, 3), version=3))
    rebuilt = CompressedPolicy(learner, compressor)
    torch.testing.assert_close(policy(td.clone())["logits"], rebuilt(td.clone())["logits"])


def test_refill_refuses_another_structure_and_leaves_the_network_untouched():
    actor = discrete_actor(width=64)
    int8 = PolicyCompressor.from_spec("int8")
    built_from = int8.pack(actor, version=1)
    network = PolicyCompressor.rebuild(discrete_actor(width=64), built_from)
    td = obs(6)
    before = network(td.clone())["logits"]
    other_spec = PolicyCompressor.from_spec("bf16").pack(actor)
    other_width = int8.pack(discrete_actor(width=32))
    assert not PolicyCompressor.refill(network, built_from, other_spec)
    assert not PolicyCompressor.refill(network, built_from, other_width)
    assert torch.equal(network(td.clone())["logits"], before)
    assert PolicyCompressor.refill(network, built_from, int8.pack(nudged(actor, 1)))
    assert not torch.equal(network(td.clone())["logits"], before)


def test_int8_packet_is_four_times_smaller():
    actor = discrete_actor(width=256)
    fp32 = PolicyCompressor.packet_nbytes(PolicyCompressor().pack(actor))
    int8 = PolicyCompressor.packet_nbytes(PolicyCompressor.from_spec("int8").pack(actor))
    assert int8 < 0.3 * fp32


def test_static_int8_quantizes_convolutions_and_round_trips():
    actor = nature_cnn_actor()
    td = TensorDict(pixels=torch.rand(8, 4, 84, 84), batch_size=[8])
    step = Quantize("int8", mode="static", calibration=lambda policy: policy(td.clone()))
    compressor = PolicyCompressor([step])
    compressed, _ = compressor.compress(actor)
    assert "QuantizedConvReLU2d" in str(compressed)
    assert policy_divergence(actor, compressed, td)["kl"] <= KL_BOUND
    rebuilt = PolicyCompressor.rebuild(nature_cnn_actor(), compressor.pack(actor))
    torch.testing.assert_close(rebuilt(td.clone())["logits"], compressed(td.clone())["logits"])


def test_distillation_trains_a_smaller_student():
    teacher, student = discrete_actor(width=32), discrete_actor(width=8)
    with torch.no_grad():
        for p in student.parameters():
            p.mul_(0.1)
    loss = DistillationLoss(teacher, student)
    optim = torch.optim.Adam(student.parameters(), lr=1e-2)
    data = obs(128)
    before = loss(data)["loss_distill"].item()
    for _ in range(40):
        optim.zero_grad()
        loss(data)["loss_distill"].backward()
        optim.step()
    assert loss(data)["loss_distill"].item() < 0.5 * before
    compressed, _ = PolicyCompressor([Distill(student), Quantize("int8")]).compress(teacher)
    quantized = [
        m for m in compressed.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)
    ]
    assert [(m.in_features, m.out_features) for m in quantized] == [(8, 8), (8, 8), (8, 4)]


def test_continuous_distillation_has_kl_and_mse_terms():
    out = DistillationLoss(continuous_actor(width=32), continuous_actor(width=8))(obs(16))
    assert {"loss_distill", "loss_distill_mse"} <= set(out.keys())


def test_auto_never_picks_slower_than_fp32_and_respects_bound():
    actor = discrete_actor(width=64)
    batch = obs(4)
    result = select_compression(
        actor, batch, candidates=["int8", "prune0.5"], kl_bound=1e-4, repeats=3, inner=5, log=None
    )
    rows = {row["spec"]: row for row in result.rows}
    assert not rows["prune0.5s"]["accepted"] and "KL" in rows["prune0.5s"]["why"]
    chosen = rows[result.compressor.spec()]
    assert result.compressor.spec() == "fp32" or chosen["ratio"] < 1.0
    assert result.compressor.spec() in result.reason


# ---------------------------------------------------------------- bad input


def test_dynamic_int8_on_conv_only_policy_is_a_clear_error():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
    with pytest.raises(UnsupportedLayerError, match="mode='static'"):
        Quantize("int8").apply(net)


def test_pruning_through_layernorm_is_a_clear_error():
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    with pytest.raises(UnsupportedLayerError, match="LayerNorm"):
        Prune(0.5).apply(net)


def test_static_int8_rejects_unsupported_activation():
    actor = TensorDictModule(
        nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2)), in_keys=["x"], out_keys=["y"]
    )
    step = Quantize("int8", mode="static", calibration=lambda m: None)
    with pytest.raises(UnsupportedLayerError, match="Tanh"):
        step.apply(actor)


def test_cast_of_quantized_policy_is_a_clear_error():
    quantized, _ = Quantize("int8").apply(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(UnsupportedLayerError, match="floating-point"):
        Cast("bf16").apply(quantized)


@pytest.mark.parametrize("spec", ["int4", "prunex", "int8+bf16"])
def test_bad_pipeline_strings(spec):
    with pytest.raises(ValueError):
        PolicyCompressor.from_spec(spec)


def test_mismatched_student_keys_are_rejected():
    teacher = discrete_actor(width=8)
    student = ProbabilisticActor(
        TensorDictModule(nn.Linear(8, 4), in_keys=["pixels"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
    )
    with pytest.raises(ValueError, match="keys"):
        Distill(student).apply(teacher)
    with pytest.raises(ValueError, match="different keys"):
        DistillationLoss(teacher, student)


def test_compressed_policy_needs_a_tensordict_module():
    with pytest.raises(TypeError, match="TensorDictModuleBase"):
        CompressedPolicy(nn.Linear(3, 2))


def test_packet_to_a_plain_module_is_a_clear_error():
    packet = PolicyCompressor().pack(discrete_actor(width=8))
    with pytest.raises(TypeError, match="CompressedPolicy"):
        CompressedWeightStrategy().apply_weights(nn.Linear(3, 2), packet)


def test_bf16_cast_handles_inputs_scaled_inside_the_network():
    class ScaledLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 2)

        def forward(self, frames):
            return self.linear(frames.float() / 255.0)  # uint8 in, float made inside

    actor = TensorDictModule(ScaledLinear(), in_keys=["frames"], out_keys=["y"])
    compressed, _ = PolicyCompressor.from_spec("bf16").compress(actor)
    td = TensorDict(frames=torch.randint(0, 255, (3, 4), dtype=torch.uint8), batch_size=[3])
    out = compressed(td.clone())["y"]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, actor(td.clone())["y"], atol=0.05, rtol=0.05)
