"""End-of-run report shared by the SEER recipes: a markdown summary and one PNG figure."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["write_seer_report"]


def _median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values) if values else float("nan")


def write_seer_report(
    run_dir: Path,
    *,
    title: str,
    episode_returns: list[tuple[int, float]],
    update_seconds: list[tuple[bool, float]],
    freeze: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Writes ``report.md``, ``report.png`` and ``report.json`` into ``run_dir``.

    Args:
        run_dir (Path): output folder.

    Keyword Args:
        title (str): report title.
        episode_returns (list of (int, float)): ``(frames, return)`` of finished episodes.
        update_seconds (list of (bool, float)): ``(after_freeze, seconds)`` per learner update
            (sample + loss + backward + optimizer step).
        freeze (dict): the :class:`~torchrl_seer.trainers.FreezeEncoderHook` freeze report.
        config (dict): the run's arguments.

    Returns:
        The markdown report path.
    """
    before = [s for frozen, s in update_seconds if not frozen]
    after = [s for frozen, s in update_seconds if frozen]
    ratio = _median_ms(after) / _median_ms(before) if before and after else float("nan")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    if episode_returns:
        frames, returns = zip(*episode_returns, strict=True)
        axes[0].plot(frames, returns, ".", alpha=0.5, label="episode return")
    if "freeze_frame" in freeze:
        axes[0].axvline(freeze["freeze_frame"], color="r", ls="--", label="freeze (T_f)")
    axes[0].set(xlabel="environment frames", ylabel="return", title="Return vs frames")
    axes[0].legend()
    axes[1].bar(["before freeze", "after freeze"], [_median_ms(before), _median_ms(after)])
    axes[1].set(ylabel="median ms / update", title=f"Learner update, after/before {ratio:.3f}")
    if "latent_capacity" in freeze:
        axes[2].bar(["pixel C", "latent c'"], [freeze["pixel_capacity"], freeze["latent_capacity"]])
        axes[2].set(ylabel="transitions", title="Replay capacity under one budget")
    fig.tight_layout()
    fig.savefig(run_dir / "report.png", dpi=100)
    plt.close(fig)

    rows = [
        ("learner updates before / after freeze", f"{len(before)} / {len(after)}"),
        ("median update time before freeze (ms)", f"{_median_ms(before):.2f}"),
        ("median update time after freeze (ms)", f"{_median_ms(after):.2f}"),
        ("update time after / before", f"{ratio:.3f}"),
    ]
    for key, label in [
        ("freeze_step", "freeze step T_f (agent steps)"),
        ("pixel_capacity", "pixel capacity C"),
        ("latent_capacity", "latent capacity c'"),
        ("pixel_bytes_per_transition", "pixel bytes / transition (b_pix)"),
        ("latent_bytes_per_transition", "latent bytes / transition (b_lat)"),
        ("budget_bytes", "budget (bytes)"),
        ("num_migrated", "transitions migrated"),
        ("rss_before_bytes", "process RSS before migration (bytes)"),
        ("rss_after_bytes", "process RSS after migration (bytes)"),
        ("seconds", "migration time (s)"),
    ]:
        if key in freeze:
            value = freeze[key]
            rows.append((label, f"{value:,.1f}" if isinstance(value, float) else f"{value:,}"))
    last = [r for _, r in episode_returns[-10:]]
    if last:
        rows.append(("mean return, last 10 episodes", f"{statistics.mean(last):.2f}"))
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in rows]
    lines += ["", "![report](report.png)", "", "## Config", "", "```json"]
    lines += [json.dumps(config, indent=2, default=str), "```", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    summary = {"rows": dict(rows), "freeze": freeze, "config": config}
    (run_dir / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    return path
