"""Compression by measurement: time candidate pipelines on the real policy and batch shape.

Whether a compression speeds a policy up depends on the layer sizes, the batch shape and the
CPU: on our 2-core AVX-512 machine int8 dynamic quantization made a 256-wide MLP at batch 1
2.1x *slower* than fp32 but a 1024-wide one at batch 16 3x faster, and bf16/int8 did nothing for
a Nature CNN at batch 1. :func:`select_compression` therefore measures instead of guessing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn

from torchrl_seer.collectors.compressed_policy import CompressedPolicy
from torchrl_seer.collectors.compression_steps import Quantize
from torchrl_seer.collectors.divergence import policy_divergence
from torchrl_seer.collectors.policy_compressor import PolicyCompressor

__all__ = ["AutoCompressionResult", "select_compression"]

DEFAULT_CANDIDATES = ("bf16", "int8", "int8+trace", "prune0.25+int8", "prune0.25+bf16")


@dataclass
class AutoCompressionResult:
    """What :func:`select_compression` measured and chose.

    Attributes:
        compressor: the chosen pipeline (``fp32`` when nothing qualified).
        reason: one sentence explaining the choice.
        rows: one dict per candidate: ``spec``, ``time_ms``, ``ratio`` (÷ fp32), ``kl``,
            ``agreement``, ``accepted`` and ``why``.
    """

    compressor: PolicyCompressor
    reason: str
    rows: list[dict[str, Any]] = field(default_factory=list)

    def table(self) -> str:
        """Returns the measurements as a markdown table."""
        lines = [
            "| pipeline | time / step (ms) | ÷ fp32 | KL(π‖μ) | agreement | verdict |",
            "|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            lines.append(
                f"| {row['spec']} | {row['time_ms']:.3f} | {row['ratio']:.2f} | "
                f"{row['kl']:.2e} | {row['agreement']:.3f} | {row['why']} |"
            )
        return "\n".join(lines)


def _median_times(
    policies: dict[str, CompressedPolicy],
    batch: TensorDictBase,
    *,
    repeats: int,
    inner: int,
) -> dict[str, float]:
    """Median seconds per call, measured in interleaved rounds so load drifts hit all alike."""
    samples: dict[str, list[float]] = {name: [] for name in policies}
    for policy in policies.values():
        for _ in range(2):
            policy(batch.clone(False))
    for _ in range(repeats):
        for name, policy in policies.items():
            start = time.perf_counter()
            for _ in range(inner):
                policy(batch.clone(False))
            samples[name].append((time.perf_counter() - start) / inner)
    return {name: statistics.median(values) for name, values in samples.items()}


def select_compression(
    policy: TensorDictModuleBase,
    batch: TensorDictBase,
    *,
    candidates: Sequence[str | PolicyCompressor] | None = None,
    kl_bound: float = 0.02,
    min_speedup: float = 1.05,
    repeats: int = 7,
    inner: int = 20,
    log: Any = print,
) -> AutoCompressionResult:
    """Picks the fastest candidate compression whose divergence stays under ``kl_bound``.

    Each candidate is built, timed on ``batch`` (the actor's real batch shape) side by side with
    the uncompressed policy, and its KL(π‖μ) measured on the states of ``batch``. A candidate is
    accepted when its KL is at most ``kl_bound`` (use the Monitor's bound) and it is at least
    ``min_speedup`` times faster than fp32; the fastest accepted one wins. If none qualifies the
    result is ``fp32``: auto mode never picks something slower than the full policy.

    Args:
        policy: the learner's full-precision probabilistic policy.
        batch: a representative input (e.g. a reset of the actor's environments).

    Keyword Args:
        candidates: pipelines to try. Defaults to ``bf16``, ``int8``, ``int8+trace`` (int8
            run as a static graph, see :class:`~torchrl_seer.collectors.StaticGraph`),
            ``prune0.25+int8`` and ``prune0.25+bf16``, plus static int8 calibrated on ``batch``
            when the policy has convolutions.
        kl_bound: divergence bound.
        min_speedup: required speed-up over fp32 (guards against timing noise).
        repeats: timing rounds (median taken).
        inner: calls per round.
        log: callable receiving the explanation (``print`` by default, ``None`` to silence).

    Returns:
        The choice, the reason and the measurement table.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import MLP, ProbabilisticActor
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(MLP(in_features=4, out_features=2, num_cells=[16]),
        ...                      in_keys=["observation"], out_keys=["logits"]),
        ...     in_keys=["logits"], distribution_class=torch.distributions.Categorical)
        >>> batch = TensorDict(observation=torch.randn(1, 4), batch_size=[1])
        >>> result = select_compression(actor, batch, candidates=["int8"], repeats=3, log=None)
        >>> [row["spec"] for row in result.rows]
        ['fp32', 'int8']
    """
    if candidates is None:
        candidates = list(DEFAULT_CANDIDATES)
        if any(isinstance(m, nn.Conv2d) for m in policy.modules()):
            calibrate = Quantize(
                "int8", mode="static", calibration=lambda module: module(batch.clone(False))
            )
            candidates.append(PolicyCompressor([calibrate]))
    compressors = {"fp32": PolicyCompressor()}
    for candidate in candidates:
        compressor = (
            PolicyCompressor.from_spec(candidate) if isinstance(candidate, str) else candidate
        )
        compressors[compressor.spec()] = compressor
    policies = {}
    divergence = {}
    rows: list[dict[str, Any]] = []
    for spec, compressor in compressors.items():
        try:
            policies[spec] = CompressedPolicy(policy, compressor)
        except (TypeError, ValueError) as error:
            rows.append(
                dict(
                    spec=spec,
                    time_ms=float("nan"),
                    ratio=float("nan"),
                    kl=float("nan"),
                    agreement=float("nan"),
                    accepted=False,
                    why=f"not applicable: {error}",
                )
            )
            continue
        divergence[spec] = policy_divergence(policy, policies[spec], batch)
    with torch.no_grad():
        times = _median_times(policies, batch, repeats=repeats, inner=inner)
    base = times["fp32"]
    best, best_time = "fp32", base
    for spec in policies:
        if spec == "fp32":
            continue
        ratio = times[spec] / base
        kl = divergence[spec]["kl"]
        if kl > kl_bound:
            why = f"rejected: KL {kl:.2e} > bound {kl_bound:g}"
        elif ratio * min_speedup > 1.0:
            why = f"rejected: {1 / ratio:.2f}x speed-up < required {min_speedup:g}x"
        else:
            why = "accepted"
            if times[spec] < best_time:
                best, best_time = spec, times[spec]
        rows.append(
            dict(
                spec=spec,
                time_ms=times[spec] * 1e3,
                ratio=ratio,
                kl=kl,
                agreement=divergence[spec]["agreement"],
                accepted=why == "accepted",
                why=why,
            )
        )
    rows.insert(
        0,
        dict(
            spec="fp32",
            time_ms=base * 1e3,
            ratio=1.0,
            kl=0.0,
            agreement=1.0,
            accepted=True,
            why="reference",
        ),
    )
    shape = tuple(batch.batch_size)
    if best == "fp32":
        reason = (
            f"auto compression chose fp32 at batch shape {shape}: no candidate was both "
            f"{min_speedup:g}x faster and within KL {kl_bound:g}"
        )
    else:
        reason = (
            f"auto compression chose {best} at batch shape {shape}: {base / best_time:.2f}x "
            f"faster than fp32 with KL {divergence[best]['kl']:.2e} <= {kl_bound:g}"
        )
    result = AutoCompressionResult(compressors[best], reason, rows)
    if log is not None:
        log(reason + "\n" + result.table())
    return result
