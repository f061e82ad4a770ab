"""Shared benchmark harness: timing with medians, machine records and report pages.

Every benchmark measures torchrl_seer against the TorchRL baseline **in the same run**, takes
medians over repeats and writes two files under ``docs/benchmarks/``: ``<name>.json`` (all
raw figures plus the machine record) and ``<name>.md`` (tables for people). The index page
``docs/benchmarks/index.md`` lists every page that exists.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DOCS_DIR",
    "BenchmarkReport",
    "Timing",
    "interleaved_timings",
    "machine_info",
    "rss_bytes",
    "time_call",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DOCS_DIR = REPO_ROOT / "docs" / "benchmarks"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """Records the machine and software a benchmark ran on."""
    import numpy
    import tensordict
    import torch
    import torchrl

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchrl": torchrl.__version__,
        "tensordict": tensordict.__version__,
        "numpy": numpy.__version__,
        "commit": _git_commit(),
    }


def rss_bytes() -> int:
    """Returns the resident set size of this process in bytes (Linux ``/proc``)."""
    with open("/proc/self/statm") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


@dataclass
class Timing:
    """Wall-clock seconds of repeated calls; ``median`` is the figure reports use."""

    seconds: list[float]

    @property
    def median(self) -> float:
        """The median over repeats, in seconds."""
        return statistics.median(self.seconds)

    @property
    def iqr(self) -> float:
        """The interquartile range over repeats, in seconds (0 with fewer than 4 repeats)."""
        if len(self.seconds) < 4:
            return 0.0
        q = statistics.quantiles(self.seconds, n=4)
        return q[2] - q[0]

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"median_s": self.median, "iqr_s": self.iqr, "repeats": self.seconds}


def time_call(
    fn: Callable[[], Any],
    *,
    repeats: int = 7,
    warmup: int = 2,
    setup: Callable[[], Any] | None = None,
) -> Timing:
    """Times ``fn()`` ``repeats`` times after ``warmup`` untimed calls.

    Args:
        fn: the call to time.

    Keyword Args:
        repeats: timed calls; the report uses their median.
        warmup: untimed calls first (caches, allocator, lazy init).
        setup: called before every call, untimed.

    Returns:
        The :class:`Timing` of the timed calls.
    """
    for _ in range(warmup):
        if setup is not None:
            setup()
        fn()
    seconds = []
    for _ in range(repeats):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    return Timing(seconds)


def interleaved_timings(
    fns: dict[str, Callable[[], Any]], *, repeats: int = 7, warmup: int = 2
) -> dict[str, Timing]:
    """Times several calls round-robin, so that load drift hits every candidate alike.

    Ratios between candidates are what benchmarks report; timing them interleaved in one
    run keeps those ratios honest on a shared machine.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(s) for name, s in seconds.items()}


def _format_cell(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@dataclass
class BenchmarkReport:
    """Collects one benchmark's tables and writes its JSON record and markdown page.

    Args:
        name: file stem of the page, e.g. ``"delta_storage"``.
        title: the page title.

    Keyword Args:
        description: a paragraph saying what is measured and against what.
        command: how to regenerate the page; defaults to running ``seer_benchmarks.bench_<name>``
            (which ``make bench`` does).
        out_dir: where the page goes; defaults to ``docs/benchmarks``.

    Examples:
        >>> import tempfile
        >>> report = BenchmarkReport("demo", "Demo", out_dir=Path(tempfile.mkdtemp()))
        >>> report.add_table("Sizes", ["storage", "bytes"], [["lazy", 10], ["ours", 1]])
        >>> report.write().name
        'demo.md'
    """

    name: str
    title: str
    description: str = ""
    command: str = ""
    out_dir: Path = DOCS_DIR
    machine: dict[str, Any] = field(default_factory=machine_info)
    tables: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)

    def add_table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Adds a table; every row has one cell per column."""
        for row in rows:
            if len(row) != len(columns):
                raise ValueError(f"row {row!r} has {len(row)} cells, expected {len(columns)}")
        self.tables.append(
            {"title": title, "columns": list(columns), "rows": [list(r) for r in rows]}
        )

    def add_note(self, text: str) -> None:
        """Adds a paragraph under the tables (findings, caveats, targets missed)."""
        self.notes.append(text)

    def add_figure(self, path: Path, caption: str = "") -> None:
        """Links a figure saved next to the page (the file must be inside ``out_dir``)."""
        self.figures.append(f"![{caption}]({Path(path).name})")

    def _markdown(self) -> str:
        m = self.machine
        lines = [f"# {self.title}", ""]
        if self.description:
            lines += [self.description, ""]
        lines += [
            f"Measured {m['date']} on {m['cpu']} ({m['cores']} cores, {m['torch_threads']} torch "
            f"threads), Python {m['python']}, torch {m['torch']}, torchrl {m['torchrl']}, "
            f"tensordict {m['tensordict']}, commit `{m['commit']}`. "
            f"Regenerate with `{self.command or f'python -m seer_benchmarks.bench_{self.name}'}`.",
            "",
        ]
        for table in self.tables:
            lines += [f"## {table['title']}", ""]
            lines.append("| " + " | ".join(table["columns"]) + " |")
            lines.append("|" + "|".join("---" for _ in table["columns"]) + "|")
            for row in table["rows"]:
                lines.append("| " + " | ".join(_format_cell(v) for v in row) + " |")
            lines.append("")
        for figure in self.figures:
            lines += [figure, ""]
        if self.notes:
            lines += ["## Notes", ""]
            for note in self.notes:
                lines += [note, ""]
        return "\n".join(lines)

    def write(self) -> Path:
        """Writes ``<name>.json`` and ``<name>.md`` and refreshes the index; returns the page."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {
            "name": self.name,
            "title": self.title,
            "machine": self.machine,
            "tables": self.tables,
            "notes": self.notes,
            "raw": self.raw,
        }
        (self.out_dir / f"{self.name}.json").write_text(json.dumps(record, indent=2, default=str))
        page = self.out_dir / f"{self.name}.md"
        page.write_text(self._markdown())
        _write_index(self.out_dir)
        return page


def _write_index(out_dir: Path) -> None:
    entries = []
    for record_path in sorted(out_dir.glob("*.json")):
        record = json.loads(record_path.read_text())
        entries.append(
            f"- [{record['title']}]({record_path.stem}.md) — measured {record['machine']['date']}"
        )
    text = [
        "# Benchmarks",
        "",
        "Speed and memory figures live here, not in timed tests. Each page compares torchrl_seer",
        "with the TorchRL baseline measured side by side in the same run, reports medians over",
        "repeats, and records the machine, versions and commit. `make bench` regenerates them all.",
        "",
        *entries,
        "",
    ]
    (out_dir / "index.md").write_text("\n".join(text))
