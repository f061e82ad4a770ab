"""One report writer for every recipe: markdown tables, one PNG of plots, a JSON summary."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ReportPlot", "ReportTable", "write_report"]


@dataclass
class ReportTable:
    """A markdown table of a report.

    Args:
        header (list of str): column names.
        rows (list of list): one list of cells per row (formatted with ``str``).
        title (str, optional): a heading above the table.
    """

    header: list[str]
    rows: list[list[Any]]
    title: str = ""


@dataclass
class ReportPlot:
    """One panel of a report's figure.

    Args:
        title (str): panel title.
        xlabel (str): x axis label.
        ylabel (str): y axis label.
        series (dict): label -> list of ``(x, y)`` points; for ``kind="bar"``, label -> height.
        kind (str, optional): ``"line"``, ``"points"`` or ``"bar"``. Defaults to ``"line"``.
        vlines (dict, optional): label -> x of a dashed vertical line (e.g. the freeze).
        hlines (dict, optional): label -> y of a dotted horizontal line (e.g. a threshold).
        logy (bool, optional): logarithmic y axis. Defaults to ``False``.
    """

    title: str
    xlabel: str
    ylabel: str
    series: dict[str, Any]
    kind: str = "line"
    vlines: dict[str, float] = field(default_factory=dict)
    hlines: dict[str, float] = field(default_factory=dict)
    logy: bool = False


def _draw(plots: Sequence[ReportPlot], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(plots), figsize=(5 * len(plots), 4), squeeze=False)
    for ax, plot in zip(axes[0], plots, strict=True):
        if plot.kind == "bar":
            ax.bar(list(plot.series), [float(v) for v in plot.series.values()])
        for label, points in plot.series.items() if plot.kind != "bar" else ():
            if points:
                xs, ys = zip(*points, strict=True)
                style = {"ls": "", "marker": ".", "alpha": 0.6} if plot.kind == "points" else {}
                ax.plot(xs, ys, label=label, **style)
        for label, x in plot.vlines.items():
            ax.axvline(x, color="r", ls="--", label=label)
        for label, y in plot.hlines.items():
            ax.axhline(y, color="grey", ls=":", label=label)
        if plot.logy:
            ax.set_yscale("log")
        ax.set(title=plot.title, xlabel=plot.xlabel, ylabel=plot.ylabel)
        if plot.kind != "bar" and ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(
    run_dir: str | Path,
    *,
    title: str,
    tables: Sequence[ReportTable] = (),
    plots: Sequence[ReportPlot] = (),
    config: Mapping[str, Any] | None = None,
    seeds: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    data: Mapping[str, Any] | None = None,
) -> Path:
    """Writes ``report.md``, ``report.png`` (when there are plots) and ``report.json``.

    Called at every evaluation and at the end of a run: each call rewrites the three files.

    Args:
        run_dir (str or Path): the run folder.

    Keyword Args:
        title (str): the report's heading.
        tables (sequence of ReportTable): markdown tables, in order.
        plots (sequence of ReportPlot): panels of ``report.png``, left to right.
        config (mapping, optional): the run's configuration (a JSON block at the end).
        seeds (mapping, optional): what was seeded with what (a line under the title).
        notes (sequence of str): paragraphs after the tables.
        data (mapping, optional): extra JSON-able results saved in ``report.json``.

    Returns:
        The path of ``report.md``.

    Examples:
        >>> import tempfile
        >>> from torchrl_seer.trainers.helpers import ReportPlot, ReportTable, write_report
        >>> path = write_report(
        ...     tempfile.mkdtemp(), title="Demo",
        ...     tables=[ReportTable(["metric", "value"], [["episodes", 3]])],
        ...     plots=[ReportPlot("Return", "frames", "return", {"run": [(0, 1.0), (8, 2.0)]})],
        ...     seeds={"torch": 0})
        >>> print(path.read_text().splitlines()[0])
        # Demo
        >>> (path.parent / "report.png").exists()
        True
    """
    run_dir = Path(run_dir)
    lines = [f"# {title}", ""]
    if seeds:
        lines += ["Seeds: " + ", ".join(f"{key} {value}" for key, value in seeds.items()), ""]
    for table in tables:
        if table.title:
            lines += [f"## {table.title}", ""]
        lines += ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table.rows]
        lines.append("")
    lines += [*notes, ""] if notes else []
    if plots:
        _draw(plots, run_dir / "report.png")
        lines += ["![report](report.png)", ""]
    if config is not None:
        lines += ["## Configuration", "", "```json", json.dumps(config, indent=2, default=str)]
        lines += ["```", ""]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines))
    summary = {
        "title": title,
        "tables": [asdict(table) for table in tables],
        "seeds": dict(seeds or {}),
        "config": config,
        **dict(data or {}),
    }
    (run_dir / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    return path
