"""What the AcceRL recipes share: actors, weight shipping, run bookkeeping and the report.

The algorithm of each recipe (its loss, Corrector and Monitor) stays in the recipe; this module
holds the plumbing both run the same way: the collector that acts with the compressed policy
(one seed per worker), shipping the learner's weights to it, the acting/learning clock with the
return curve, and the report (return vs wall time, compressed vs full actors).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from torchrl.collectors import Collector, MultiSyncCollector
from tqdm import tqdm

from torchrl_seer.collectors import PolicyCompressor, select_compression
from torchrl_seer.trainers.helpers.report import ReportPlot, ReportTable, write_report

__all__ = [
    "RunLog",
    "check_accerl_config",
    "choose_compressor",
    "make_actor_collector",
    "ship_weights",
    "time_to_threshold",
    "write_accerl_report",
]


def check_accerl_config(cfg: Any) -> None:
    """What the AcceRL recipes refuse: a CUDA device, checkpoints and resuming.

    The compressed actors run CPU kernels (int8 dynamic quantization) and the recipes compare
    two runs with worker processes, which are not checkpointed.

    Args:
        cfg (DictConfig): the recipe's configuration.

    Raises:
        ValueError: naming the setting.
    """
    if str(cfg.device) not in ("cpu", "auto"):
        raise ValueError(f"device={cfg.device!r}: the AcceRL recipes run on the CPU only.")
    if cfg.checkpoint.interval != 0 or cfg.resume is not None:
        raise ValueError(
            "the AcceRL recipes do not checkpoint: keep checkpoint.interval=0 and resume=null."
        )


def choose_compressor(compression: str, policy, example, *, kl_bound: float):
    """The actors' starting compression: ``none``, ``auto`` (measured) or a pipeline string.

    Args:
        compression: ``"none"``, ``"auto"`` or a pipeline such as ``"prune0.5+int8"``.
        policy: the learner's full-precision policy.
        example: an input at the actors' batch shape (``auto`` times the candidates on it).

    Keyword Args:
        kl_bound: the Monitor's divergence bound (``auto`` rejects candidates above it).

    Returns:
        The :class:`~torchrl_seer.collectors.PolicyCompressor` and why it was chosen.
    """
    if compression == "none":
        return PolicyCompressor(), "none (fp32 actors)"
    if compression == "auto":
        result = select_compression(policy, example, kl_bound=kl_bound)
        return result.compressor, result.reason
    compressor = PolicyCompressor.from_spec(compression)
    return compressor, f"explicit pipeline {compressor.spec()}"


def make_actor_collector(
    make_env, policy, scheme, *, workers, frames_per_batch, total_frames, seed
):
    """Actors: ``workers`` collector processes acting with the compressed ``policy``.

    Every worker's environment is built with its own seed, ``seed + 1000 * worker index`` (room
    for the sub-environments of a batched environment), before the collector's first reset.

    Args:
        make_env: ``make_env(seed)`` builds one worker's environment.
        policy: the :class:`~torchrl_seer.collectors.CompressedPolicy` the actors run.
        scheme: the :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme` that ships
            the learner's weights to the workers.

    Keyword Args:
        workers: worker processes; ``0`` acts in the learner's process.
        frames_per_batch: frames per batch handed to the learner.
        total_frames: frames of the whole run.
        seed: the first worker's seed.

    Returns:
        A TorchRL ``MultiSyncCollector`` (or ``Collector`` with no workers).
    """
    if workers > 0:
        return MultiSyncCollector(
            [functools.partial(make_env, seed + 1000 * worker) for worker in range(workers)],
            policy=policy,
            frames_per_batch=frames_per_batch,
            total_frames=total_frames,
            weight_sync_schemes={"policy": scheme},
        )
    return Collector(
        make_env(seed), policy, frames_per_batch=frames_per_batch, total_frames=total_frames
    )


def ship_weights(collector, learner_policy, policy, scheme, *, workers) -> None:
    """Compresses the learner's policy with ``scheme.compressor`` and ships it to the actors.

    Args:
        collector: the actors' collector.
        learner_policy: the learner's full-precision policy.
        policy: the in-process :class:`~torchrl_seer.collectors.CompressedPolicy` (no workers).
        scheme: the weight-sync scheme (its compressor and version).

    Keyword Args:
        workers: worker processes of ``collector`` (``0``: update ``policy`` in place).
    """
    if workers > 0:
        collector.update_policy_weights_(learner_policy)  # compress + ship (pipes)
    else:
        policy.load_packet(scheme.pack_next(learner_policy))


class RunLog:
    """Bookkeeping of one run: acting vs learning time, frames, the return curve, progress.

    Call :meth:`collected` when a batch arrives, :meth:`learned` with the learner's seconds,
    and :meth:`end_of_batch` last in the loop (it restarts the acting clock).

    Args:
        label: the run's name (progress bar, logger keys, report).

    Keyword Args:
        total_frames: frames of the run (progress bar).
        log_scalar: ``(name, value, step)`` logging function (e.g.
            :meth:`~torchrl_seer.trainers.helpers.RecipeRun.log_scalar`); returns are logged as
            ``<label>/episode_return`` at environment frames.
    """

    def __init__(
        self, label: str, *, total_frames: int, log_scalar: Callable[[str, float, int], None]
    ) -> None:
        self.label = label
        self.log_scalar = log_scalar
        self.curve: list[tuple[float, int, float]] = []
        self.frames = 0
        self.actor_time = self.learner_time = 0.0
        self.progress = tqdm(total=total_frames, desc=label)
        self.start = self._last = time.perf_counter()

    def collected(self, batch) -> float:
        """Counts a batch the actors handed over; returns the seconds spent acting for it."""
        seconds = time.perf_counter() - self._last
        self.actor_time += seconds
        self.frames += batch.numel()
        self.progress.update(batch.numel())
        return seconds

    def learned(self, seconds: float) -> None:
        """Adds learner seconds (updates, weight compression and shipping)."""
        self.learner_time += seconds

    def end_of_batch(self, batch, *, pipeline: str) -> None:
        """Records the returns of the episodes that ended in ``batch``; restarts the acting clock.

        Args:
            batch: the batch, with ``("next", "done")`` and ``("next", "episode_reward")``.

        Keyword Args:
            pipeline: the actors' current compression (shown on the progress bar).
        """
        done = batch["next", "done"].squeeze(-1)
        if done.any():
            ret = batch["next", "episode_reward"].squeeze(-1)[done].mean().item()
            self.curve.append((time.perf_counter() - self.start, self.frames, ret))
            self.log_scalar(f"{self.label}/episode_return", ret, self.frames)
            self.progress.set_postfix(ret=f"{ret:.1f}", pipeline=pipeline)
        self._last = time.perf_counter()

    def summary(self, *, compression: str, monitor) -> dict[str, Any]:
        """Closes the progress bar and returns the run's record for the report.

        Keyword Args:
            compression: why the starting compression was chosen.
            monitor: the run's :class:`~torchrl_seer.collectors.CompressionMonitor`.
        """
        self.progress.close()
        return {
            "label": self.label,
            "curve": self.curve,
            "wall": time.perf_counter() - self.start,
            "actor_share": self.actor_time / max(self.actor_time + self.learner_time, 1e-9),
            "actor_time": self.actor_time,
            "learner_time": self.learner_time,
            "frames": self.frames,
            "compression": compression,
            "final_pipeline": monitor.compressor.spec(),
            "monitor_events": monitor.events,
        }


def time_to_threshold(curve, threshold: float, *, window: int = 5) -> float | None:
    """Wall time at which the mean of the last ``window`` logged returns reaches ``threshold``.

    Args:
        curve: ``(wall_s, frames, return)`` tuples, one per batch that finished episodes.
        threshold: the return to reach.

    Keyword Args:
        window: number of logged returns averaged (smooths single lucky episodes).

    Returns:
        Seconds since the start of the run, or ``None`` if the threshold was never reached.
    """
    returns = [r for _, _, r in curve]
    for i in range(window - 1, len(returns)):
        if sum(returns[i - window + 1 : i + 1]) / window >= threshold:
            return curve[i][0]
    return None


def write_accerl_report(
    results: list[dict[str, Any]],
    run_dir: Path,
    *,
    title: str,
    threshold: float | None = None,
    config: Mapping[str, Any] | None = None,
    seeds: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``report.md``, ``report.png`` (return vs wall time) and ``report.json``.

    Args:
        results: one dict per run with ``label``, ``curve`` (``(wall_s, frames, return)``
            tuples), ``wall``, ``actor_share``, ``compression``, ``final_pipeline`` and
            ``monitor_events``; every entry is also saved to ``report.json`` under ``runs``.
        run_dir: the run folder.

    Keyword Args:
        title: the report's heading.
        threshold: return threshold; when given, each run's time to reach it
            (:func:`time_to_threshold`) is reported and the compressed / full ratio computed.
        config: the run's settings, saved with the report.
        seeds: what was seeded with what.

    Returns:
        The path of ``report.md``.
    """
    if threshold is not None:
        for res in results:
            res["time_to_threshold"] = time_to_threshold(res["curve"], threshold)
    rows = []
    for res in results:
        final = res["curve"][-1][2] if res["curve"] else float("nan")
        reached = res.get("time_to_threshold")
        rows.append([
            res["label"], f"{res['wall']:.1f}",
            "not reached" if reached is None else f"{reached:.1f}",
            f"{res['actor_share']:.2f}", f"{final:.1f}",
            f"{res['compression']} (final: {res['final_pipeline']})",
        ])  # fmt: skip
    header = ["actors", "wall (s)", "time to threshold (s)", "actor time share", "final return",
              "compression"]  # fmt: skip
    notes = []
    times = [res.get("time_to_threshold") for res in results]
    if threshold is not None and len(times) == 2 and times[0] is not None and times[1] is not None:
        notes.append(f"Time to return {threshold:g}, compressed ÷ full: {times[0] / times[1]:.3f}")
    notes += [
        f"Monitor events ({res['label']}): {res['monitor_events']}"
        for res in results
        if res["monitor_events"]
    ]
    curves = {res["label"]: [(t, r) for t, _, r in res["curve"]] for res in results}
    return write_report(
        run_dir,
        title=title,
        tables=[ReportTable(header, rows)],
        plots=[
            ReportPlot(
                "Return vs wall time",
                "wall time (s)",
                "episode return",
                curves,
                hlines={} if threshold is None else {f"threshold {threshold:g}": threshold},
            )
        ],
        notes=notes,
        config=config,
        seeds=seeds,
        data={"threshold": threshold, "runs": results},
    )
