"""V-trace whose importance ratios use the *taken* action (fixes TorchRL 0.14.1's VTrace).

TorchRL 0.14.1's :class:`~torchrl.objectives.value.VTrace` computes log π by calling
``_call_actor_net``, which evaluates the learner's distribution at a *new* action (a fresh
sample, or the mode under deterministic interaction) instead of the action a_t stored in the
batch. The ratio rho_t = π(a_t|x_t) / μ(a_t|x_t) of IMPALA then compares the log-probabilities of
two different actions. :class:`TakenActionVTrace` keeps TorchRL's estimator (value-network
calls, keys, ``average_adv``, the functional ``vtrace_advantage_estimate``) and only evaluates
log π at the stored action. With AcceRL, log μ is the compressed actor's recorded log-prob.
"""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDictBase, is_tensor_collection
from torchrl.objectives.utils import hold_out_net
from torchrl.objectives.value import VTrace
from torchrl.objectives.value.functional import vtrace_advantage_estimate

__all__ = ["TakenActionVTrace"]


class TakenActionVTrace(VTrace):
    """TorchRL's V-trace with rho_t = π(a_t|x_t) / μ(a_t|x_t) evaluated at the taken action.

    Same constructor as :class:`~torchrl.objectives.value.VTrace` (``shifted=True`` is not
    supported). The action is read from ``action_key``.

    Keyword Args:
        action_key: the stored action entry. Defaults to ``"action"``.
        **kwargs: forwarded to :class:`~torchrl.objectives.value.VTrace`.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import ProbabilisticActor
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(torch.nn.Linear(3, 2), in_keys=["obs"], out_keys=["logits"]),
        ...     in_keys=["logits"], distribution_class=torch.distributions.Categorical)
        >>> critic = TensorDictModule(torch.nn.Linear(3, 1), in_keys=["obs"],
        ...                           out_keys=["state_value"])
        >>> vtrace = TakenActionVTrace(gamma=0.9, actor_network=actor, value_network=critic)
        >>> T = 5
        >>> data = TensorDict({"obs": torch.randn(1, T, 3), "action": torch.zeros(1, T).long(),
        ...     "action_log_prob": torch.full((1, T), -0.7),
        ...     "next": {"obs": torch.randn(1, T, 3), "reward": torch.ones(1, T, 1),
        ...              "done": torch.zeros(1, T, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(1, T, 1, dtype=torch.bool)}}, [1, T])
        >>> vtrace(data)["value_target"].shape
        torch.Size([1, 5, 1])
    """

    def __init__(self, *, action_key: str = "action", **kwargs: Any) -> None:
        if kwargs.get("shifted", False):
            raise ValueError("TakenActionVTrace does not support shifted=True")
        super().__init__(**kwargs)
        self.action_key = action_key

    def forward(
        self,
        tensordict: TensorDictBase,
        *,
        params: TensorDictBase | None = None,
        target_params: TensorDictBase | None = None,
        time_dim: int | None = None,
    ) -> TensorDictBase:
        """Writes the V-trace ``advantage`` and ``value_target`` into ``tensordict``.

        Args:
            tensordict: ``[*B, T]`` transitions with observations, the taken action, the
                behaviour log-prob (``sample_log_prob`` key) and ``("next", ...)`` entries.

        Keyword Args:
            params: functional value-network parameters, as for TorchRL's ``VTrace``.
            target_params: functional target parameters for the next values.
            time_dim: the time dimension (defaults to the last batch dimension).

        Returns:
            ``tensordict``, updated.
        """
        if tensordict.batch_dims < 1:
            raise RuntimeError("V-trace needs a time dimension: batch_size [*B, T]")
        reward = tensordict.get(("next", self.tensor_keys.reward))
        gamma = self.gamma.to(reward.device)
        with torch.set_grad_enabled(self.differentiable):
            if self.value_network is not None:
                if params is not None:
                    params = params.detach()
                    if target_params is None:
                        target_params = params.clone(False)
                with hold_out_net(self.value_network):
                    value, next_value, _ = self._call_value_nets(
                        data=tensordict,
                        params=params,
                        next_params=target_params,
                        single_call=False,
                        value_key=self.tensor_keys.value,
                        detach_next=True,
                        vmap_randomness=self.vmap_randomness,
                    )
            else:
                value = tensordict.get(self.tensor_keys.value)
                next_value = tensordict.get(("next", self.tensor_keys.value))
        log_mu = tensordict.get(self.tensor_keys.sample_log_prob, None)
        action = tensordict.get(self.action_key, None)
        if log_mu is None or action is None:
            raise KeyError(
                f"V-trace needs the behaviour log-prob {self.tensor_keys.sample_log_prob!r} "
                f"and the taken action {self.action_key!r}"
            )
        if is_tensor_collection(log_mu):
            log_mu = log_mu.sum(dim="feature", reduce=True)
        with torch.no_grad(), hold_out_net(self.actor_network):
            dist = self.actor_network.get_dist(
                tensordict.select(*self.actor_network.in_keys, strict=False)
            )
            log_pi = dist.log_prob(action)
        time_dim = self._get_time_dim(time_dim, tensordict)
        advantage, value_target = vtrace_advantage_estimate(
            gamma,
            log_pi.view_as(value),
            log_mu.view_as(value),
            value,
            next_value,
            reward,
            tensordict.get(("next", self.tensor_keys.done)),
            tensordict.get(("next", self.tensor_keys.terminated)),
            rho_thresh=self.rho_thresh,
            c_thresh=self.c_thresh,
            time_dim=time_dim,
        )
        if self.average_adv:
            advantage = (advantage - advantage.mean()) / advantage.std().clamp_min(1e-5)
        tensordict.set(self.tensor_keys.advantage, advantage)
        tensordict.set(self.tensor_keys.value_target, value_target)
        return tensordict
