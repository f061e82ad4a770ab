"""End-of-run report shared by the AcceRL recipes: return vs wall time, compressed vs full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["write_accerl_report"]


def write_accerl_report(results: list[dict[str, Any]], run_dir: Path, *, title: str) -> Path:
    """Writes ``return_vs_wall_time.png`` and ``report.md`` into ``run_dir``.

    Args:
        results: one dict per run with ``label``, ``curve`` (``(wall_s, frames, return)``
            tuples), ``wall``, ``actor_share``, ``compression``, ``final_pipeline`` and
            ``monitor_events``.
        run_dir: the run folder.

    Keyword Args:
        title: the report's heading.

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
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "return_vs_wall_time.png", dpi=120)
    lines = [f"# {title}", "", "![return vs wall time](return_vs_wall_time.png)", ""]
    lines += ["| actors | wall (s) | actor time share | final return | compression |"]
    lines += ["|---|---|---|---|---|"]
    for res in results:
        final = res["curve"][-1][2] if res["curve"] else float("nan")
        lines.append(
            f"| {res['label']} | {res['wall']:.1f} | {res['actor_share']:.2f} | {final:.1f} "
            f"| {res['compression']} (final: {res['final_pipeline']}) |"
        )
    for res in results:
        if res["monitor_events"]:
            lines += ["", f"Monitor events ({res['label']}): {res['monitor_events']}"]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report
