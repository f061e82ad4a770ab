"""Common base of the loss scalers: the scale, the step counters and their checkpoint."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer

__all__ = ["LossScaler", "all_finite"]


def all_finite(tensors: Iterable[torch.Tensor], *, factor: float = 1.0) -> bool:
    """Tell whether every element of ``factor * t`` is finite, for every tensor ``t``.

    The product is formed in each tensor's own dtype, so a ``factor`` above one checks
    that there is headroom before the format overflows.

    Args:
        tensors (iterable of torch.Tensor): the tensors to check.

    Keyword Args:
        factor (float, optional): multiplier applied before the check. Defaults to ``1.0``.

    Returns:
        ``True`` when no element overflows or is NaN (also for an empty iterable).

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import all_finite
        >>> all_finite([torch.tensor([60000.0], dtype=torch.float16)])
        True
        >>> all_finite([torch.tensor([60000.0], dtype=torch.float16)], factor=1.1)
        False
    """
    flags = [torch.isfinite(t.mul(factor)).all() for t in tensors]
    if not flags:
        return True
    return bool(torch.stack(flags).all())


class LossScaler:
    """Base class of the dynamic loss scalers: one scaler drives one optimizer.

    Usage per update: ``scaler.scale(loss).backward()``, then ``scaler.step()`` (which steps
    the optimizer or skips the step), then ``optimizer.zero_grad()``. Subclasses implement
    the overflow check and the back-off and growth rules.

    Args:
        optimizer (torch.optim.Optimizer): the optimizer this scaler drives.

    Keyword Args:
        init_scale (float): initial loss scale :math:`S`.
        growth_interval (int): consecutive finite steps before the scale may double.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import CompoundLossScaler, HAdam, LossScaler
        >>> weight = torch.nn.Parameter(torch.ones(1))
        >>> isinstance(CompoundLossScaler(HAdam([weight])), LossScaler)
        True
    """

    def __init__(self, optimizer: Optimizer, *, init_scale: float, growth_interval: int) -> None:
        if not init_scale > 0 or not math.isfinite(init_scale):
            raise ValueError(f"init_scale must be a positive finite float, got {init_scale}.")
        if growth_interval < 1:
            raise ValueError(f"growth_interval must be a positive int, got {growth_interval}.")
        self.optimizer = optimizer
        self.loss_scale = float(init_scale)
        self.growth_interval = growth_interval
        self.finite_steps = 0
        self.skipped_steps = 0

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
        """Step the optimizer, or skip the step on a non-finite gradient.

        A skipped step calls :meth:`_back_off`; ``growth_interval`` consecutive finite steps
        call :meth:`_grow`.

        Returns:
            ``True`` if the optimizer stepped, ``False`` if the step was skipped.
        """
        if not self._gradients_finite():
            self._back_off()
            self.finite_steps = 0
            self.skipped_steps += 1
            return False
        self._prepare_step()
        self.optimizer.step()
        self.finite_steps += 1
        if self.finite_steps >= self.growth_interval:
            self.finite_steps = 0
            self._grow()
        return True

    def _gradients_finite(self) -> bool:
        raise NotImplementedError

    def _back_off(self) -> None:
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
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`.

        Args:
            state_dict (dict): the saved scaler state.
        """
        self.loss_scale = float(state_dict["loss_scale"])
        self.finite_steps = int(state_dict["finite_steps"])
        self.skipped_steps = int(state_dict["skipped_steps"])
