"""Common base of the loss scalers: the scale, the step counters and their checkpoint."""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch.optim import Optimizer

from torchrl_seer.optim.finite_step import finite_step

__all__ = ["LossScaler"]


class LossScaler:
    """Base class of the dynamic loss scalers: one scaler drives one optimizer.

    Usage per update: ``scaler.scale(loss).backward()``, then ``scaler.step()`` (which steps
    the optimizer or skips the step), then ``optimizer.zero_grad()``. Subclasses implement
    the overflow check and the back-off and growth rules.

    A step is skipped, and counted, when a gradient is not finite (the scale backs off) or
    when the update itself would leave a non-finite parameter or optimizer state (the step
    is undone by :func:`~torchrl_seer.optim.finite_step`; the scale is kept, since the
    update does not depend on it). The scale never goes below ``min_scale``: after a long
    run of non-finite gradients it stops at the floor (a ``RuntimeWarning`` says so once per
    arrival) and the steps stay skipped until the gradients are finite again, when training
    resumes and the scale grows back after ``growth_interval`` finite steps.

    Args:
        optimizer (torch.optim.Optimizer): the optimizer this scaler drives.

    Keyword Args:
        init_scale (float): initial loss scale :math:`S`.
        growth_interval (int): consecutive finite steps before the scale may double.
        min_scale (float, optional): floor of the loss scale. Defaults to ``1.0``.

    Attributes:
        skipped_steps (int): steps skipped so far, for any reason.
        nonfinite_updates (int): of those, steps undone because the update was not finite.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import CompoundLossScaler, HAdam, LossScaler
        >>> weight = torch.nn.Parameter(torch.ones(1))
        >>> isinstance(CompoundLossScaler(HAdam([weight])), LossScaler)
        True
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        init_scale: float,
        growth_interval: int,
        min_scale: float = 1.0,
    ) -> None:
        if not init_scale > 0 or not math.isfinite(init_scale):
            raise ValueError(f"init_scale must be a positive finite float, got {init_scale}.")
        if not 0 < min_scale <= init_scale:
            raise ValueError(
                f"min_scale must be positive and at most init_scale={init_scale}, got {min_scale}."
            )
        if growth_interval < 1:
            raise ValueError(f"growth_interval must be a positive int, got {growth_interval}.")
        self.optimizer = optimizer
        self.loss_scale = float(init_scale)
        self.min_scale = float(min_scale)
        self.growth_interval = growth_interval
        self.finite_steps = 0
        self.skipped_steps = 0
        self.nonfinite_updates = 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        """Multiply ``loss`` by the current loss scale :math:`S`.

        Args:
            loss (torch.Tensor): the loss to differentiate.

        Returns:
            ``S * loss``, in the dtype of ``loss``.
        """
        return loss * self.loss_scale

    def gradients(self) -> list[torch.Tensor]:
        """Return the gradients of the optimizer's parameters (those that have one).

        Returns:
            The ``.grad`` tensors, in parameter-group order.
        """
        return [
            param.grad
            for group in self.optimizer.param_groups
            for param in group["params"]
            if param.grad is not None
        ]

    def step(self) -> bool:
        """Step the optimizer, or skip the step on a non-finite gradient or update.

        A non-finite gradient calls :meth:`_back_off` (down to ``min_scale``); an update that
        would leave a non-finite parameter is undone. ``growth_interval`` consecutive finite
        steps call :meth:`_grow`.

        Returns:
            ``True`` if the optimizer stepped, ``False`` if the step was skipped.
        """
        if not self._gradients_finite():
            at_floor = self.loss_scale <= self.min_scale
            self._back_off(max(0.5, self.min_scale / self.loss_scale))
            if not at_floor and self.loss_scale <= self.min_scale:
                warnings.warn(
                    f"{type(self).__name__}: the loss scale reached its floor min_scale="
                    f"{self.min_scale:g}; steps stay skipped until the gradients are finite.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self.finite_steps = 0
            self.skipped_steps += 1
            return False
        self._prepare_step()
        if not finite_step(self.optimizer):
            self.finite_steps = 0
            self.skipped_steps += 1
            self.nonfinite_updates += 1
            return False
        self.finite_steps += 1
        if self.finite_steps >= self.growth_interval:
            self.finite_steps = 0
            self._grow()
        return True

    def _gradients_finite(self) -> bool:
        raise NotImplementedError

    def _back_off(self, factor: float) -> None:
        """Multiply the scale by ``factor`` (``0.5``, or less than that down to the floor)."""
        raise NotImplementedError

    def _prepare_step(self) -> None:
        """Act on the gradients right before a finite step (no-op by default)."""

    def _grow(self) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Return the scaler state (the optimizer checkpoints its own).

        Returns:
            A dict with the loss scale and the step counters.
        """
        return {
            "loss_scale": self.loss_scale,
            "finite_steps": self.finite_steps,
            "skipped_steps": self.skipped_steps,
            "nonfinite_updates": self.nonfinite_updates,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`.

        Args:
            state_dict (dict): the saved scaler state.
        """
        self.loss_scale = float(state_dict["loss_scale"])
        self.finite_steps = int(state_dict["finite_steps"])
        self.skipped_steps = int(state_dict["skipped_steps"])
        self.nonfinite_updates = int(state_dict.get("nonfinite_updates", 0))
