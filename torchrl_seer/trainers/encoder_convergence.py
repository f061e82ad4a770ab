"""A measured convergence criterion for the lower encoder layers (SEER ``freeze_at="auto"``)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["CONVERGENCE_STATISTICS", "ParameterConvergence"]

#: The statistics :class:`ParameterConvergence` can watch, with their default bounds.
CONVERGENCE_STATISTICS: dict[str, float] = {"relative_change": 0.01, "drift_ratio": 0.5}


class ParameterConvergence:
    """Declares a set of parameters converged when a statistic of their trajectory stays small.

    Every ``check_interval`` steps the flattened parameters ``θ_t`` are snapshotted and one of
    two statistics is computed:

    * ``"relative_change"``: ``r = ||θ_t - θ_{t-Δ}|| / ||θ_{t-Δ}||``, the change over the last
      interval relative to the parameters' norm. Its floor depends on the optimizer: with Adam
      at a constant learning rate each update moves every parameter by about the learning rate
      whether or not the loss still improves, so ``r`` settles at a noise floor set by the
      learning rate, the interval and the parameter scale (on the Atari DQN recipe it fell
      only from 0.11 to 0.025 over 100k steps), so a bound must be calibrated for a setting.
      ``r`` is also small right after learning starts and in a lull before the first rewards
      (0.002 for 3,000 steps on one Atari seed), which no bound tells from convergence: set
      ``min_step`` past them (the Atari recipe uses 20,000 of 100,000 steps).
    * ``"drift_ratio"``: ``d = ||θ_t - θ_{t-kΔ}|| / Σ_i ||θ_{t-iΔ} - θ_{t-(i+1)Δ}||`` over the
      last ``window`` = ``k`` intervals: the net displacement divided by the path length. It
      is scale-free: about 1 while the parameters travel in a consistent direction (learning)
      and about ``1/√k`` once they only jitter around a point (high-dimensional random walk),
      whatever the learning rate or optimizer. It is defined once ``k`` intervals are seen.

    The layers count as converged once the statistic is below ``threshold`` for ``patience``
    consecutive checks at or after ``min_step`` (earlier checks are recorded but not counted:
    before learning starts the parameters do not move, which is not convergence);
    :attr:`fired_at` keeps the first step at which that held (also when a caller only watches
    the criterion). This is our extension: SEER
    publishes no rule for choosing T_f. With ``keep_trajectory=True`` every snapshot is kept in
    :attr:`trajectory` (CPU, fp32) so that other statistics and bounds can be evaluated on a
    finished run.

    Args:
        parameters (iterable of nn.Parameter): the layers to watch (the encoder's frozen part).

    Keyword Args:
        check_interval (int): steps between checks (Δ). Defaults to ``1000``.
        statistic (str): ``"relative_change"`` or ``"drift_ratio"``. Defaults to
            ``"relative_change"``.
        threshold (float, optional): bound on the statistic. Defaults to 0.01 for
            ``"relative_change"`` and 0.5 for ``"drift_ratio"``.
        window (int): intervals ``k`` spanned by ``"drift_ratio"``. Defaults to ``10``.
        patience (int): consecutive checks below the bound. Defaults to ``3``.
        min_step (int): first step whose check counts toward ``patience`` (e.g. the step at
            which learning starts). Defaults to ``0``.
        keep_trajectory (bool): keep every snapshot in :attr:`trajectory`. Defaults to
            ``False``.

    Examples:
        >>> from torch import nn
        >>> layer = nn.Linear(4, 4)
        >>> criterion = ParameterConvergence(layer.parameters(), check_interval=10, patience=2)
        >>> [criterion.update(step) for step in (0, 10, 20)]
        [False, False, True]
        >>> criterion.history[-1][1], criterion.fired_at
        (0.0, 20)
        >>> drift = ParameterConvergence(
        ...     layer.parameters(), check_interval=1, statistic="drift_ratio", window=4, patience=1
        ... )
        >>> for step in range(5):  # a steady walk in one direction: d stays 1
        ...     with torch.no_grad():
        ...         _ = layer.weight.add_(0.1)
        ...     converged = drift.update(step)
        >>> converged, round(drift.history[-1][1], 3)
        (False, 1.0)
    """

    def __init__(
        self,
        parameters: Iterable[nn.Parameter],
        *,
        check_interval: int = 1000,
        statistic: str = "relative_change",
        threshold: float | None = None,
        window: int = 10,
        patience: int = 3,
        min_step: int = 0,
        keep_trajectory: bool = False,
    ) -> None:
        if statistic not in CONVERGENCE_STATISTICS:
            raise ValueError(
                f"statistic must be one of {list(CONVERGENCE_STATISTICS)}, got {statistic!r}."
            )
        threshold = CONVERGENCE_STATISTICS[statistic] if threshold is None else threshold
        if check_interval < 1 or patience < 1 or window < 1 or threshold <= 0:
            raise ValueError(
                "check_interval, patience and window must be >= 1 and threshold > 0, got "
                f"{check_interval}, {patience}, {window}, {threshold}."
            )
        self.parameters = list(parameters)
        if not self.parameters:
            raise ValueError("ParameterConvergence needs at least one parameter to watch.")
        self.check_interval = check_interval
        self.statistic = statistic
        self.threshold = threshold
        self.window = window
        self.patience = patience
        self.min_step = min_step
        self.keep_trajectory = keep_trajectory
        self.history: list[tuple[int, float]] = []
        self.trajectory: list[tuple[int, torch.Tensor]] = []
        self.fired_at: int | None = None
        span = window + 1 if statistic == "drift_ratio" else 2
        self._recent: deque[torch.Tensor] = deque(maxlen=span)
        self._last_check: int | None = None
        self._below = 0

    def _snapshot(self) -> torch.Tensor:
        return torch.cat([p.detach().reshape(-1).float() for p in self.parameters]).cpu()

    def _value(self) -> float | None:
        recent = list(self._recent)
        if self.statistic == "relative_change":
            if len(recent) < 2:
                return None
            return float((recent[-1] - recent[-2]).norm() / recent[-2].norm().clamp_min(1e-12))
        if len(recent) < self.window + 1:
            return None
        path = sum(float((b - a).norm()) for a, b in itertools.pairwise(recent))
        return float((recent[-1] - recent[0]).norm()) / path if path > 0 else 0.0

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
        self._recent.append(current)
        if self.keep_trajectory:
            self.trajectory.append((step, current))
        value = self._value()
        if value is not None:
            self.history.append((step, value))
            if step >= self.min_step:  # e.g. before learning starts nothing moves: not counted
                self._below = self._below + 1 if value < self.threshold else 0
        converged = self._below >= self.patience and step >= self.min_step
        if converged and self.fired_at is None:
            self.fired_at = step
        return converged

    def state_dict(self) -> dict[str, Any]:
        """History, counters, the snapshots the statistic still needs and the trajectory."""
        return {
            "history": list(self.history),
            "below": self._below,
            "last_check": self._last_check,
            "fired_at": self.fired_at,
            "recent": [t.clone() for t in self._recent],
            "trajectory": [(step, t.clone()) for step, t in self.trajectory],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned.

        States saved without snapshots (``recent``) restart the statistic's window: the next
        check takes a fresh snapshot.
        """
        self.history = [(int(step), float(change)) for step, change in state["history"]]
        self._below = state["below"]
        self._last_check = state["last_check"]
        self.fired_at = state.get("fired_at")
        self._recent.clear()
        self._recent.extend(t.clone() for t in state.get("recent", []))
        self.trajectory = [(int(step), t.clone()) for step, t in state.get("trajectory", [])]
