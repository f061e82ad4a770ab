"""Retrace(λ) (Munos et al., 2016): safe off-policy return targets for Q-learning.

TorchRL 0.14 has no Retrace and its ``ValueEstimators`` enum is closed, so this estimator is a
:class:`~torchrl.objectives.value.ValueEstimatorBase` subclass that Q-learning losses call
directly (see :class:`~torchrl_seer.objectives.RetraceSACLoss`). With AcceRL compressed actors
the behaviour policy μ is the *compressed* actor, whose log-probabilities are recorded at acting
time, and the target policy π is the learner's current policy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import NestedKey, TensorDictBase
from torchrl.objectives.value import ValueEstimatorBase

__all__ = ["Retrace", "retrace_return"]


def retrace_return(
    *,
    reward: torch.Tensor,
    state_action_value: torch.Tensor,
    next_state_value: torch.Tensor,
    log_rho: torch.Tensor,
    done: torch.Tensor,
    terminated: torch.Tensor,
    gamma: float,
    lmbda: float,
) -> torch.Tensor:
    r"""Computes Retrace(λ) targets along the time dimension (``-2``) of ``[*B, T, 1]`` inputs.

    .. math::

        c_t = \lambda \min(1, \pi(a_t|x_t)/\mu(a_t|x_t)) \\
        Q^{ret}_t = r_t + \gamma (1 - \text{term}_t) \big[ V_{t+1}
                  + (1 - \text{done}_t)\, c_{t+1} (Q^{ret}_{t+1} - Q(x_{t+1}, a_{t+1})) \big]

    where :math:`V_{t+1} = \mathbb{E}_{a\sim\pi} Q(x_{t+1}, a)`. A terminal step bootstraps with
    0; any episode end (terminal or truncated) cuts the trace because the next entry belongs to a
    new episode; a truncated step, and the last step of the sequence, bootstrap with
    :math:`V_{t+1}` computed on the true next observation.

    Keyword Args:
        reward: r_t, shape ``[*B, T, 1]`` (all tensors share it).
        state_action_value: Q(x_t, a_t) (usually from target critics).
        next_state_value: E_{a~π} Q(x_{t+1}, a) (soft value for SAC).
        log_rho: log π(a_t|x_t) - log μ(a_t|x_t).
        done: episode ended at t (terminated or truncated).
        terminated: episode terminated at t (no bootstrap).
        gamma: discount.
        lmbda: trace decay λ.

    Returns:
        Q^ret with the shape of ``reward``.

    Examples:
        >>> import torch
        >>> T = 3
        >>> zeros = torch.zeros(T, 1)
        >>> q_ret = retrace_return(reward=torch.ones(T, 1), state_action_value=zeros,
        ...     next_state_value=zeros, log_rho=zeros, done=zeros.bool(),
        ...     terminated=zeros.bool(), gamma=0.5, lmbda=1.0)
        >>> q_ret.squeeze(-1).tolist()
        [1.75, 1.5, 1.0]
    """
    if not (
        reward.shape
        == state_action_value.shape
        == next_state_value.shape
        == log_rho.shape
        == done.shape
        == terminated.shape
    ):
        raise ValueError(
            "retrace_return inputs must share one [*B, T, 1] shape, got "
            f"reward {tuple(reward.shape)}, Q {tuple(state_action_value.shape)}, "
            f"next V {tuple(next_state_value.shape)}, log_rho {tuple(log_rho.shape)}, "
            f"done {tuple(done.shape)}, terminated {tuple(terminated.shape)}"
        )
    trace = lmbda * log_rho.clamp(max=0.0).exp()
    not_terminal = (~terminated.bool()).to(reward.dtype)
    continues = (~done.bool()).to(reward.dtype)
    steps = reward.shape[-2]
    q_ret = torch.empty_like(reward)
    q_ret[..., -1, :] = (
        reward[..., -1, :] + gamma * not_terminal[..., -1, :] * (next_state_value[..., -1, :])
    )
    for t in range(steps - 2, -1, -1):
        correction = trace[..., t + 1, :] * (
            q_ret[..., t + 1, :] - state_action_value[..., t + 1, :]
        )
        q_ret[..., t, :] = reward[..., t, :] + gamma * not_terminal[..., t, :] * (
            next_state_value[..., t, :] + continues[..., t, :] * correction
        )
    return q_ret


class Retrace(ValueEstimatorBase):
    """Retrace(λ) value estimator for state-action values.

    Reads, on a ``[*B, T]`` tensordict of consecutive transitions (e.g. sampled with TorchRL's
    ``SliceSampler``): ``("next", reward)``, ``("next", done)``, ``("next", terminated)``,
    ``state_action_value`` = Q(x_t, a_t), ``("next", value)`` = E_π Q(x_{t+1}, ·),
    ``sample_log_prob`` (``"action_log_prob"`` by default) = log μ(a_t|x_t) recorded by the
    (compressed) actor and
    ``target_log_prob`` = log π(a_t|x_t) under the learner's policy. Writes
    ``value_target`` = Q^ret and ``advantage`` = Q^ret - Q(x_t, a_t).

    The estimator does not call networks: the loss that owns the critics and the actor fills the
    inputs (exact expectation for discrete actions, samples from π for continuous ones), which
    keeps it usable with any Q-learning loss.

    Keyword Args:
        gamma: discount factor.
        lmbda: trace decay λ in ``c = λ·min(1, π/μ)``. Defaults to ``1.0``.
        time_dim: time dimension of the input tensordict. Defaults to the last batch dim.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> T = 4
        >>> td = TensorDict({
        ...     "state_action_value": torch.zeros(T, 1),
        ...     "action_log_prob": torch.zeros(T),
        ...     "target_log_prob": torch.zeros(T),
        ...     "next": {"reward": torch.ones(T, 1), "state_value": torch.zeros(T, 1),
        ...              "done": torch.zeros(T, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(T, 1, dtype=torch.bool)},
        ... }, batch_size=[T])
        >>> Retrace(gamma=0.5)(td)["value_target"].squeeze(-1).tolist()
        [1.875, 1.75, 1.5, 1.0]
    """

    @dataclass
    class _AcceptedKeys(ValueEstimatorBase._AcceptedKeys):
        """Keys of the Retrace estimator (adds two to TorchRL's estimator keys).

        Attributes:
            state_action_value: Q(x_t, a_t). Defaults to ``"state_action_value"``.
            target_log_prob: log π(a_t|x_t) under the target policy. Defaults to
                ``"target_log_prob"``.
        """

        # TorchRL's ``set_keys`` looks names up in this class's own ``__dict__``, so the
        # inherited fields are re-declared with their TorchRL defaults.
        advantage: NestedKey = "advantage"
        value_target: NestedKey = "value_target"
        value: NestedKey = "state_value"
        reward: NestedKey = "reward"
        done: NestedKey = "done"
        terminated: NestedKey = "terminated"
        steps_to_next_obs: NestedKey = "steps_to_next_obs"
        sample_log_prob: NestedKey | None = None
        state_action_value: NestedKey = "state_action_value"
        target_log_prob: NestedKey = "target_log_prob"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        *,
        gamma: float,
        lmbda: float = 1.0,
        time_dim: int | None = None,
    ) -> None:
        super().__init__(value_network=None)
        if not 0.0 <= lmbda <= 1.0:
            raise ValueError(f"Retrace lmbda must be in [0, 1], got {lmbda}")
        self.gamma = float(gamma)
        self.lmbda = float(lmbda)
        self.time_dim = time_dim

    @property
    def in_keys(self) -> list[NestedKey]:
        """Keys read by :meth:`forward`."""
        keys = self.tensor_keys
        return [
            ("next", keys.reward),
            ("next", keys.done),
            ("next", keys.terminated),
            ("next", keys.value),
            keys.state_action_value,
            keys.sample_log_prob,
            keys.target_log_prob,
        ]

    @property
    def out_keys(self) -> list[NestedKey]:
        """Keys written by :meth:`forward`."""
        return [self.tensor_keys.value_target, self.tensor_keys.advantage]

    def value_estimate(
        self,
        tensordict: TensorDictBase,
        target_params: TensorDictBase | None = None,
        next_value: torch.Tensor | None = None,
        time_dim: int | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Returns Q^ret with shape ``[*B, T, 1]``.

        Args:
            tensordict: the ``[*B, T]`` input (see the class docstring).
            target_params: unused (no network is called).
            next_value: overrides ``("next", value)`` when given.
            time_dim: overrides the estimator's ``time_dim``.
            **kwargs: ignored, for TorchRL signature compatibility.

        Returns:
            The Retrace targets.
        """
        keys = self.tensor_keys
        if tensordict.batch_dims < 1:
            raise RuntimeError("Retrace needs a time dimension: batch_size [*B, T]")
        dim = time_dim if time_dim is not None else self.time_dim
        dim = tensordict.batch_dims - 1 if dim is None else dim % tensordict.batch_dims
        last = tensordict.batch_dims - 1
        data = tensordict.transpose(dim, last) if dim != last else tensordict

        def column(key: NestedKey) -> torch.Tensor:
            value = data.get(key, None)
            if value is None:
                raise KeyError(f"Retrace needs the entry {key!r} in its input tensordict")
            return (
                value
                if value.shape == (*data.batch_size, 1)
                else value.reshape(*data.batch_size, 1)
            )

        reward = column(("next", keys.reward))
        if next_value is None:
            next_value = column(("next", keys.value))
        else:
            next_value = next_value.reshape(reward.shape)
        log_rho = column(keys.target_log_prob) - column(keys.sample_log_prob)
        q_ret = retrace_return(
            reward=reward,
            state_action_value=column(keys.state_action_value),
            next_state_value=next_value,
            log_rho=log_rho,
            done=column(("next", keys.done)),
            terminated=column(("next", keys.terminated)),
            gamma=self.gamma,
            lmbda=self.lmbda,
        )
        if dim != last:
            q_ret = q_ret.transpose(dim, last)
        return q_ret

    def forward(
        self,
        tensordict: TensorDictBase,
        *,
        params: TensorDictBase | None = None,
        target_params: TensorDictBase | None = None,
        time_dim: int | None = None,
    ) -> TensorDictBase:
        """Writes ``value_target`` (Q^ret) and ``advantage`` (Q^ret - Q) into ``tensordict``.

        Args:
            tensordict: the ``[*B, T]`` input (see the class docstring).

        Keyword Args:
            params: unused (no network is called).
            target_params: unused.
            time_dim: overrides the estimator's ``time_dim``.

        Returns:
            ``tensordict``, updated.
        """
        with torch.no_grad():
            q_ret = self.value_estimate(tensordict, time_dim=time_dim)
            q_value = tensordict.get(self.tensor_keys.state_action_value).reshape(q_ret.shape)
        tensordict.set(self.tensor_keys.value_target, q_ret)
        tensordict.set(self.tensor_keys.advantage, q_ret - q_value)
        return tensordict
