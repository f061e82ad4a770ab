"""StaticGraph: the compressed actor run as a static graph computes what the eager one does."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torchrl.modules import MLP, ProbabilisticActor

from torchrl_seer.collectors import CompressedPolicy, PolicyCompressor, StaticGraph


def _actor(width=64, seed=0):
    torch.manual_seed(seed)
    return ProbabilisticActor(
        TensorDictModule(MLP(in_features=4, out_features=3, num_cells=[width, width]),
                         in_keys=["observation"], out_keys=["logits"]),
        in_keys=["logits"], distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )  # fmt: skip


def _logits(policy, batch):
    return policy(TensorDict(observation=batch, batch_size=batch.shape[:1]))["logits"]


@pytest.mark.parametrize("batch", [1, 16])
def test_int8_graph_gives_the_eager_int8_outputs(batch):
    actor = _actor()
    graph = CompressedPolicy(actor, PolicyCompressor.from_spec("int8+trace"))
    eager = CompressedPolicy(actor, PolicyCompressor.from_spec("int8"))
    for _ in range(3):  # the first call builds the graph, the next ones reuse it
        x = torch.randn(batch, 4)
        assert torch.equal(_logits(graph, x), _logits(eager, x))
    assert graph.compressor.spec() == "int8+trace"


def test_fp32_graph_within_tolerance_and_one_graph_per_input_shape():
    actor = _actor()
    network, _ = PolicyCompressor([StaticGraph("trace")]).compress(actor.module[0].module)
    for batch in (1, 5, 1):
        x = torch.randn(batch, 4)
        torch.testing.assert_close(network(x), actor.module[0].module(x), atol=1e-5, rtol=1e-5)
    assert len(network._graphs) == 2


def test_shipped_packet_rebuilds_the_graph_with_the_new_weights():
    # freezing folds the weights into the graph: a worker must not keep the old graph
    first, second = _actor(seed=0), _actor(seed=1)
    compressor = PolicyCompressor.from_spec("int8+trace")
    worker = CompressedPolicy(first, compressor)
    x = torch.randn(8, 4)
    before = _logits(worker, x)
    worker.load_packet(compressor.pack(second, version=4))
    expected = _logits(CompressedPolicy(second, PolicyCompressor.from_spec("int8")), x)
    assert torch.equal(_logits(worker, x), expected) and not torch.equal(before, expected)
    assert worker.version == 4
    # the state packed from a graph pipeline is the eager pipeline's, key for key
    graph_state = compressor.pack(second)["state"]
    eager_state = PolicyCompressor.from_spec("int8").pack(second)["state"]
    assert len(graph_state.keys(True, True)) == len(eager_state.keys(True, True))


@pytest.mark.parametrize("backend, target", [("trace", "trace"), ("compile", "compile")])
def test_unavailable_backend_warns_and_runs_eagerly(monkeypatch, backend, target):
    def unavailable(*args, **kwargs):
        raise RuntimeError("backend unavailable here")

    monkeypatch.setattr(torch.jit if target == "trace" else torch, target, unavailable)
    actor = _actor()
    graph = CompressedPolicy(actor, PolicyCompressor([StaticGraph(backend)]))
    x = torch.randn(4, 4)
    with pytest.warns(RuntimeWarning, match=f"StaticGraph\\('{backend}'\\) could not build"):
        out = _logits(graph, x)
    torch.testing.assert_close(out, actor.module[0].module(x))


def test_bad_pipelines_are_refused():
    with pytest.raises(ValueError, match="StaticGraph must be the last step"):
        PolicyCompressor.from_spec("trace+int8")
    with pytest.raises(ValueError, match="backend must be one of"):
        StaticGraph("export")


@pytest.mark.slow
def test_compiled_fp32_graph_within_tolerance():
    actor = _actor()
    network, _ = PolicyCompressor([StaticGraph("compile")]).compress(actor.module[0].module)
    x = torch.randn(16, 4)
    with torch.no_grad():
        torch.testing.assert_close(network(x), actor.module[0].module(x), atol=1e-5, rtol=1e-5)
