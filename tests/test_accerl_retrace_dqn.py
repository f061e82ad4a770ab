"""RetraceDQNLoss against brute-force Retrace on a tabular MDP, TorchRL's DQNLoss and bad input."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import Bounded, Categorical, LazyTensorStorage, OneHot, ReplayBuffer, SliceSampler
from torchrl.envs import GymEnv
from torchrl.modules import MLP, Actor, QValueActor
from torchrl.objectives import DQNLoss

from torchrl_seer.collectors import CompressedPolicy, PolicyCompressor
from torchrl_seer.modules import EGreedyLogProbModule
from torchrl_seer.objectives import RetraceDQNLoss

N_STATES, N_ACTIONS, GAMMA = 6, 3, 0.9


def tabular_q_actor(spec=None):
    """Q(x, .) = Q-table row of the one-hot state x (a bias-free linear layer)."""
    return QValueActor(
        nn.Linear(N_STATES, N_ACTIONS, bias=False),
        in_keys=["observation"],
        spec=spec if spec is not None else Categorical(N_ACTIONS),
    )


def set_tables(loss, online, target):
    """Writes Q-tables [N_STATES, N_ACTIONS] into the loss's online and target parameters."""
    for params, table in (
        (loss.value_network_params, online),
        (loss.target_value_network_params, target),
    ):
        (key,) = params.keys(True, True)
        params.get(key).data.copy_(table.T.float())


def mdp_batch(g, *, B=3, T=9, behaviour=None):
    """[B, T] consecutive transitions with random terminations and truncations.

    Returns the batch and the true state indices (states[b, t] at x_t, next_states[b, t] at the
    true next observation of step t). Inside an episode next_states[:, t] == states[:, t + 1];
    after an episode end the next row starts a new episode from a reset state.
    """
    mu = torch.softmax(torch.randn(N_STATES, N_ACTIONS, generator=g), -1)
    states = torch.empty(B, T, dtype=torch.long)
    next_states = torch.randint(N_STATES, (B, T), generator=g)
    terminated = torch.rand(B, T, generator=g) < 0.15
    truncated = torch.rand(B, T, generator=g) < 0.1
    terminated[0, 1], truncated[0, 2], terminated[0, 2] = True, True, False  # one of each
    truncated &= ~terminated
    states[:, 0] = torch.randint(N_STATES, (B,), generator=g)
    for t in range(1, T):
        reset = torch.randint(N_STATES, (B,), generator=g)
        ended = terminated[:, t - 1] | truncated[:, t - 1]
        states[:, t] = torch.where(ended, reset, next_states[:, t - 1])
    actions = torch.multinomial(mu[states.flatten()], 1, generator=g).reshape(B, T)
    one_hot = lambda s: nn.functional.one_hot(s, N_STATES).float()  # noqa: E731
    data = TensorDict(
        {
            "observation": one_hot(states),
            "action": actions,
            "action_log_prob": mu[states, actions].log(),
            "next": {
                "observation": one_hot(next_states),
                "reward": torch.randn(B, T, 1, generator=g),
                "done": (terminated | truncated).unsqueeze(-1),
                "terminated": terminated.unsqueeze(-1),
            },
        },
        [B, T],
    )
    return data, states, next_states, mu


def policy_table(q, kind, eps=0.2, temperature=0.5):
    if kind == "softmax":
        return torch.softmax(q / temperature, -1)
    greedy = nn.functional.one_hot(q.argmax(-1), N_ACTIONS).double()
    return greedy if kind == "greedy" else eps / N_ACTIONS + (1 - eps) * greedy


def brute_force_targets(data, states, next_states, mu, q_target, pi, lmbda):
    """Sum form of Munos et al. (2016), every start index, cut at episode ends."""
    B, T = states.shape
    v = (pi * q_target).sum(-1)  # E_pi Q'(x, .)
    actions = data["action"]
    reward = data["next", "reward"].squeeze(-1).double()
    term = data["next", "terminated"].squeeze(-1)
    done = data["next", "done"].squeeze(-1)
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for s in range(T):
            x, a = states[b, s], actions[b, s]
            total, trace, discount = q_target[x, a], 1.0, 1.0
            for t in range(s, T):
                x, a = states[b, t], actions[b, t]
                if t > s:
                    trace = trace * lmbda * min(1.0, float(pi[x, a] / mu[x, a]))
                bootstrap = 0.0 if term[b, t] else GAMMA * v[next_states[b, t]]
                total = total + discount * trace * (reward[b, t] + bootstrap - q_target[x, a])
                if done[b, t]:
                    break
                discount *= GAMMA
            out[b, s] = total
    return out


def tabular_loss_and_expected(
    data, states, next_states, mu, q_online, q_target, lmbda, target_policy, double_dqn
):
    """A RetraceDQNLoss on the tabular Q tables and the brute-force Retrace targets it must give."""
    loss = RetraceDQNLoss(
        tabular_q_actor(),
        lmbda=lmbda,
        gamma=GAMMA,
        target_policy=target_policy,
        target_epsilon=0.2,
        temperature=0.5,
        double_dqn=double_dqn,
    )
    set_tables(loss, q_online, q_target)
    pi = policy_table(q_online if double_dqn else q_target, target_policy)
    return loss, brute_force_targets(data, states, next_states, mu, q_target, pi, lmbda)


@pytest.mark.parametrize(
    "lmbda, target_policy, double_dqn",
    [
        (1.0, "greedy", True),
        (0.8, "epsilon_greedy", True),
        (0.9, "softmax", False),
        (1.0, "epsilon_greedy", False),
        (0.0, "softmax", True),
    ],
)
def test_targets_match_brute_force_retrace_on_small_mdp(lmbda, target_policy, double_dqn):
    g = torch.Generator().manual_seed(3)
    data, states, next_states, mu = mdp_batch(g)
    q_online = torch.randn(N_STATES, N_ACTIONS, generator=g, dtype=torch.float64)
    q_target = q_online + 0.5 * torch.randn(N_STATES, N_ACTIONS, generator=g, dtype=torch.float64)
    loss, expected = tabular_loss_and_expected(
        data, states, next_states, mu, q_online, q_target, lmbda, target_policy, double_dqn
    )
    assert data["next", "done"].any() and (data["next", "done"] & ~data["next", "terminated"]).any()
    target = loss.retrace_target(data, q_online[states].float())
    torch.testing.assert_close(target.double(), expected, rtol=1e-4, atol=1e-4)
    predicted = q_online[states, data["action"]]
    out = loss(data)
    torch.testing.assert_close(
        out["loss"].double(), (predicted - expected).pow(2).mean(), rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(
        data["td_error"].squeeze(-1).double(), (predicted - expected).pow(2), rtol=1e-4, atol=1e-5
    )


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    lmbda=st.floats(0.0, 1.0),
    target_policy=st.sampled_from(["greedy", "epsilon_greedy", "softmax"]),
    double_dqn=st.booleans(),
    steps=st.integers(3, 10),
)
def test_property_targets_equal_brute_force_retrace(seed, lmbda, target_policy, double_dqn, steps):
    g = torch.Generator().manual_seed(seed)
    data, states, next_states, mu = mdp_batch(g, B=2, T=steps)
    q_online, q_target = torch.randn(2, N_STATES, N_ACTIONS, generator=g, dtype=torch.float64)
    loss, expected = tabular_loss_and_expected(
        data, states, next_states, mu, q_online, q_target, lmbda, target_policy, double_dqn
    )
    target = loss.retrace_target(data, q_online[states].float())
    torch.testing.assert_close(target.double(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("double_dqn", [False, True])
def test_zero_lambda_is_torchrl_one_step_dqn_target(double_dqn):
    g = torch.Generator().manual_seed(5)
    data, *_ = mdp_batch(g, B=4, T=6)
    q_online = torch.randn(N_STATES, N_ACTIONS, generator=g)
    q_target = torch.randn(N_STATES, N_ACTIONS, generator=g)
    ours = RetraceDQNLoss(tabular_q_actor(), lmbda=0.0, gamma=GAMMA, double_dqn=double_dqn)
    reference = DQNLoss(tabular_q_actor(), double_dqn=double_dqn, delay_value=True)
    reference.make_value_estimator(gamma=GAMMA)
    for loss in (ours, reference):
        set_tables(loss, q_online, q_target)
    ours_data, reference_data = data.clone(), data.clone()
    torch.testing.assert_close(ours(ours_data)["loss"], reference(reference_data)["loss"])
    torch.testing.assert_close(ours_data["td_error"], reference_data["td_error"])


def test_behaviour_equal_to_target_policy_gives_uncorrected_n_step_return():
    g = torch.Generator().manual_seed(11)
    data, states, next_states, _ = mdp_batch(g, B=2, T=8)
    q_online = torch.randn(N_STATES, N_ACTIONS, generator=g)
    q_target = torch.randn(N_STATES, N_ACTIONS, generator=g)
    loss = RetraceDQNLoss(
        tabular_q_actor(),
        lmbda=1.0,
        gamma=GAMMA,
        target_policy="epsilon_greedy",
        target_epsilon=0.3,
    )
    set_tables(loss, q_online, q_target)
    # Behaviour mu = the learner's epsilon-greedy policy, recorded by EGreedyLogProbModule.
    behaviour = TensorDictSequential(
        tabular_q_actor(), EGreedyLogProbModule(Categorical(N_ACTIONS), eps_init=0.3, eps_end=0.3)
    )
    behaviour[0].module[0].weight.data.copy_(q_online.T)
    torch.manual_seed(0)
    acted = behaviour(data.select("observation").clone())
    data.update(acted.select("action", "action_log_prob"))
    online_values = q_online[states]
    target = loss.retrace_target(data, online_values)

    # pi = mu, so c = lambda = 1: no trace is cut inside an episode. Telescoped (n-step) form:
    # sum_k g^k r_{t+k} + g^n (1 - term) V(x'_end)
    #     + sum_{k=1}^{n-1} g^k (V(x_{t+k}) - Q'(x_{t+k}, a_{t+k}))
    pi = policy_table(q_online.double(), "epsilon_greedy", eps=0.3)
    v = (pi * q_target.double()).sum(-1)
    reward = data["next", "reward"].squeeze(-1).double()
    done, term = data["next", "done"].squeeze(-1), data["next", "terminated"].squeeze(-1)
    B, T = states.shape
    expected = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            end = t
            while end < T - 1 and not done[b, end]:
                end += 1
            ret = sum(GAMMA ** (k - t) * reward[b, k] for k in range(t, end + 1))
            if not term[b, end]:
                ret = ret + GAMMA ** (end + 1 - t) * v[next_states[b, end]]
            for k in range(t + 1, end + 1):
                x, a = states[b, k], data["action"][b, k]
                ret = ret + GAMMA ** (k - t) * (v[x] - q_target[x, a].double())
            expected[b, t] = ret
    torch.testing.assert_close(data["action_log_prob"], pi[states, data["action"]].log().float())
    torch.testing.assert_close(target.double(), expected, rtol=1e-4, atol=1e-4)


def test_one_hot_actions_give_the_same_loss_as_categorical():
    g = torch.Generator().manual_seed(2)
    data, *_ = mdp_batch(g)
    q_online, q_target = torch.randn(2, N_STATES, N_ACTIONS, generator=g)
    categorical = RetraceDQNLoss(tabular_q_actor(), lmbda=0.9, gamma=GAMMA)
    one_hot = RetraceDQNLoss(tabular_q_actor(OneHot(N_ACTIONS)), lmbda=0.9, gamma=GAMMA)
    for loss in (categorical, one_hot):
        set_tables(loss, q_online, q_target)
    one_hot_data = data.clone()
    one_hot_data["action"] = nn.functional.one_hot(data["action"], N_ACTIONS)
    torch.testing.assert_close(one_hot(one_hot_data)["loss"], categorical(data.clone())["loss"])


def test_gradients_reach_only_the_online_network():
    g = torch.Generator().manual_seed(4)
    data, *_ = mdp_batch(g)
    loss = RetraceDQNLoss(tabular_q_actor(), lmbda=0.95, gamma=GAMMA, target_policy="softmax")
    set_tables(loss, *torch.randn(2, N_STATES, N_ACTIONS, generator=g))
    loss(data)["loss"].backward()
    online_grads = [p.grad for p in loss.value_network_params.values(True, True)]
    assert all(grad is not None and grad.abs().sum() > 0 for grad in online_grads)
    for target_param in loss.target_value_network_params.values(True, True):
        assert not target_param.requires_grad and target_param.grad is None
    online_values = loss._action_values(data, loss.value_network_params)
    assert online_values.requires_grad
    assert not loss.retrace_target(data, online_values).requires_grad


def test_bad_input_gives_clear_errors():
    g = torch.Generator().manual_seed(0)
    data, *_ = mdp_batch(g, T=4)
    continuous_actor = Actor(nn.Linear(N_STATES, 2), spec=Bounded(-1, 1, shape=(2,)))
    with pytest.raises(ValueError, match=r"one discrete action per step.*Bounded"):
        RetraceDQNLoss(continuous_actor)
    with pytest.raises(ValueError, match=r"one discrete action per step.*binary"):
        RetraceDQNLoss(nn.Linear(N_STATES, 4), action_space="binary")
    with pytest.raises(ValueError, match="target_policy"):
        RetraceDQNLoss(tabular_q_actor(), target_policy="boltzmann")
    with pytest.raises(ValueError, match="lmbda"):
        RetraceDQNLoss(tabular_q_actor(), lmbda=1.2)
    with pytest.raises(ValueError, match="delay_value"):
        RetraceDQNLoss(tabular_q_actor(), delay_value=False)
    loss = RetraceDQNLoss(tabular_q_actor())
    with pytest.raises(KeyError, match="action_log_prob"):
        loss(data.exclude("action_log_prob"))
    with pytest.raises(ValueError, match=r"T >= 2"):
        loss(data[:, :1].clone())
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        loss(data[:, 0].clone())
    with pytest.raises(ValueError, match="Retrace estimator"):
        loss.make_value_estimator("td0")


def test_behaviour_log_prob_key_is_configurable():
    g = torch.Generator().manual_seed(6)
    data, *_ = mdp_batch(g)
    tables = torch.randn(2, N_STATES, N_ACTIONS, generator=g)
    default = RetraceDQNLoss(tabular_q_actor(), target_policy="softmax", gamma=GAMMA)
    renamed = RetraceDQNLoss(tabular_q_actor(), target_policy="softmax", gamma=GAMMA)
    renamed.set_keys(behaviour_log_prob=("collector", "log_mu"))
    for loss in (default, renamed):
        set_tables(loss, *tables)
    moved = data.clone()
    moved["collector", "log_mu"] = moved.pop("action_log_prob")
    assert ("collector", "log_mu") in renamed.in_keys
    torch.testing.assert_close(renamed(moved)["loss"], default(data.clone())["loss"])
    renamed.make_value_estimator(lmbda=0.5)  # keys survive a new estimator
    assert renamed.value_estimator.tensor_keys.sample_log_prob == ("collector", "log_mu")
    assert renamed.value_estimator.gamma == GAMMA


def test_compressed_epsilon_greedy_collector_feeds_the_loss_through_slice_sampler():
    torch.manual_seed(0)
    spec = Categorical(2)
    q_actor = QValueActor(
        MLP(in_features=4, out_features=2, num_cells=[32]), in_keys=["observation"], spec=spec
    )
    explore = EGreedyLogProbModule(spec, eps_init=0.5, eps_end=0.5)
    behaviour = CompressedPolicy(
        TensorDictSequential(q_actor, explore), PolicyCompressor.from_spec("int8")
    )
    collector = Collector(
        GymEnv("CartPole-v1", categorical_action_encoding=True),
        behaviour,
        frames_per_batch=64,
        total_frames=64,
    )
    buffer = ReplayBuffer(
        storage=LazyTensorStorage(64),
        sampler=SliceSampler(slice_len=8, traj_key=("collector", "traj_ids")),
        batch_size=32,
    )
    for batch in collector:
        buffer.extend(batch)
    collector.shutdown()
    sample = buffer.sample().reshape(4, 8)
    loss = RetraceDQNLoss(q_actor, lmbda=0.95, gamma=0.99)
    out = loss(sample)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    log_mu = sample["action_log_prob"]
    assert torch.allclose(log_mu.exp().unique().sort().values, torch.tensor([0.25, 0.75]))
