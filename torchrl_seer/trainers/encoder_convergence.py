"""A measured convergence criterion for the lower encoder layers (SEER ``freeze_at="auto"``)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["ParameterConvergence"]


class ParameterConvergence:
    """Declares a set of parameters converged when their relative change stays small.

    Every ``check_interval`` steps the flattened parameters ``θ_t`` are compared with the
    previous check: ``r = ||θ_t - θ_{t-Δ}|| / ||θ_{t-Δ}||``. The layers count as converged once
    ``r < threshold`` for ``patience`` consecutive checks and ``step >= min_step``. This is our
    extension: SEER publishes no rule for choosing T_f.

    Args:
        parameters (iterable of nn.Parameter): the layers to watch (the encoder's frozen part).

    Keyword Args:
        check_interval (int): steps between checks (Δ). Defaults to ``1000``.
        threshold (float): bound on ``r``. Defaults to ``0.01``.
        patience (int): consecutive checks below the bound. Defaults to ``3``.
        min_step (int): earliest step at which convergence can be declared. Defaults to ``0``.

    Examples:
        >>> from torch import nn
        >>> layer = nn.Linear(4, 4)
        >>> criterion = ParameterConvergence(layer.parameters(), check_interval=10, patience=2)
        >>> [criterion.update(step) for step in (0, 10, 20)]
        [False, False, True]
        >>> criterion.history[-1][1]
        0.0
    """

    def __init__(
        self,
        parameters: Iterable[nn.Parameter],
        *,
        check_interval: int = 1000,
        threshold: float = 0.01,
        patience: int = 3,
        min_step: int = 0,
    ) -> None:
        if check_interval < 1 or patience < 1 or threshold <= 0:
            raise ValueError(
                "check_interval and patience must be >= 1 and threshold > 0, got "
                f"{check_interval}, {patience}, {threshold}."
            )
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("ParameterConvergence needs at least one parameter to watch.")
        self.check_interval = check_interval
        self.threshold = threshold
        self.patience = patience
        self.min_step = min_step
        self.history: list[tuple[int, float]] = []
        self._previous: torch.Tensor | None = None
        self._last_check: int | None = None
        self._below = 0

    def _snapshot(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).float() for p in self.parameters]).cpu()

    def update(self, step: int) -> bool:
        """Checks convergence if ``check_interval`` steps passed since the last check.

        Args:
            step (int): the current step.

        Returns:
            ``True`` once the parameters count as converged.
        """
        if self._last_check is not None and step - self._last_check < self.check_interval:
            return False
        current = self._snapshot()
        self._last_check = step
        if self._previous is not None:
            change = float(
                (current - self._previous).norm() / self._previous.norm().clamp_min(1e-12)
            )
            self.history.append((step, change))
            self._below = self._below + 1 if change < self.threshold else 0
        self._previous = current
        return self._below >= self.patience and step >= self.min_step

    def state_dict(self) -> dict:
        """History and counters (the snapshot is re-taken after a restore)."""
        return {"history": list(self.history), "below": self._below, "last_check": self._last_check}

    def load_state_dict(self, state: dict) -> None:
        """Restores what :meth:`state_dict` returned."""
        self.history = [(int(step), float(change)) for step, change in state["history"]]
        self._below = state["below"]
        self._last_check = state["last_check"]
        self._previous = None
