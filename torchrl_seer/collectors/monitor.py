"""CompressionMonitor: measures compressed-actor health and steps compression down or up.

The AcceRL paper names a Monitor but does not publish what it measures or triggers. The rules
below are **our design, not specified by the AcceRL paper**:

* **Measures** (every :meth:`CompressionMonitor.check`, on a probe of the latest batch's
  states): KL(π‖μ) and action agreement between the learner's policy π and the compressed
  policy μ at the current level; importance-ratio statistics rho = π(a|x)/μ(a|x) on the batch's
  recorded behaviour log-probs (mean, 95th percentile, fraction above the truncation level 1);
  policy lag (learner version - version stamped on the transitions); and, from
  :meth:`record_actor`/:meth:`record_learner`, actor steps/s and learner updates/s.
* **Steps down** (less compression, e.g. int8 → bf16 → fp32) when KL exceeds ``kl_bound`` for
  ``patience`` consecutive checks.
* **Steps back up** (more compression) when the *more compressed* level, evaluated on the same
  probes, stays below ``recover_fraction * kl_bound`` for ``recover_patience`` consecutive
  checks. The gap between ``kl_bound`` and ``recover_fraction * kl_bound``, plus the two
  patience counters, is the hysteresis that stops the level from oscillating.
* Every change is logged (``monitor/level``) and kept in :attr:`CompressionMonitor.events`;
  the caller ships the new pipeline (``scheme.compressor = monitor.compressor``).
* ``enabled=False`` keeps measuring and logging but never changes the level.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from tensordict import NestedKey, TensorDictBase
from torch import nn

from torchrl_seer.collectors.divergence import policy_divergence
from torchrl_seer.collectors.policy_compressor import PolicyCompressor

__all__ = ["CompressionMonitor", "fallback_ladder"]


def fallback_ladder(compressor: PolicyCompressor) -> list[PolicyCompressor]:
    """Returns ``compressor`` followed by the more precise levels ``bf16`` and ``fp32``.

    Args:
        compressor: the starting (most compressed) pipeline.

    Returns:
        The ladder for :class:`CompressionMonitor`, without duplicate levels.

    Examples:
        >>> [c.spec() for c in fallback_ladder(PolicyCompressor.from_spec("int8"))]
        ['int8', 'bf16', 'fp32']
        >>> [c.spec() for c in fallback_ladder(PolicyCompressor())]
        ['fp32']
    """
    ladder = [compressor]
    for spec in ("bf16", "fp32"):
        if spec not in [level.spec() for level in ladder] and compressor.spec() != "fp32":
            ladder.append(PolicyCompressor.from_spec(spec))
    return ladder


class CompressionMonitor:
    """Watches the divergence of compressed actors and moves along a compression ladder.

    Args:
        policy: the learner's full-precision probabilistic policy π.

    Keyword Args:
        ladder: compression levels from most compressed to uncompressed, as pipeline strings or
            :class:`PolicyCompressor` objects. Defaults to ``("int8", "bf16", "fp32")``.
        start_level: index in ``ladder`` to start at (also the most compressed level the monitor
            may return to). Defaults to ``0``.
        kl_bound: KL(π‖μ) above which a check counts as diverged. Defaults to ``0.02`` nats.
        patience: consecutive diverged checks before stepping down. Defaults to ``3``.
        recover_fraction: the more compressed level must stay below
            ``recover_fraction * kl_bound`` to step back up. Defaults to ``0.5``.
        recover_patience: consecutive safe checks before stepping up. Defaults to ``5``.
        probe_size: number of recent states used per check. Defaults to ``256``.
        behaviour_log_prob_key: recorded log μ(a|x). Defaults to ``"action_log_prob"``.
        action_key: the action entry. Defaults to ``"action"``.
        version_key: the policy version stamped by the actor. Defaults to ``"policy_version"``.
        logger: a TorchRL logger (``log_scalar(name, value, step)``), or ``None``.
        enabled: when ``False`` the monitor only measures.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(MLP(in_features=4, out_features=3, num_cells=[64]),
        ...                      in_keys=["observation"], out_keys=["logits"]),
        ...     in_keys=["logits"], distribution_class=torch.distributions.Categorical)
        >>> monitor = CompressionMonitor(actor, kl_bound=0.05, patience=2)
        >>> batch = TensorDict(observation=torch.randn(32, 4), batch_size=[32])
        >>> stats = monitor.check(batch, step=0)
        >>> monitor.compressor.spec(), stats["monitor/kl"] < 0.05
        ('int8', True)
    """

    def __init__(
        self,
        policy: nn.Module,
        *,
        ladder: Sequence[str | PolicyCompressor] = ("int8", "bf16", "fp32"),
        start_level: int = 0,
        kl_bound: float = 0.02,
        patience: int = 3,
        recover_fraction: float = 0.5,
        recover_patience: int = 5,
        probe_size: int = 256,
        behaviour_log_prob_key: NestedKey = "action_log_prob",
        action_key: NestedKey = "action",
        version_key: NestedKey = "policy_version",
        logger: Any = None,
        enabled: bool = True,
    ) -> None:
        if not ladder:
            raise ValueError("the compression ladder needs at least one level")
        if not 0.0 < recover_fraction <= 1.0:
            raise ValueError(f"recover_fraction must be in (0, 1], got {recover_fraction}")
        if patience < 1 or recover_patience < 1:
            raise ValueError("patience and recover_patience must be >= 1")
        self.policy = policy
        self.ladder = [
            PolicyCompressor.from_spec(level) if isinstance(level, str) else level
            for level in ladder
        ]
        if not 0 <= start_level < len(self.ladder):
            raise ValueError(f"start_level {start_level} outside the ladder of {len(ladder)}")
        self.start_level = start_level
        self.level = start_level
        self.kl_bound = kl_bound
        self.patience = patience
        self.recover_fraction = recover_fraction
        self.recover_patience = recover_patience
        self.probe_size = probe_size
        self.behaviour_log_prob_key = behaviour_log_prob_key
        self.action_key = action_key
        self.version_key = version_key
        self.logger = logger
        self.enabled = enabled
        self.learner_version = 0
        self.events: list[dict[str, Any]] = []
        self.history: list[dict[str, float]] = []
        self._over = 0
        self._under = 0
        self._rates: dict[str, float] = {}

    @property
    def compressor(self) -> PolicyCompressor:
        """The pipeline of the current level (ship it with the next weight update)."""
        return self.ladder[self.level]

    def record_actor(self, frames: int, seconds: float) -> None:
        """Records collection throughput (logged at the next check).

        Args:
            frames: environment steps collected.
            seconds: wall time they took.
        """
        self._rates["monitor/actor_steps_per_s"] = frames / max(seconds, 1e-9)

    def record_learner(self, updates: int, seconds: float, *, version: int | None = None) -> None:
        """Records learner throughput and, optionally, the learner's current policy version.

        Args:
            updates: optimisation steps done.
            seconds: wall time they took.

        Keyword Args:
            version: the version the next shipped policy will carry.
        """
        self._rates["monitor/learner_updates_per_s"] = updates / max(seconds, 1e-9)
        if version is not None:
            self.learner_version = version

    def _divergence(self, level: int, probe: TensorDictBase) -> dict[str, float]:
        compressed, _ = self.ladder[level].compress(self.policy)
        return policy_divergence(self.policy, compressed, probe)

    @torch.no_grad()
    def _ratio_stats(self, batch: TensorDictBase) -> dict[str, float]:
        log_mu = batch.get(self.behaviour_log_prob_key, None)
        action = batch.get(self.action_key, None)
        get_dist = getattr(self.policy, "get_dist", None)
        if log_mu is None or action is None or get_dist is None:
            return {}
        log_pi = get_dist(batch.clone(False)).log_prob(action)
        rho = (log_pi.reshape(-1) - log_mu.reshape(-1)).exp()
        return {
            "monitor/rho_mean": float(rho.mean()),
            "monitor/rho_p95": float(rho.quantile(0.95)),
            "monitor/rho_truncated_fraction": float((rho > 1.0).float().mean()),
        }

    def check(self, batch: TensorDictBase, *, step: int) -> dict[str, float]:
        """Measures the latest batch, updates the level and logs everything.

        Args:
            batch: recent transitions (any batch shape) with the policy's input keys.

        Keyword Args:
            step: the logging step (e.g. frames collected).

        Returns:
            The measured statistics (also logged), including ``monitor/level``.
        """
        flat = batch.reshape(-1)
        probe = flat[-self.probe_size :]
        stats: dict[str, float] = {}
        current = self._divergence(self.level, probe)
        stats["monitor/kl"] = current["kl"]
        stats["monitor/kl_max"] = current["kl_max"]
        stats["monitor/agreement"] = current["agreement"]
        stats.update(self._ratio_stats(probe))
        version = flat.get(self.version_key, None)
        if version is not None:
            lag = self.learner_version - version.float()
            stats["monitor/policy_lag_mean"] = float(lag.mean())
            stats["monitor/policy_lag_max"] = float(lag.max())
        stats.update(self._rates)

        self._over = self._over + 1 if current["kl"] > self.kl_bound else 0
        candidate = self.level - 1
        if candidate >= self.start_level:
            more_compressed = self._divergence(candidate, probe)
            stats["monitor/kl_more_compressed"] = more_compressed["kl"]
            safe = more_compressed["kl"] < self.recover_fraction * self.kl_bound
            self._under = self._under + 1 if safe else 0
        else:
            self._under = 0
        if self.enabled:
            if self._over >= self.patience and self.level < len(self.ladder) - 1:
                self._change(self.level + 1, step, "down", current["kl"])
            elif self._under >= self.recover_patience:
                self._change(candidate, step, "up", stats["monitor/kl_more_compressed"])
        stats["monitor/level"] = float(self.level)
        self.history.append({"step": float(step), **stats})
        if self.logger is not None:
            for name, value in stats.items():
                self.logger.log_scalar(name, value, step=step)
        return stats

    def state_dict(self) -> dict[str, Any]:
        """The monitor's progress: level, patience counters, learner version, events, history.

        The ladder and the bounds are settings: build the monitor with the same ones before
        :meth:`load_state_dict`.

        Examples:
            >>> import torch
            >>> from tensordict.nn import TensorDictModule
            >>> actor = TensorDictModule(torch.nn.Linear(4, 2), in_keys=["x"], out_keys=["y"])
            >>> monitor = CompressionMonitor(actor)
            >>> monitor.level, monitor.learner_version = 1, 7
            >>> restored = CompressionMonitor(actor)
            >>> restored.load_state_dict(monitor.state_dict())
            >>> restored.compressor.spec(), restored.learner_version
            ('bf16', 7)
        """
        return {
            "ladder": [level.spec() for level in self.ladder],
            "level": self.level,
            "over": self._over,
            "under": self._under,
            "learner_version": self.learner_version,
            "events": [dict(event) for event in self.events],
            "history": [dict(entry) for entry in self.history],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved.

        Args:
            state_dict: a :meth:`state_dict` of a monitor with the same ladder.

        Raises:
            ValueError: if the saved ladder is not this monitor's.
        """
        ladder = [level.spec() for level in self.ladder]
        if state_dict["ladder"] != ladder:
            raise ValueError(
                f"the saved monitor ran the ladder {state_dict['ladder']}, this one runs {ladder}."
            )
        self.level = int(state_dict["level"])
        self._over = int(state_dict["over"])
        self._under = int(state_dict["under"])
        self.learner_version = int(state_dict["learner_version"])
        self.events = [dict(event) for event in state_dict["events"]]
        self.history = [dict(entry) for entry in state_dict["history"]]

    def _change(self, level: int, step: int, direction: str, kl: float) -> None:
        old = self.ladder[self.level].spec()
        self.level = level
        self._over = 0
        self._under = 0
        self.events.append(
            {
                "step": step,
                "direction": direction,
                "from": old,
                "to": self.ladder[level].spec(),
                "kl": kl,
            }
        )
