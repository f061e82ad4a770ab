"""End-of-run report shared by the AcceRL recipes: return vs wall time, compressed vs full."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["time_to_threshold", "write_accerl_report"]


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
    config: dict[str, Any] | None = None,
) -> Path:
    """Writes ``return_vs_wall_time.png``, ``report.md`` and ``results.json`` into ``run_dir``.

    Args:
        results: one dict per run with ``label``, ``curve`` (``(wall_s, frames, return)``
            tuples), ``wall``, ``actor_share``, ``compression``, ``final_pipeline`` and
            ``monitor_events``; every entry is also saved to ``results.json``.
        run_dir: the run folder.

    Keyword Args:
        title: the report's heading.
        threshold: return threshold; when given, each run's time to reach it
            (:func:`time_to_threshold`) is reported and the compressed ÷ full ratio computed.
        config: the run's settings (e.g. ``vars(args)``), saved to ``results.json``.

    Returns:
        The path of ``report.md``.
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    for res in results:
        if res["curve"]:
            t, _, r = zip(*res["curve"], strict=True)
            ax.plot(t, r, label=res["label"])
    ax.set_xlabel("wall time (s)")
    ax.set_ylabel("episode return")
    if threshold is not None:
        ax.axhline(threshold, color="grey", linestyle=":", label=f"threshold {threshold:g}")
        for res in results:
            res["time_to_threshold"] = time_to_threshold(res["curve"], threshold)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "return_vs_wall_time.png", dpi=120)
    lines = [f"# {title}", "", "![return vs wall time](return_vs_wall_time.png)", ""]
    lines += [
        "| actors | wall (s) | time to threshold (s) | actor time share | final return "
        "| compression |",
        "|---|---|---|---|---|---|",
    ]
    for res in results:
        final = res["curve"][-1][2] if res["curve"] else float("nan")
        reached = res.get("time_to_threshold")
        lines.append(
            f"| {res['label']} | {res['wall']:.1f} | "
            f"{'not reached' if reached is None else f'{reached:.1f}'} | "
            f"{res['actor_share']:.2f} | {final:.1f} "
            f"| {res['compression']} (final: {res['final_pipeline']}) |"
        )
    times = [res.get("time_to_threshold") for res in results]
    if len(results) == 2 and None not in times:
        lines += ["", f"Time to return {threshold:g}, compressed ÷ full: {times[0] / times[1]:.3f}"]
    for res in results:
        if res["monitor_events"]:
            lines += ["", f"Monitor events ({res['label']}): {res['monitor_events']}"]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (run_dir / "results.json").write_text(
        json.dumps({"threshold": threshold, "config": config, "runs": results}, default=str)
    )
    return report
