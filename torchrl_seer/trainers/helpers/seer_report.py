"""The report of a SEER run: returns around the freeze, update times, replay capacities."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torchrl_seer.trainers.helpers.report import ReportPlot, ReportTable, write_report

__all__ = ["write_seer_report"]

_FREEZE_ROWS = [
    ("freeze_step", "freeze step T_f (agent steps)"),
    ("freeze_frame", "freeze at environment frame"),
    ("pixel_capacity", "pixel capacity C"),
    ("latent_capacity", "latent capacity c'"),
    ("pixel_bytes_per_transition", "pixel bytes / transition (b_pix)"),
    ("latent_bytes_per_transition", "latent bytes / transition (b_lat)"),
    ("budget_bytes", "budget (bytes)"),
    ("num_migrated", "transitions migrated"),
    ("rss_before_bytes", "process RSS before migration (bytes)"),
    ("rss_after_bytes", "process RSS after migration (bytes)"),
    ("seconds", "migration time (s)"),
]


def _median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values) if values else float("nan")


def write_seer_report(
    run_dir: str | Path,
    *,
    title: str,
    episode_returns: Sequence[tuple[int, float]],
    update_seconds: Sequence[tuple[bool, float]],
    freeze: Mapping[str, Any],
    config: Mapping[str, Any],
    seeds: Mapping[str, Any] | None = None,
) -> Path:
    """Writes a SEER run's ``report.md``, ``report.png`` and ``report.json`` into ``run_dir``.

    Args:
        run_dir (str or Path): the run folder.

    Keyword Args:
        title (str): report title.
        episode_returns (sequence of (int, float)): ``(environment frames, return)`` of
            finished episodes (:attr:`EpisodeReturns.history`).
        update_seconds (sequence of (bool, float)): ``(after_freeze, seconds)`` per learner
            update (sample + loss + backward + optimizer step).
        freeze (mapping): the :class:`~torchrl_seer.trainers.FreezeEncoderHook` freeze report
            (``freeze_frame`` adds the freeze line to the return plot).
        config (mapping): the run's configuration.
        seeds (mapping, optional): what was seeded with what.

    Returns:
        The markdown report path.

    Examples:
        >>> import tempfile
        >>> from torchrl_seer.trainers.helpers import write_seer_report
        >>> path = write_seer_report(
        ...     tempfile.mkdtemp(), title="SEER", episode_returns=[(400, -21.0)],
        ...     update_seconds=[(False, 0.02), (True, 0.01)],
        ...     freeze={"freeze_step": 100, "latent_capacity": 900, "pixel_capacity": 300},
        ...     config={"seed": 0})
        >>> "| update time after / before | 0.500 |" in path.read_text()
        True
    """
    before = [s for frozen, s in update_seconds if not frozen]
    after = [s for frozen, s in update_seconds if frozen]
    ratio = _median_ms(after) / _median_ms(before) if before and after else float("nan")
    rows: list[list[Any]] = [
        ["learner updates before / after freeze", f"{len(before)} / {len(after)}"],
        ["median update time before freeze (ms)", f"{_median_ms(before):.2f}"],
        ["median update time after freeze (ms)", f"{_median_ms(after):.2f}"],
        ["update time after / before", f"{ratio:.3f}"],
    ]
    for key, label in _FREEZE_ROWS:
        if key in freeze:
            value = freeze[key]
            rows.append([label, f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"])
    last = [r for _, r in episode_returns[-10:]]
    if last:
        rows.append(["mean return, last 10 episodes", f"{statistics.mean(last):.2f}"])
    plots = [
        ReportPlot(
            "Return vs frames", "environment frames", "return",
            {"episode return": list(episode_returns)}, kind="points",
            vlines={"freeze (T_f)": freeze["freeze_frame"]} if "freeze_frame" in freeze else {},
        ),
        ReportPlot(
            f"Learner update, after/before {ratio:.3f}", "", "median ms / update",
            {"before freeze": _median_ms(before), "after freeze": _median_ms(after)}, kind="bar",
        ),
    ]  # fmt: skip
    if "latent_capacity" in freeze and "pixel_capacity" in freeze:
        capacities = {"pixel C": freeze["pixel_capacity"], "latent c'": freeze["latent_capacity"]}
        plots.append(
            ReportPlot("Replay capacity under one budget", "", "transitions", capacities, "bar")
        )
    return write_report(
        run_dir,
        title=title,
        tables=[ReportTable(["metric", "value"], rows)],
        plots=plots,
        config=config,
        seeds=seeds,
        data={"freeze": dict(freeze), "episode_returns": list(episode_returns)},
    )
