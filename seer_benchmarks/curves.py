"""Learning curves of recipe runs: reading TorchRL CSV scalars, binning and mean/min-max plots.

Shared by the returns-parity aggregators (``seer_benchmarks.parity_*``), which turn the CSV logs
that the example recipes write into docs pages.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

__all__ = ["Curve", "bin_curve", "plot_mean_band", "read_scalar_csv"]

#: ``(step, value)`` pairs in logging order.
Curve = list[tuple[int, float]]


def read_scalar_csv(csv_path: Path) -> Curve:
    r"""Reads a TorchRL CSV logger scalar file (``step,value`` lines).

    Args:
        csv_path (Path): e.g. ``<run>/<experiment>/scalars/episode_return.csv``.

    Returns:
        The ``(step, value)`` pairs in file order.

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "r.csv"
        >>> _ = path.write_text("100,1.5\n200,2.0\n")
        >>> read_scalar_csv(path)
        [(100, 1.5), (200, 2.0)]
    """
    curve = []
    for line in csv_path.read_text().splitlines():
        step, value = line.split(",")
        curve.append((int(float(step)), float(value)))
    return curve


def bin_curve(curve: Curve, *, bin_width: int, window: int | None = None) -> Curve:
    """Averages an irregular curve (e.g. episode returns) onto a regular grid.

    The value at grid point ``g`` is the mean of the points with ``g - window < step <= g``;
    grid points with no such point are left out.

    Args:
        curve (Curve): ``(step, value)`` pairs.

    Keyword Args:
        bin_width (int): spacing of the grid (``bin_width, 2*bin_width, ...``).
        window (int, optional): width of the averaging window. Defaults to ``bin_width``.

    Returns:
        ``(grid step, mean value)`` pairs up to the last step of ``curve``.

    Examples:
        >>> bin_curve([(5, 1.0), (8, 3.0), (15, 5.0)], bin_width=10)
        [(10, 2.0), (20, 5.0)]
        >>> bin_curve([(5, 1.0), (8, 3.0), (15, 5.0)], bin_width=10, window=20)
        [(10, 2.0), (20, 3.0)]
    """
    if bin_width <= 0:
        raise ValueError(f"bin_width must be a positive number of steps, got {bin_width}")
    window = bin_width if window is None else window
    if not curve:
        return []
    last = max(step for step, _ in curve)
    binned = []
    for grid in range(bin_width, last + bin_width, bin_width):
        values = [v for step, v in curve if grid - window < step <= grid and math.isfinite(v)]
        if values:
            binned.append((grid, statistics.mean(values)))
    return binned


def plot_mean_band(ax, runs: Mapping[str, Curve], *, label: str, color: str | None = None) -> None:
    """Plots the mean over runs at each step with a min-max band.

    Args:
        ax: a matplotlib ``Axes``.
        runs (mapping of str to Curve): one curve per seed, on a shared grid of steps.

    Keyword Args:
        label (str): legend label; the number of runs is appended.
        color (str, optional): matplotlib colour.

    Examples:
        >>> import matplotlib
        >>> matplotlib.use("Agg")
        >>> import matplotlib.pyplot as plt
        >>> fig, ax = plt.subplots()
        >>> plot_mean_band(ax, {"s0": [(1, 1.0), (2, 2.0)], "s1": [(1, 3.0), (2, 2.0)]}, label="a")
        >>> ax.get_legend_handles_labels()[1]
        ['a (2 runs)']
    """
    by_step: dict[int, list[float]] = defaultdict(list)
    for curve in runs.values():
        for step, value in curve:
            if math.isfinite(value):
                by_step[step].append(value)
    steps = sorted(by_step)
    if not steps:
        return
    mean = [statistics.mean(by_step[s]) for s in steps]
    low = [min(by_step[s]) for s in steps]
    high = [max(by_step[s]) for s in steps]
    runs_label = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
    (line,) = ax.plot(steps, mean, marker="o", ms=3, label=f"{label} ({runs_label})", color=color)
    ax.fill_between(steps, low, high, alpha=0.2, color=line.get_color())
