"""RetraceSACLoss: SAC whose critic targets are Retrace(λ) returns over sampled sequences."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from tensordict import NestedKey, TensorDictBase
from tensordict.nn import TensorDictModule
from torchrl.envs.utils import ExplorationType, set_exploration_type
from torchrl.modules import ProbabilisticActor
from torchrl.objectives import SACLoss

from torchrl_seer.objectives.value.retrace import Retrace

__all__ = ["RetraceSACLoss"]


class RetraceSACLoss(SACLoss):
    """Soft actor-critic with off-policy-corrected Retrace(λ) critic targets.

    Data are ``[B, T]`` sequences of consecutive transitions (e.g. from a ``SliceSampler``)
    collected by a behaviour policy μ — with AcceRL the *compressed* actor, whose
    log-probabilities are stored as ``sample_log_prob`` by
    :class:`~torchrl_seer.collectors.CompressedPolicy`. The critic target replaces SAC's one-step
    soft TD target by the Retrace return (Munos et al., 2016)::

        Q^ret_t = r_t + gamma*(1 - term_t)*[V_{t+1}
                  + (1 - done_t)*c_{t+1}*(Q^ret_{t+1} - Q'(x_{t+1}, a_{t+1}))]
        c_t = λ·min(1, π(a_t|x_t) / μ(a_t|x_t))

    with target critics Q' (minimum over the ensemble) and the soft value
    V_{t+1} = Q'(x_{t+1}, a') - alpha*log π(a'|x_{t+1}), a' ~ π (one sample, as in SAC). Using the
    soft value and a single sample of π for E_π Q are *our* choices for continuous actions (the
    AcceRL paper does not specify them). With λ = 0 the target is SAC's TD(0) target.

    Args:
        actor_network: the SAC actor (``ProbabilisticActor``).
        qvalue_network: the Q-value network (or list of them), as for ``SACLoss``.

    Keyword Args:
        lmbda: trace decay λ. Defaults to ``1.0``.
        gamma: discount. Defaults to ``0.99``.
        **kwargs: forwarded to :class:`~torchrl.objectives.SACLoss`.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule, NormalParamExtractor
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(nn.Sequential(nn.Linear(3, 4), NormalParamExtractor()),
        ...                      in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], distribution_class=TanhNormal, return_log_prob=True)
        >>> class Q(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Linear(5, 1)
        ...     def forward(self, obs, act):
        ...         return self.net(torch.cat([obs, act], -1))
        >>> qvalue = ValueOperator(Q(), in_keys=["observation", "action"])
        >>> loss = RetraceSACLoss(actor, qvalue, lmbda=0.9, gamma=0.9, target_entropy=-2.0)
        >>> B, T = 2, 5
        >>> data = TensorDict({
        ...     "observation": torch.randn(B, T, 3), "action": torch.rand(B, T, 2) * 2 - 1,
        ...     "action_log_prob": torch.zeros(B, T),
        ...     "next": {"observation": torch.randn(B, T, 3), "reward": torch.randn(B, T, 1),
        ...              "done": torch.zeros(B, T, 1, dtype=torch.bool),
        ...              "terminated": torch.zeros(B, T, 1, dtype=torch.bool)}}, [B, T])
        >>> sorted(k for k in loss(data).keys() if k.startswith("loss_"))
        ['loss_actor', 'loss_alpha', 'loss_qvalue']
    """

    @dataclass
    class _AcceptedKeys(SACLoss._AcceptedKeys):
        """Keys of :class:`RetraceSACLoss` (adds the behaviour log-probability).

        Attributes:
            behaviour_log_prob: log μ(a_t|x_t) recorded by the actor. Defaults to
                ``"action_log_prob"``.
        """

        behaviour_log_prob: NestedKey = "action_log_prob"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        actor_network: ProbabilisticActor,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        *,
        lmbda: float = 1.0,
        gamma: float = 0.99,
        **kwargs: Any,
    ) -> None:
        super().__init__(actor_network, qvalue_network, **kwargs)
        if self._version != 2:
            raise ValueError("RetraceSACLoss supports SAC v2 (no value_network) only")
        self.make_value_estimator(gamma=gamma, lmbda=lmbda)

    def make_value_estimator(
        self, value_type: str | None = None, **hyperparams: float
    ) -> RetraceSACLoss:
        """Installs the :class:`~torchrl_seer.objectives.value.Retrace` estimator.

        TorchRL's ``ValueEstimators`` enum is closed, so ``value_type`` must be ``None`` or
        ``"retrace"``.

        Args:
            value_type: ``None`` or ``"retrace"``.
            **hyperparams: ``gamma`` and ``lmbda`` overrides.

        Returns:
            ``self``.
        """
        if value_type not in (None, "retrace"):
            raise ValueError(f"RetraceSACLoss uses the Retrace estimator, got {value_type!r}")
        previous = getattr(self, "_value_estimator", None)
        if not isinstance(previous, Retrace):
            previous = None
        gamma = hyperparams.get("gamma", previous.gamma if previous is not None else 0.99)
        lmbda = hyperparams.get("lmbda", previous.lmbda if previous is not None else 1.0)
        estimator = Retrace(gamma=float(gamma), lmbda=float(lmbda))
        estimator.set_keys(
            value="state_value",
            reward=self.tensor_keys.reward,
            done=self.tensor_keys.done,
            terminated=self.tensor_keys.terminated,
            sample_log_prob=self.tensor_keys.behaviour_log_prob,
        )
        self._value_estimator = estimator
        return self

    def _compute_target_v2(self, tensordict: TensorDictBase) -> torch.Tensor:
        if tensordict.batch_dims < 2:
            raise ValueError(
                "RetraceSACLoss needs [B, T] sequences of consecutive transitions (e.g. from a "
                f"SliceSampler), got batch_size {tuple(tensordict.batch_size)}"
            )
        if tensordict.get(self.tensor_keys.behaviour_log_prob, None) is None:
            raise KeyError(
                f"RetraceSACLoss needs the behaviour log-probability "
                f"{self.tensor_keys.behaviour_log_prob!r} recorded by the actor"
            )
        data = tensordict.clone(False)
        estimator_keys = self.value_estimator.tensor_keys
        with torch.no_grad():
            # Q'(x_t, a_t): target critics, minimum over the ensemble.
            q_td = self._vmap_qnetworkN0(
                data.select(*self.qvalue_network.in_keys, strict=False),
                self.target_qvalue_network_params,
            )
            q_taken = q_td.get(self.tensor_keys.state_action_value).min(0)[0]
            data.set(estimator_keys.state_action_value, q_taken)
            # log π(a_t|x_t) under the learner's current actor.
            with (
                set_exploration_type(ExplorationType.RANDOM),
                self.actor_network_params.to_module(
                    self.actor_network, preserve_module_state=False
                ),
            ):
                dist = self.actor_network.get_dist(data)
                log_pi = dist.log_prob(data.get(self.tensor_keys.action))
            data.set(estimator_keys.target_log_prob, log_pi)
        return super()._compute_target_v2(data)
