"""RetraceDQNLoss: discrete-action Q-learning with Retrace(λ) targets over sampled sequences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import NestedKey, TensorDict, TensorDictBase, TensorDictParams
from tensordict.nn import dispatch
from torch import nn
from torchrl.data import Categorical, Composite, OneHot, TensorSpec
from torchrl.modules import QValueActor
from torchrl.objectives import DQNLoss
from torchrl.objectives.utils import distance_loss

from torchrl_seer.objectives.value.retrace import Retrace

__all__ = ["RetraceDQNLoss"]

_TARGET_POLICIES = ("greedy", "epsilon_greedy", "softmax")


def _check_discrete_action_space(
    action_space: str | TensorSpec | None, value_network: nn.Module
) -> None:
    """Raises unless the action space is one discrete action per step (categorical, one-hot)."""
    space = action_space if action_space is not None else getattr(value_network, "spec", None)
    if isinstance(space, Composite) and "action" in space.keys():
        space = space["action"]
    if space is None:
        return  # DQNLoss raises its own error when it cannot find the action space
    name = space if isinstance(space, str) else type(space).__name__
    if isinstance(space, TensorSpec):
        ok = isinstance(space, (Categorical, OneHot))
    else:
        ok = space.replace("-", "_") in ("categorical", "one_hot")
    if not ok:
        raise ValueError(
            "RetraceDQNLoss needs one discrete action per step: a 'categorical' or 'one-hot' "
            f"action space (Categorical or OneHot spec), got {name}"
        )


class RetraceDQNLoss(DQNLoss):
    r"""DQN whose regression targets are Retrace(λ) returns (Munos et al., 2016).

    Data are ``[B, T]`` sequences of consecutive transitions (e.g. a ``SliceSampler`` sample
    reshaped to ``[num_slices, slice_len]``) collected by a behaviour policy μ whose
    log-probability of the taken action is stored under ``behaviour_log_prob`` — with AcceRL
    the *compressed* actor: a :class:`~torchrl_seer.collectors.CompressedPolicy` around a
    ``QValueActor`` followed by :class:`~torchrl_seer.modules.EGreedyLogProbModule`. The
    online Q-value Q(x_t, a_t) regresses onto

    .. math::

        Q^{ret}_t = r_t + \gamma (1 - \text{term}_t) \big[ \mathbb{E}_{a\sim\pi} Q'(x_{t+1}, a)
                  + (1 - \text{done}_t)\, c_{t+1} (Q^{ret}_{t+1} - Q'(x_{t+1}, a_{t+1})) \big],
        \qquad c_t = \lambda \min\big(1, \pi(a_t|x_t) / \mu(a_t|x_t)\big)

    with the target network Q' and the expectation computed exactly over the discrete actions
    (the recursion is :func:`~torchrl_seer.objectives.value.retrace_return`). A terminal step
    bootstraps with 0; any episode end cuts the trace; a truncated step and the last step of a
    sequence bootstrap with E_π Q' on the true next observation.

    **Target policy π** (*our* choice; the AcceRL paper does not specify it). π is computed from
    the online Q-network when ``double_dqn=True`` (the default) and from the target network
    otherwise, so that λ = 0 with the greedy π is exactly TorchRL's (double) DQN target:

    * ``"greedy"`` (default): π = argmax Q. This is Retrace for control (Munos et al., §3.2),
      which converges to Q*; c_t = λ on greedy actions and 0 on exploratory ones, so a trace
      runs as long as the compressed actor agrees with the learner's greedy choice (its int8 or
      pruned argmax may differ — that is the off-policyness Retrace corrects).
    * ``"epsilon_greedy"``: π = ε/n + (1 - ε)·1[argmax], with ``target_epsilon``. Traces survive
      exploratory steps (c_t = λ·min(1, ε/(n·μ))), at the price of evaluating an ε-soft policy
      instead of the greedy one.
    * ``"softmax"``: π = softmax(Q/``temperature``).

    Args:
        value_network: the Q-value network: a ``QValueActor`` or an ``nn.Module`` mapping
            observations to action values (then give ``action_space``).

    Keyword Args:
        lmbda: trace decay λ in [0, 1]. Defaults to ``1.0``.
        gamma: discount. Defaults to ``0.99``.
        target_policy: ``"greedy"``, ``"epsilon_greedy"`` or ``"softmax"``. Defaults to
            ``"greedy"``.
        target_epsilon: ε of the ``"epsilon_greedy"`` target policy. Defaults to ``0.01``.
        temperature: temperature of the ``"softmax"`` target policy. Defaults to ``1.0``.
        double_dqn: compute π from the online network (``True``) or the target network.
            Defaults to ``True``.
        loss_function: ``"l2"``, ``"l1"`` or ``"smooth_l1"``. Defaults to ``"l2"``.
        delay_value: keep a target network (update it with ``SoftUpdate``/``HardUpdate``).
            Defaults to ``True``.
        action_space: ``"categorical"``, ``"one-hot"`` or the matching spec; read from the
            value network when ``None``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``. Defaults to ``"mean"``.
        use_prioritized_weights: weigh the loss by ``priority_weight`` when present
            (``"auto"``), always (``True``) or never (``False``). Defaults to ``"auto"``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl.data import Categorical
        >>> from torchrl.modules import MLP, QValueActor
        >>> spec = Categorical(3)
        >>> q_actor = QValueActor(MLP(in_features=4, out_features=3, num_cells=[16]),
        ...                       in_keys=["observation"], spec=spec)
        >>> loss = RetraceDQNLoss(q_actor, lmbda=0.95, gamma=0.9)
        >>> B, T = 2, 5
        >>> data = TensorDict({
        ...     "observation": torch.randn(B, T, 4), "action": spec.rand((B, T)),
        ...     "action_log_prob": torch.full((B, T), -1.1),
        ...     "next": {"observation": torch.randn(B, T, 4), "reward": torch.randn(B, T, 1),
        ...              "done": torch.zeros(B, T, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(B, T, 1, dtype=torch.bool)}}, [B, T])
        >>> loss(data)["loss"].shape
        torch.Size([])
        >>> data["td_error"].shape
        torch.Size([2, 5, 1])
    """

    @dataclass
    class _AcceptedKeys(DQNLoss._AcceptedKeys):
        """Keys of :class:`RetraceDQNLoss` (adds the behaviour log-probability).

        Attributes:
            behaviour_log_prob: log μ(a_t|x_t) recorded by the acting policy. Defaults to
                ``"action_log_prob"``.
        """

        behaviour_log_prob: NestedKey = "action_log_prob"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys
    default_value_estimator = None

    def __init__(
        self,
        value_network: QValueActor | nn.Module,
        *,
        lmbda: float = 1.0,
        gamma: float = 0.99,
        target_policy: str = "greedy",
        target_epsilon: float = 0.01,
        temperature: float = 1.0,
        double_dqn: bool = True,
        loss_function: str = "l2",
        delay_value: bool = True,
        action_space: str | TensorSpec | None = None,
        reduction: str | None = None,
        use_prioritized_weights: str | bool = "auto",
    ) -> None:
        if target_policy not in _TARGET_POLICIES:
            raise ValueError(
                f"target_policy must be one of {_TARGET_POLICIES}, got {target_policy!r}"
            )
        if not 0.0 <= target_epsilon <= 1.0:
            raise ValueError(f"target_epsilon must be in [0, 1], got {target_epsilon}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if double_dqn and not delay_value:
            raise ValueError(
                "RetraceDQNLoss: double_dqn=True (π from the online network, values from the "
                "target network) requires delay_value=True"
            )
        _check_discrete_action_space(action_space, value_network)
        super().__init__(
            value_network,
            loss_function=loss_function,
            delay_value=delay_value,
            double_dqn=double_dqn,
            action_space=action_space,
            reduction=reduction,
            use_prioritized_weights=use_prioritized_weights,
        )
        self.target_policy = target_policy
        self.target_epsilon = float(target_epsilon)
        self.temperature = float(temperature)
        self.make_value_estimator(gamma=gamma, lmbda=lmbda)

    def make_value_estimator(self, value_type: Any = None, **hyperparams: Any) -> RetraceDQNLoss:
        """Installs the :class:`~torchrl_seer.objectives.value.Retrace` estimator.

        TorchRL's ``ValueEstimators`` enum is closed and has no Retrace, so ``value_type`` must
        be ``None`` or ``"retrace"``.

        Args:
            value_type: ``None`` or ``"retrace"``.
            **hyperparams: ``gamma`` and/or ``lmbda``; the ones not given keep their current
                values.

        Returns:
            ``self``.
        """
        if value_type not in (None, "retrace"):
            raise ValueError(f"RetraceDQNLoss uses the Retrace estimator, got {value_type!r}")
        unknown = set(hyperparams) - {"gamma", "lmbda"}
        if unknown:
            raise TypeError(f"Retrace takes gamma and lmbda, got {sorted(unknown)}")
        current: Any = getattr(self, "_value_estimator", None)
        gamma = float(hyperparams.get("gamma", current.gamma if current is not None else 0.99))
        lmbda = float(hyperparams.get("lmbda", current.lmbda if current is not None else 1.0))
        self._value_estimator = Retrace(gamma=gamma, lmbda=lmbda)
        self._forward_value_estimator_keys()
        return self

    def _forward_value_estimator_keys(self, **kwargs: Any) -> None:
        if self._value_estimator is not None:
            self._value_estimator.set_keys(
                advantage=self.tensor_keys.advantage,
                value_target=self.tensor_keys.value_target,
                reward=self.tensor_keys.reward,
                done=self.tensor_keys.done,
                terminated=self.tensor_keys.terminated,
                sample_log_prob=self.tensor_keys.behaviour_log_prob,
            )
        self._set_in_keys()

    def _set_in_keys(self) -> None:
        super()._set_in_keys()
        in_keys: list[NestedKey] = getattr(self, "_in_keys", None) or []
        self._in_keys = sorted({*in_keys, self.tensor_keys.behaviour_log_prob}, key=str)

    def _action_values(self, inputs: TensorDictBase, params: TensorDictBase) -> torch.Tensor:
        """Runs the Q-network with ``params`` on ``[B, T]`` inputs flattened to one batch dim."""
        flat = inputs.select(*self.value_network.in_keys, strict=False).reshape(-1)
        with params.to_module(self.value_network, preserve_module_state=False):
            values = self.value_network(flat).get(self.tensor_keys.action_value)
        return values.reshape(*inputs.batch_size, values.shape[-1])

    def _action_index(self, action: torch.Tensor, batch_size: torch.Size) -> torch.Tensor:
        """Returns the taken actions as ``[B, T, 1]`` indices."""
        if self.action_space == "one_hot":
            action = action.argmax(-1)
        return action.reshape(*batch_size, 1).long()

    def _target_policy_probs(self, action_values: torch.Tensor) -> torch.Tensor:
        """π(·|x) over the discrete actions, from action values ``[..., n]``."""
        if self.target_policy == "softmax":
            return torch.softmax(action_values / self.temperature, dim=-1)
        num_actions = action_values.shape[-1]
        greedy = nn.functional.one_hot(action_values.argmax(-1), num_actions)
        greedy = greedy.to(action_values.dtype)
        if self.target_policy == "greedy":
            return greedy
        return self.target_epsilon / num_actions + (1.0 - self.target_epsilon) * greedy

    def _check_input(self, tensordict: TensorDictBase) -> None:
        if tensordict.batch_dims < 2 or tensordict.batch_size[-1] < 2:
            raise ValueError(
                "RetraceDQNLoss needs [B, T] sequences of consecutive transitions with T >= 2 "
                "(e.g. a SliceSampler sample reshaped to [num_slices, slice_len]), got "
                f"batch_size {tuple(tensordict.batch_size)}"
            )
        if tensordict.get(self.tensor_keys.behaviour_log_prob, None) is None:
            raise KeyError(
                f"RetraceDQNLoss needs the behaviour log-probability "
                f"{self.tensor_keys.behaviour_log_prob!r} recorded by the acting policy (e.g. "
                "EGreedyLogProbModule after a QValueActor, inside a CompressedPolicy)"
            )

    def retrace_target(
        self, tensordict: TensorDictBase, online_action_values: torch.Tensor
    ) -> torch.Tensor:
        """Computes the Retrace(λ) targets Q^ret of a ``[B, T]`` batch (no gradient).

        Args:
            tensordict: the ``[B, T]`` input batch.
            online_action_values: Q(x_t, ·) of the online network, ``[B, T, n]``.

        Returns:
            Q^ret with shape ``[B, T]``.
        """
        keys = self.tensor_keys
        batch_size = tensordict.batch_size
        action = self._action_index(tensordict.get(keys.action), batch_size)
        next_inputs = tensordict.get("next")
        target_params: TensorDictParams = self.target_value_network_params
        with torch.no_grad():
            target_values = self._action_values(tensordict, target_params)
            next_target_values = self._action_values(next_inputs, target_params)
            if self.double_dqn:
                policy_values = online_action_values.detach()
                next_policy_values = self._action_values(
                    next_inputs, self.value_network_params.data
                )
            else:
                policy_values, next_policy_values = target_values, next_target_values
            next_pi = self._target_policy_probs(next_policy_values)
            pi_taken = self._target_policy_probs(policy_values).gather(-1, action)
            estimator_keys = self.value_estimator.tensor_keys
            data = tensordict.select(
                keys.behaviour_log_prob,
                ("next", keys.reward),
                ("next", keys.done),
                ("next", keys.terminated),
            )
            data.set(estimator_keys.state_action_value, target_values.gather(-1, action))
            data.set(estimator_keys.target_log_prob, pi_taken.log())
            data.set(
                ("next", estimator_keys.value),
                (next_pi * next_target_values).sum(-1, keepdim=True),
            )
            return self.value_estimator.value_estimate(data).squeeze(-1)

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDict:
        """Computes the Retrace-DQN loss on a ``[B, T]`` batch of consecutive transitions.

        Also writes the squared TD error ``td_error`` (``priority`` key), shape ``[B, T, 1]``,
        into ``tensordict`` for prioritized replay.

        Args:
            tensordict: ``[B, T]`` transitions with the value network's in-keys, the action,
                the behaviour log-prob and ``("next", ...)`` observations, reward, done and
                terminated.

        Returns:
            A tensordict with the scalar ``"loss"`` (the key of TorchRL's ``DQNLoss``).
        """
        self._check_input(tensordict)
        keys = self.tensor_keys
        online_values = self._action_values(tensordict, self.value_network_params)
        action = self._action_index(tensordict.get(keys.action), tensordict.batch_size)
        predicted = online_values.gather(-1, action).squeeze(-1)
        target = self.retrace_target(tensordict, online_values)
        with torch.no_grad():
            priority = (predicted - target).pow(2).unsqueeze(-1)
        tensordict.set(keys.priority, priority, inplace=True)
        loss = distance_loss(predicted, target, self.loss_function)
        loss = self._reduce_loss(
            loss, tensordict=tensordict, weights=self._maybe_get_priority_weight(tensordict)
        )
        td_out = TensorDict(loss=loss)
        self._clear_weakrefs(
            tensordict, td_out, "value_network_params", "target_value_network_params"
        )
        return td_out
