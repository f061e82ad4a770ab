"""DistillationLoss: trains a small student policy to imitate the learner's policy."""

from __future__ import annotations

from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import distributions as D
from torchrl.objectives import LossModule

from torchrl_seer.modules.distributions import (
    DISCRETE_DISTRIBUTIONS,
    deterministic_action,
    policy_distribution,
)

__all__ = ["DistillationLoss"]


class DistillationLoss(LossModule):
    """Policy distillation: KL(teacher‖student), plus MSE on actions for continuous policies.

    AcceRL distils the learner's policy into a smaller network "with KL-divergence and MSE
    losses", asynchronously with the learner. This loss is the student's objective; run its
    optimiser beside the RL updates on the learner's recent states and ship the student with
    :class:`~torchrl_seer.collectors.Distill` as the first compression step. The teacher is
    never updated by this loss.

    * discrete policies: ``loss_distill = KL(π_teacher‖π_student)`` (exact);
    * continuous policies: ``loss_distill`` = KL (closed form when torch has one, otherwise a
      Monte-Carlo estimate with reparameterised student log-probs) and
      ``loss_distill_mse`` = MSE between the deterministic actions, weighted by ``mse_weight``.

    Args:
        teacher: the learner's probabilistic policy.
        student: the smaller probabilistic policy to train (same input/output keys).

    Keyword Args:
        mse_weight: weight of the action MSE for continuous policies. Defaults to ``1.0``.
        num_samples: Monte-Carlo samples when KL has no closed form. Defaults to ``4``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor
        >>> def actor(width):
        ...     return ProbabilisticActor(
        ...         TensorDictModule(MLP(in_features=4, out_features=3, num_cells=[width]),
        ...                          in_keys=["observation"], out_keys=["logits"]),
        ...         in_keys=["logits"], distribution_class=torch.distributions.Categorical)
        >>> loss = DistillationLoss(actor(64), actor(8))
        >>> out = loss(TensorDict(observation=torch.randn(16, 4), batch_size=[16]))
        >>> out["loss_distill"].requires_grad
        True
    """

    def __init__(
        self,
        teacher: Any,
        student: Any,
        *,
        mse_weight: float = 1.0,
        num_samples: int = 4,
    ) -> None:
        super().__init__()
        for name, module in (("teacher", teacher), ("student", student)):
            if not hasattr(module, "get_dist"):
                raise TypeError(f"DistillationLoss: the {name} must be a probabilistic actor")
        if set(teacher.in_keys) != set(student.in_keys):
            raise ValueError(
                f"teacher and student read different keys: {teacher.in_keys} vs {student.in_keys}"
            )
        self.__dict__["teacher"] = teacher  # not a submodule: its parameters are not trained
        self.student = student
        self.mse_weight = mse_weight
        self.num_samples = num_samples

    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Computes the distillation losses on a batch of states.

        Args:
            tensordict: states with the policies' input keys.

        Returns:
            A tensordict with ``loss_distill`` (and ``loss_distill_mse`` for continuous actions).
        """
        return self.losses(tensordict)

    def losses(self, tensordict: TensorDictBase) -> TensorDictBase:
        """The losses of :meth:`forward`, computed outside TorchRL's loss-call context.

        Every TorchRL loss's ``forward`` sets the process-wide exploration type while it
        runs, which is not thread-safe: called from a background thread, it can leave another
        thread's policy acting (or a later call running) in the wrong mode. The distillation
        losses read distributions only, through
        :func:`~torchrl_seer.modules.distributions.policy_distribution`, which sets no global
        mode; a background thread calls this method instead of :meth:`forward`.

        Args:
            tensordict: states with the policies' input keys.

        Returns:
            The same tensordict as :meth:`forward`.
        """
        with torch.no_grad():
            teacher_dist = policy_distribution(self.teacher, tensordict)
        student_dist = policy_distribution(self.student, tensordict)
        try:
            kl = D.kl_divergence(teacher_dist, student_dist)
        except NotImplementedError:
            samples = teacher_dist.sample((self.num_samples,))
            kl = (teacher_dist.log_prob(samples) - student_dist.log_prob(samples)).mean(0)
        out = TensorDict(loss_distill=kl.mean())
        if not isinstance(teacher_dist, DISCRETE_DISTRIBUTIONS):
            target = deterministic_action(teacher_dist).detach()
            mse = (deterministic_action(student_dist) - target).pow(2).mean()
            out["loss_distill_mse"] = self.mse_weight * mse
        return out
