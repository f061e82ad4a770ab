"""EGreedyLogProbModule: ε-greedy Q actors (compressed or not) record the behaviour log μ(a|x)."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictSequential
from torchrl.data import Bounded, Categorical, OneHot
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import MLP, QValueActor

from torchrl_seer.collectors import CompressedPolicy, PolicyCompressor
from torchrl_seer.modules import EGreedyLogProbModule

N_ACTIONS, EPS = 4, 0.3


def greedy_batch(n, *, one_hot=False):
    greedy = torch.arange(n) % N_ACTIONS
    action = torch.nn.functional.one_hot(greedy, N_ACTIONS) if one_hot else greedy
    return TensorDict(action=action, batch_size=[n]), greedy


@pytest.mark.parametrize("one_hot", [False, True])
def test_recorded_probability_is_the_epsilon_greedy_probability_of_the_output_action(one_hot):
    torch.manual_seed(0)
    spec = OneHot(N_ACTIONS) if one_hot else Categorical(N_ACTIONS)
    module = EGreedyLogProbModule(spec, eps_init=EPS, eps_end=EPS)
    td, greedy = greedy_batch(40_000, one_hot=one_hot)
    with set_exploration_type(ExplorationType.RANDOM):  # acting, whatever ran before
        out = module(td)
    action = out["action"].argmax(-1) if one_hot else out["action"]
    kept = action == greedy
    expected = torch.where(kept, EPS / N_ACTIONS + 1 - EPS, EPS / N_ACTIONS)
    torch.testing.assert_close(out["action_log_prob"], expected.log())
    # the formula is the real distribution of the output action
    assert abs(kept.float().mean().item() - (1 - EPS + EPS / N_ACTIONS)) < 0.01
    other = (action - greedy) % N_ACTIONS
    for offset in range(1, N_ACTIONS):
        assert abs((other == offset).float().mean().item() - EPS / N_ACTIONS) < 0.01


def test_deterministic_exploration_records_probability_one_for_the_greedy_action():
    module = EGreedyLogProbModule(Categorical(N_ACTIONS), eps_init=0.9, eps_end=0.9)
    td, greedy = greedy_batch(64)
    with set_exploration_type(ExplorationType.DETERMINISTIC):
        out = module(td)
    assert torch.equal(out["action"], greedy)
    assert torch.equal(out["action_log_prob"], torch.zeros(64))


def test_action_mask_counts_only_valid_actions():
    torch.manual_seed(1)
    spec = Categorical(N_ACTIONS)
    module = EGreedyLogProbModule(spec, eps_init=EPS, eps_end=EPS, action_mask_key="action_mask")
    n = 20_000
    mask = torch.zeros(n, N_ACTIONS, dtype=torch.bool)
    mask[:, :2] = True
    out = module(
        TensorDict(action=torch.zeros(n, dtype=torch.long), action_mask=mask, batch_size=[n])
    )
    assert (out["action"] < 2).all()
    kept = out["action"] == 0
    expected = torch.where(kept, EPS / 2 + 1 - EPS, EPS / 2)
    torch.testing.assert_close(out["action_log_prob"], expected.log())
    assert abs(kept.float().mean().item() - (1 - EPS / 2)) < 0.01


def test_compressed_q_actor_records_mu_of_the_compressed_network_and_ships_epsilon():
    torch.manual_seed(2)
    spec = Categorical(N_ACTIONS)
    q_actor = QValueActor(
        MLP(in_features=5, out_features=N_ACTIONS, num_cells=[64]),
        in_keys=["observation"],
        spec=spec,
    )
    explore = EGreedyLogProbModule(spec, eps_init=0.5, eps_end=0.1, annealing_num_steps=4)
    learner_policy = TensorDictSequential(q_actor, explore)
    behaviour = CompressedPolicy(learner_policy, PolicyCompressor.from_spec("prune0.5+int8"))
    observation = torch.randn(256, 5)

    def act():
        return behaviour(TensorDict(observation=observation, batch_size=[256]))

    out = act()
    assert "action_log_prob" in behaviour.out_keys
    # mu is epsilon-greedy around the *compressed* network's argmax (its own action values)
    compressed_greedy = out["action_value"].argmax(-1) == out["action"]
    expected = torch.where(compressed_greedy, 0.5 / N_ACTIONS + 0.5, 0.5 / N_ACTIONS)
    torch.testing.assert_close(out["action_log_prob"], expected.log())
    with torch.no_grad():
        full_values = q_actor(TensorDict(observation=observation, batch_size=[256]))["action_value"]
    assert not torch.allclose(full_values, out["action_value"], atol=1e-3)  # really compressed
    # the learner anneals epsilon; the next shipped packet carries it to the actor
    explore.step(4)
    behaviour.update_from(learner_policy, version=1)
    out = act()
    compressed_greedy = out["action_value"].argmax(-1) == out["action"]
    expected = torch.where(compressed_greedy, 0.1 / N_ACTIONS + 0.9, 0.1 / N_ACTIONS)
    torch.testing.assert_close(out["action_log_prob"], expected.log())


def test_non_discrete_specs_are_rejected():
    with pytest.raises(TypeError, match="Categorical or OneHot"):
        EGreedyLogProbModule(Bounded(-1, 1, shape=(2,)))
