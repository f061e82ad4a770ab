"""EGreedyLogProbModule: ε-greedy exploration that records the behaviour log-probability μ(a|x).

TorchRL's :class:`~torchrl.modules.EGreedyModule` replaces the greedy action of a
``QValueActor`` by a uniformly random one with probability ε but records no log-probability, so
an off-policy Corrector (Retrace) has no μ(a_t|x_t) to weigh the transition with. Inside a
:class:`~torchrl_seer.collectors.CompressedPolicy` the greedy action comes from the *compressed*
Q-network, so the probability written here is exactly the compressed actor's μ.
"""

from __future__ import annotations

import torch
from tensordict import NestedKey, TensorDictBase
from torchrl.data import Categorical, Composite, OneHot, TensorSpec
from torchrl.envs.utils import ExplorationType, exploration_type
from torchrl.modules import EGreedyModule

__all__ = ["EGreedyLogProbModule"]


class EGreedyLogProbModule(EGreedyModule):
    """TorchRL's ε-greedy module that also writes log μ(a|x) of the action it outputs.

    The action entering the module is the greedy action (e.g. written by a ``QValueActor``).
    With probability ε it is replaced by a uniform draw over the ``n`` (valid) actions, which may
    be the greedy action again, so the behaviour probability of the output action ``a`` is::

        μ(a|x) = ε/n + (1 - ε)·1[a = greedy(x)]

    Outside ``ExplorationType.RANDOM`` the parent does not explore and μ(greedy|x) = 1. With an
    action mask, ``n`` is the number of valid actions. Same constructor as
    :class:`~torchrl.modules.EGreedyModule`, limited to ``Categorical`` and ``OneHot`` specs.

    Args:
        spec: the action spec (``Categorical`` or ``OneHot``).
        eps_init: initial ε. Defaults to ``1.0``.
        eps_end: final ε. Defaults to ``0.1``.
        annealing_num_steps: calls to :meth:`step` to go from ``eps_init`` to ``eps_end``.
            Defaults to ``1000``.

    Keyword Args:
        action_key: the action entry. Defaults to ``"action"``.
        action_mask_key: the action-mask entry, if any. Defaults to ``None``.
        log_prob_key: where log μ(a|x) is written. Defaults to ``"action_log_prob"``, the key
            TorchRL's probabilistic actors use and the Retrace losses read.
        device: the module's device.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictSequential
        >>> from torchrl.data import Categorical
        >>> from torchrl.modules import MLP, QValueActor
        >>> spec = Categorical(4)
        >>> q_actor = QValueActor(MLP(in_features=3, out_features=4, num_cells=[16]),
        ...                       in_keys=["observation"], spec=spec)
        >>> policy = TensorDictSequential(
        ...     q_actor, EGreedyLogProbModule(spec, eps_init=0.2, eps_end=0.2))
        >>> out = policy(TensorDict(observation=torch.randn(5, 3), batch_size=[5]))
        >>> greedy = out["action_value"].argmax(-1) == out["action"]
        >>> expected = torch.where(greedy, torch.tensor(0.2 / 4 + 0.8), torch.tensor(0.2 / 4))
        >>> torch.allclose(out["action_log_prob"].exp(), expected)
        True
    """

    def __init__(
        self,
        spec: TensorSpec,
        eps_init: float = 1.0,
        eps_end: float = 0.1,
        annealing_num_steps: int = 1000,
        *,
        action_key: NestedKey = "action",
        action_mask_key: NestedKey | None = None,
        log_prob_key: NestedKey = "action_log_prob",
        device: torch.device | None = None,
    ) -> None:
        action_spec = spec[action_key] if isinstance(spec, Composite) else spec
        if not isinstance(action_spec, (Categorical, OneHot)):
            raise TypeError(
                "EGreedyLogProbModule needs a Categorical or OneHot action spec (one discrete "
                f"action per step), got {type(action_spec).__name__}"
            )
        super().__init__(
            spec,
            eps_init,
            eps_end,
            annealing_num_steps,
            action_key=action_key,
            action_mask_key=action_mask_key,
            device=device,
        )
        self.one_hot = isinstance(action_spec, OneHot)
        self.num_actions = int(action_spec.space.n)
        self.log_prob_key = log_prob_key
        self.out_keys = [action_key, log_prob_key]

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Explores like :class:`~torchrl.modules.EGreedyModule` and writes log μ(a|x).

        Args:
            tensordict: holds the greedy action under ``action_key``.

        Returns:
            ``tensordict`` with the (possibly random) action and its log-probability.
        """
        greedy = tensordict.get(self.action_key).clone()
        tensordict = super().forward(tensordict)
        action = tensordict.get(self.action_key)
        is_greedy = (action == greedy).all(-1) if self.one_hot else action == greedy
        explores = exploration_type() in (ExplorationType.RANDOM, None)
        eps = self.eps if explores else torch.zeros_like(self.eps)
        if self.action_mask_key is not None:
            num_actions = tensordict.get(self.action_mask_key).sum(-1)
            if not self.one_hot:
                num_actions = num_actions.reshape(is_greedy.shape)
        else:
            num_actions = torch.full_like(is_greedy, self.num_actions, dtype=torch.long)
        prob = eps / num_actions + (1.0 - eps) * is_greedy.to(eps.dtype)
        tensordict.set(self.log_prob_key, prob.log())
        return tensordict
