"""AcceRL Corrector: V-trace through TorchRL's VTrace with compressed μ; Retrace vs brute force."""

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SACLoss
from torchrl.objectives.value import VTrace

from torchrl_seer.collectors import CompressedPolicy, PolicyCompressor
from torchrl_seer.objectives import RetraceSACLoss
from torchrl_seer.objectives.value import Retrace, TakenActionVTrace, retrace_return


def test_vtrace_with_compressed_behaviour_matches_reference_recursion():
    torch.manual_seed(0)
    T, gamma, rho_bar, c_bar = 12, 0.9, 1.0, 1.0
    actor = ProbabilisticActor(
        TensorDictModule(
            MLP(in_features=3, out_features=4, num_cells=[64]), in_keys=["obs"], out_keys=["logits"]
        ),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )
    critic = TensorDictModule(nn.Linear(3, 1), in_keys=["obs"], out_keys=["state_value"])
    behaviour = CompressedPolicy(actor, PolicyCompressor.from_spec("prune0.5+int8"))
    states = torch.randn(T + 1, 3)
    rollout = behaviour(TensorDict(obs=states[:-1], batch_size=[T]))  # records log mu
    done = torch.zeros(T, 1, dtype=torch.bool)
    done[5] = True  # an episode ends (terminates) inside the trajectory
    reward = torch.randn(T, 1)
    data = TensorDict(
        {
            "obs": states[:-1],
            "action": rollout["action"],
            "action_log_prob": rollout["action_log_prob"],
            "done": torch.zeros(T, 1, dtype=torch.bool),
            "terminated": torch.zeros(T, 1, dtype=torch.bool),
            "next": {"obs": states[1:], "reward": reward, "done": done, "terminated": done},
        },
        batch_size=[T],
    ).unsqueeze(0)
    vtrace = TakenActionVTrace(gamma=gamma, value_network=critic, actor_network=actor)
    vtrace.set_keys(sample_log_prob="action_log_prob")
    out = vtrace(data.clone())

    # Reference: spec section 3, recursive form, mu = the compressed actor's recorded log-prob.
    with torch.no_grad():
        value = critic(TensorDict(obs=states, batch_size=[T + 1]))["state_value"].squeeze(-1)
        log_pi = actor.get_dist(TensorDict(obs=states[:-1], batch_size=[T])).log_prob(
            rollout["action"]
        )
    rho = (log_pi - rollout["action_log_prob"]).exp()
    rho_t, c_t = rho.clamp(max=rho_bar), rho.clamp(max=c_bar)
    not_done = (~done.squeeze(-1)).float()
    v_next = value[1:] * not_done
    delta = rho_t * (reward.squeeze(-1) + gamma * v_next - value[:-1])
    vs_minus_v = torch.zeros(T + 1)
    for t in reversed(range(T)):
        vs_minus_v[t] = delta[t] + gamma * c_t[t] * not_done[t] * vs_minus_v[t + 1]
    v_s = vs_minus_v[:-1] + value[:-1]
    torch.testing.assert_close(out["value_target"].squeeze(), v_s, rtol=1e-5, atol=1e-5)
    # the importance ratio really uses the compressed policy: mu != pi here
    assert not torch.allclose(log_pi, rollout["action_log_prob"])
    # TorchRL 0.14.1's VTrace evaluates log pi at a resampled/mode action, not the taken one,
    # so its targets differ from the reference; TakenActionVTrace fixes exactly that.
    upstream = VTrace(gamma=gamma, value_network=critic, actor_network=actor)
    upstream.set_keys(sample_log_prob="action_log_prob")
    assert not torch.allclose(upstream(data.clone())["value_target"].squeeze(), v_s, atol=1e-4)


def brute_force_retrace(q, pi, mu, states, actions, rewards, terminated, truncated, gamma, lmbda):
    """Sum form of Munos et al. (2016) for every start index, on a tabular MDP."""
    T = len(actions)
    v = (pi * q).sum(-1)  # E_pi Q(x, .)
    targets = []
    for s in range(T):
        total, trace, discount = float(q[states[s], actions[s]]), 1.0, 1.0
        for t in range(s, T):
            if t > s:
                ratio = pi[states[t], actions[t]] / mu[states[t], actions[t]]
                trace *= lmbda * min(1.0, float(ratio))
            bootstrap = 0.0 if terminated[t] else gamma * v[states[t + 1]]
            delta = rewards[t] + bootstrap - q[states[t], actions[t]]
            total += discount * trace * delta
            if terminated[t] or truncated[t]:
                break
            discount *= gamma
        targets.append(float(total))
    return torch.tensor(targets, dtype=torch.float64)


@pytest.mark.parametrize("lmbda", [1.0, 0.7, 0.0])
def test_retrace_matches_brute_force_on_small_mdp_with_episode_ends(lmbda):
    g = torch.Generator().manual_seed(1)
    n_states, n_actions, T, gamma = 5, 3, 16, 0.9
    q = torch.randn(n_states, n_actions, generator=g, dtype=torch.float64)
    pi = torch.softmax(torch.randn(n_states, n_actions, generator=g, dtype=torch.float64), -1)
    mu = torch.softmax(torch.randn(n_states, n_actions, generator=g, dtype=torch.float64), -1)
    # states has T + 1 entries: states[t + 1] is the true next state of step t (the final
    # observation at a truncation, a terminal state at termination)
    states = torch.randint(n_states, (T + 1,), generator=g)
    actions = torch.multinomial(mu[states[:-1]], 1, generator=g).squeeze(-1)
    rewards = torch.randn(T, generator=g, dtype=torch.float64)
    terminated = torch.zeros(T, dtype=torch.bool)
    truncated = torch.zeros(T, dtype=torch.bool)
    terminated[4], truncated[9] = True, True  # a termination and a time-limit truncation
    expected = brute_force_retrace(
        q, pi, mu, states, actions, rewards, terminated, truncated, gamma, lmbda
    )
    col = lambda x: x.reshape(T, 1)  # noqa: E731
    ours = retrace_return(
        reward=col(rewards),
        state_action_value=col(q[states[:-1], actions]),
        next_state_value=col((pi * q).sum(-1)[states[1:]]),
        log_rho=col(pi[states[:-1], actions].log() - mu[states[:-1], actions].log()),
        done=col(terminated | truncated),
        terminated=col(terminated),
        gamma=gamma,
        lmbda=lmbda,
    )
    torch.testing.assert_close(ours.squeeze(-1), expected)


def test_retrace_estimator_handles_batch_and_time_dim():
    g = torch.Generator().manual_seed(0)
    B, T = 3, 7
    fields = {
        "state_action_value": torch.randn(B, T, 1, generator=g),
        "action_log_prob": torch.randn(B, T, generator=g),
        "target_log_prob": torch.randn(B, T, generator=g),
        "next": {
            "reward": torch.randn(B, T, 1, generator=g),
            "state_value": torch.randn(B, T, 1, generator=g),
            "done": torch.rand(B, T, 1, generator=g) < 0.2,
            "terminated": torch.zeros(B, T, 1, dtype=torch.bool),
        },
    }
    td = TensorDict(fields, batch_size=[B, T])
    estimator = Retrace(gamma=0.95, lmbda=0.9)
    out = estimator(td.clone())
    per_row = [
        retrace_return(
            reward=td["next", "reward"][b],
            state_action_value=td["state_action_value"][b],
            next_state_value=td["next", "state_value"][b],
            log_rho=(td["target_log_prob"][b] - td["action_log_prob"][b]).unsqueeze(-1),
            done=td["next", "done"][b],
            terminated=td["next", "terminated"][b],
            gamma=0.95,
            lmbda=0.9,
        )
        for b in range(B)
    ]
    torch.testing.assert_close(out["value_target"], torch.stack(per_row))
    torch.testing.assert_close(out["advantage"], out["value_target"] - td["state_action_value"])
    # time as dim 0 gives the same targets
    out_t = Retrace(gamma=0.95, lmbda=0.9, time_dim=0)(td.clone().transpose(0, 1))
    torch.testing.assert_close(out_t["value_target"].transpose(0, 1), out["value_target"])


def test_retrace_errors_are_clear():
    with pytest.raises(ValueError, match="lmbda"):
        Retrace(gamma=0.9, lmbda=1.5)
    td = TensorDict({"next": {"reward": torch.zeros(2, 1)}}, batch_size=[2])
    with pytest.raises(KeyError, match="state_value"):
        Retrace(gamma=0.9).value_estimate(td)
    z = torch.zeros(3, 1)
    with pytest.raises(ValueError, match="shape"):
        retrace_return(
            reward=z,
            state_action_value=z,
            next_state_value=torch.zeros(4, 1),
            log_rho=z,
            done=z.bool(),
            terminated=z.bool(),
            gamma=0.9,
            lmbda=1.0,
        )


def _sac_parts():
    torch.manual_seed(0)
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(
                MLP(in_features=3, out_features=4, num_cells=[16]), NormalParamExtractor()
            ),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        return_log_prob=True,
    )
    qvalue = ValueOperator(
        MLP(in_features=5, out_features=1, num_cells=[16]), in_keys=["observation", "action"]
    )
    B, T = 4, 6
    data = TensorDict(
        {
            "observation": torch.randn(B, T, 3),
            "action": torch.rand(B, T, 2) * 1.8 - 0.9,
            "action_log_prob": torch.randn(B, T),
            "next": {
                "observation": torch.randn(B, T, 3),
                "reward": torch.randn(B, T, 1),
                "done": torch.zeros(B, T, 1, dtype=torch.bool),
                "terminated": torch.zeros(B, T, 1, dtype=torch.bool),
            },
        },
        [B, T],
    )
    return actor, qvalue, data


def test_retrace_sac_with_zero_lambda_equals_sac_td0_target():
    actor, qvalue, data = _sac_parts()
    ours = RetraceSACLoss(actor, qvalue, lmbda=0.0, gamma=0.9, target_entropy=-2.0)
    ref = SACLoss(actor, qvalue, target_entropy=-2.0)
    ref.make_value_estimator(gamma=0.9)
    ours.target_qvalue_network_params.update_(ref.target_qvalue_network_params)
    ours.qvalue_network_params.update_(ref.qvalue_network_params)
    torch.manual_seed(3)
    target_ours = ours._compute_target_v2(data.clone())
    torch.manual_seed(3)
    target_ref = ref._compute_target_v2(data.clone())
    torch.testing.assert_close(target_ours, target_ref)


def test_retrace_sac_losses_and_input_checks():
    actor, qvalue, data = _sac_parts()
    loss = RetraceSACLoss(actor, qvalue, lmbda=0.95, gamma=0.9, target_entropy=-2.0)
    out = loss(data.clone())
    out["loss_qvalue"].backward()
    assert all(torch.isfinite(out[k]) for k in ("loss_actor", "loss_qvalue", "loss_alpha"))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        loss(data[:, 0].clone())
    with pytest.raises(KeyError, match="action_log_prob"):
        loss(data.exclude("action_log_prob"))
