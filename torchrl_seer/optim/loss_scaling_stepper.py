"""A TorchRL optimization stepper with one optimizer and one loss scaler per loss term."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDictBase
from torch.optim import Optimizer
from torchrl.trainers import OptimizationStepper, Trainer

from torchrl_seer.optim.loss_scaler import LossScaler

__all__ = ["LossScalingStepper"]


class LossScalingStepper(OptimizationStepper):
    r"""Optimize each ``loss_*`` term with its own optimizer and (optional) loss scaler.

    SAC has three losses that touch disjoint parameters (critic, actor, temperature), and the
    low-precision recipe gives each its own optimizer and its own loss scale. One update
    differentiates :math:`\sum_k S_k L_k` once, then lets every scaler step (or skip) its
    optimizer independently, so an overflow in the critic does not cost the actor its step.

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
        total: torch.Tensor | int = 0
        for key, scaler in self.scalers.items():
            loss = losses.get(key)
            total = total + (scaler.scale(loss) if scaler is not None else loss)
        if isinstance(total, torch.Tensor):
            total.backward()
        out = losses.detach()
        skipped = 0
        for key, optimizer in self.optimizers.items():
            scaler = self.scalers[key]
            if scaler is None:
                optimizer.step()
            else:
                out.set(f"scale_{key}", torch.tensor(scaler.loss_scale))
                skipped += not scaler.step()
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
            ``{"optimizers": {key: state}, "scalers": {key: state}}``.
        """
        return {
            "optimizers": {key: opt.state_dict() for key, opt in self.optimizers.items()},
            "scalers": {
                key: scaler.state_dict()
                for key, scaler in self.scalers.items()
                if scaler is not None
            },
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
