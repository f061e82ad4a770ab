"""How far a compressed policy strays from the full one: KL(π‖μ) and action agreement."""

from __future__ import annotations

import torch
from tensordict import TensorDictBase
from torch import distributions as D
from torch import nn

from torchrl_seer.modules.distributions import (
    DISCRETE_DISTRIBUTIONS,
    deterministic_action,
    policy_distribution,
)

__all__ = ["policy_divergence"]


def _get_dist(policy: nn.Module, observations: TensorDictBase):
    from torchrl_seer.collectors.compressed_policy import CompressedPolicy

    if isinstance(policy, CompressedPolicy):
        policy = policy.network
    return policy_distribution(policy, observations)


@torch.no_grad()
def policy_divergence(
    full_policy: nn.Module,
    compressed_policy: nn.Module,
    observations: TensorDictBase,
    *,
    num_samples: int = 16,
    action_atol: float = 0.05,
) -> dict[str, float]:
    """Measures KL(π‖μ) and action agreement between a full policy π and a compressed one μ.

    KL is exact when torch has a closed form for the distribution pair (categorical, normal) and
    a Monte-Carlo estimate with ``num_samples`` samples of π otherwise (e.g. ``TanhNormal``).
    Agreement is the fraction of states whose deterministic actions agree: the same argmax for
    discrete policies, all action dimensions within ``action_atol`` for continuous ones.

    Args:
        full_policy: π, a probabilistic TorchRL actor.
        compressed_policy: μ, a compressed copy (or a :class:`CompressedPolicy`).
        observations: a batch of states with the policies' input keys, batch dims ``[N]``.

    Keyword Args:
        num_samples: Monte-Carlo samples per state when no closed-form KL exists.
        action_atol: tolerance on continuous actions for agreement.

    Returns:
        ``{"kl": mean KL(π‖μ), "kl_max": max over states, "agreement": fraction in [0, 1]}``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(MLP(in_features=4, out_features=3, num_cells=[32]),
        ...                      in_keys=["observation"], out_keys=["logits"]),
        ...     in_keys=["logits"], distribution_class=torch.distributions.Categorical)
        >>> obs = TensorDict(observation=torch.randn(64, 4), batch_size=[64])
        >>> policy_divergence(actor, actor, obs)["kl"]
        0.0
    """
    p = _get_dist(full_policy, observations)
    q = _get_dist(compressed_policy, observations)
    try:
        kl = D.kl_divergence(p, q)
    except NotImplementedError:
        samples = p.sample((num_samples,))
        kl = (p.log_prob(samples) - q.log_prob(samples)).mean(0)
    kl = kl.reshape(observations.batch_size.numel(), -1).sum(-1).clamp_min(0.0)
    if isinstance(p, DISCRETE_DISTRIBUTIONS):
        agree = p.probs.argmax(-1) == q.probs.argmax(-1)
    else:
        diff = (
            (deterministic_action(p) - deterministic_action(q))
            .abs()
            .reshape(observations.batch_size.numel(), -1)
        )
        agree = (diff <= action_atol).all(-1)
    return {
        "kl": float(kl.mean()),
        "kl_max": float(kl.max()),
        "agreement": float(agree.float().mean()),
    }
