"""A TorchRL optimization stepper with one optimizer and one loss scaler per loss term."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDictBase
from torch.optim import Optimizer
from torchrl.trainers import OptimizationStepper, Trainer

from torchrl_seer.optim.finite_step import all_finite, finite_step
from torchrl_seer.optim.loss_scaler import LossScaler

__all__ = ["NONFINITE_INPUTS_KEY", "LossScalingStepper"]

#: Loss-output entry counting the batch values that were not finite, or that did not fit the
#: low-precision dtype (written by :class:`~torchrl_seer.objectives.LowPrecisionSACLoss`).
#: A positive count makes :class:`LossScalingStepper` skip the whole update.
NONFINITE_INPUTS_KEY = "num_nonfinite_inputs"


class LossScalingStepper(OptimizationStepper):
    r"""Optimize each ``loss_*`` term with its own optimizer and (optional) loss scaler.

    SAC has three losses that touch disjoint parameters (critic, actor, temperature), and the
    low-precision recipe gives each its own optimizer and its own loss scale. One update
    differentiates :math:`\sum_k S_k L_k` once, then lets every scaler step (or skip) its
    optimizer independently, so an overflow in the critic does not cost the actor its step.

    No step ever writes a non-finite value into a parameter, with or without a scaler:

    * an update whose losses hold a positive :data:`NONFINITE_INPUTS_KEY` (a batch value that
      is NaN, infinite, or beyond the networks' dtype) is skipped whole, without a backward
      pass; it is counted in :attr:`skipped_updates`;
    * a loss term that is not finite is left out of the backward pass and its step is
      skipped (bad data, not a scale problem: its scaler keeps its scale);
    * a non-finite gradient skips the step (a scaler also backs off);
    * an update that would leave a non-finite parameter or optimizer state is undone
      (:func:`~torchrl_seer.optim.finite_step`).

    Every skipped step is counted in :attr:`skipped_steps` (per loss key, cumulative) and in
    the ``skipped_steps`` entry of :meth:`optimize`'s output (per update).

    It is a TorchRL :class:`~torchrl.trainers.OptimizationStepper`: pass it to
    :class:`~torchrl.trainers.Trainer` as ``optimization_stepper=`` (it owns the optimizers,
    so the trainer's ``optimizer`` can be ``None``) and it is checkpointed with the trainer.
    Outside a trainer, call :meth:`optimize` on the loss module's output.

    Args:
        optimizers (mapping): maps each loss key (e.g. ``"loss_qvalue"``) to an optimizer,
            or to an ``(optimizer, scaler)`` pair where ``scaler`` is a
            :class:`~torchrl_seer.optim.LossScaler` driving that optimizer (or ``None``).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_seer.optim import CompoundLossScaler, HAdam, LossScalingStepper
        >>> weight = torch.nn.Parameter(torch.ones(2, dtype=torch.float16))
        >>> optimizer = HAdam([weight], lr=1e-3, eps=1e-4)
        >>> stepper = LossScalingStepper(
        ...     {"loss_weight": (optimizer, CompoundLossScaler(optimizer, init_scale=1e4))}
        ... )
        >>> losses = TensorDict({"loss_weight": (weight**2).sum()}, [])
        >>> out = stepper.optimize(losses)
        >>> float(out["scale_loss_weight"]), int(out["skipped_steps"])
        (10000.0, 0)
    """

    def __init__(
        self,
        optimizers: Mapping[str, Optimizer | tuple[Optimizer, LossScaler | None]],
    ) -> None:
        if not optimizers:
            raise ValueError("optimizers must map at least one loss key to an optimizer.")
        self.optimizers: dict[str, Optimizer] = {}
        self.scalers: dict[str, LossScaler | None] = {}
        for key, entry in optimizers.items():
            optimizer, scaler = entry if isinstance(entry, tuple) else (entry, None)
            if not isinstance(optimizer, Optimizer):
                raise TypeError(
                    f"optimizers[{key!r}] must be a torch.optim.Optimizer or an "
                    f"(optimizer, scaler) pair, got {type(optimizer).__name__}."
                )
            if scaler is not None and scaler.optimizer is not optimizer:
                raise ValueError(f"The scaler given for {key!r} drives a different optimizer.")
            self.optimizers[key] = optimizer
            self.scalers[key] = scaler
        self.skipped_steps = dict.fromkeys(self.optimizers, 0)
        self.skipped_updates = 0

    def optimize(self, losses: TensorDictBase) -> TensorDictBase:
        """Backpropagate the scaled losses once and step (or skip) every optimizer.

        Args:
            losses (TensorDictBase): the loss module's output; it must hold every key this
                stepper optimizes.

        Returns:
            The detached losses plus ``scale_<key>`` (the loss scale used) for each scaled
            loss and ``skipped_steps`` (how many optimizers skipped this update).
        """
        missing = [key for key in self.optimizers if key not in losses.keys()]
        if missing:
            raise KeyError(f"The losses lack {missing}; got keys {list(losses.keys())}.")
        out = losses.detach()
        for key, scaler in self.scalers.items():
            if scaler is not None:
                out.set(f"scale_{key}", torch.tensor(scaler.loss_scale))
        bad_inputs = losses.get(NONFINITE_INPUTS_KEY, None)
        if bad_inputs is not None and int(bad_inputs) > 0:
            self.skipped_updates += 1
            for key, optimizer in self.optimizers.items():
                self.skipped_steps[key] += 1
                optimizer.zero_grad(set_to_none=True)
            out.set("skipped_steps", torch.tensor(len(self.optimizers)))
            return out
        finite = {key: bool(torch.isfinite(losses.get(key)).all()) for key in self.optimizers}
        total: torch.Tensor | int = 0
        for key, scaler in self.scalers.items():
            if finite[key]:
                loss = losses.get(key)
                total = total + (scaler.scale(loss) if scaler is not None else loss)
        if isinstance(total, torch.Tensor) and total.requires_grad:
            total.backward()
        skipped = 0
        for key, optimizer in self.optimizers.items():
            scaler = self.scalers[key]
            if not finite[key]:
                stepped = False
            elif scaler is not None:
                stepped = scaler.step()
            else:
                stepped = _gradients_finite(optimizer) and finite_step(optimizer)
            if not stepped:
                skipped += 1
                self.skipped_steps[key] += 1
            optimizer.zero_grad(set_to_none=True)
        out.set("skipped_steps", torch.tensor(skipped))
        return out

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        """Compute the losses through ``trainer`` and apply :meth:`optimize`.

        Args:
            trainer (Trainer): the trainer running the optimization loop.
            sub_batch (TensorDictBase): the batch of this optimization step.

        Returns:
            The detached metrics returned by :meth:`optimize`.
        """
        losses = trainer.compute_loss(sub_batch)
        if not isinstance(losses, TensorDictBase):
            raise TypeError("LossScalingStepper needs a loss module that returns a TensorDict.")
        return self.optimize(losses)

    def state_dict(self) -> dict[str, Any]:
        """Return the state of every optimizer and scaler.

        Returns:
            ``{"optimizers": {key: state}, "scalers": {key: state}, "skipped_steps":
            {key: count}, "skipped_updates": count}``.
        """
        return {
            "optimizers": {key: opt.state_dict() for key, opt in self.optimizers.items()},
            "scalers": {
                key: scaler.state_dict()
                for key, scaler in self.scalers.items()
                if scaler is not None
            },
            "skipped_steps": dict(self.skipped_steps),
            "skipped_updates": self.skipped_updates,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`.

        Args:
            state_dict (dict): the saved stepper state.
        """
        for key, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict["optimizers"][key])
        for key, scaler in self.scalers.items():
            if scaler is not None:
                scaler.load_state_dict(state_dict["scalers"][key])
        self.skipped_steps.update(state_dict.get("skipped_steps", {}))
        self.skipped_updates = int(state_dict.get("skipped_updates", 0))


def _gradients_finite(optimizer: Optimizer) -> bool:
    return all_finite(
        p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None
    )
