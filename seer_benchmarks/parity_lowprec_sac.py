r"""Returns parity of low-precision SAC: aggregates recipe runs into a docs page.

This is a long experiment, not part of ``make bench``. Run the recipe once per seed (each run
trains every listed precision in sequence with the same seed), then aggregate::

    python examples/lowprec_sac_dmc.py -m env.name=cartpole_swingup \
        "loss.precisions=[fp32,bf16,bf16-lean]" collector.total_frames=12000 \
        logger.eval_every=2000 logger.eval_episodes=2 seed=0,1,2 \
        'logger.output_dir=runs/parity_lowprec/seed${seed}'
    python examples/lowprec_sac_dmc.py "loss.precisions=[naive-fp16,fp16]" \
        collector.total_frames=12000 logger.eval_every=2000 logger.eval_episodes=2 seed=0 \
        logger.output_dir=runs/parity_lowprec/fp16_seed0
    python -m seer_benchmarks.parity_lowprec_sac runs/parity_lowprec

One folder of runs holds one task. The page ``docs/benchmarks/lowprec_sac_parity_<task>.md``
reports the evaluation returns of every precision per seed, their mean and spread, and where a
run went non-finite.
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from seer_benchmarks.curves import Curve, plot_mean_band, read_scalar_csv
from seer_benchmarks.harness import DOCS_DIR, BenchmarkReport

PRECISION_ORDER = ("fp32", "bf16", "bf16-lean", "fp16", "fp16-lean", "naive-fp16")


def task_of(run_dir: Path) -> str:
    """The DMC task of a recipe run folder (``env.name`` of its ``config.yaml``)."""
    from omegaconf import OmegaConf

    return str(OmegaConf.load(run_dir / "config.yaml").env.name)


def collect(
    root: Path,
) -> tuple[dict[str, dict[str, Curve]], dict[tuple[str, str], int]]:
    """Reads every run under ``root``.

    Returns:
        precision -> run name -> evaluation curve, and (precision, run) -> the first step at
        which a logged loss was non-finite (runs that stayed finite are absent).
    """
    curves: dict[str, dict[str, Curve]] = defaultdict(dict)
    nonfinite: dict[tuple[str, str], int] = {}
    # <output_dir>/<run folder>/<experiment>/scalars/<precision>/<scalar>.csv
    for scalars in sorted(root.glob("*/lowprec_sac_*/*/scalars/*")):
        precision, run = scalars.name, scalars.parts[-5]
        eval_csv = scalars / "eval_return.csv"
        curves[precision][run] = read_scalar_csv(eval_csv) if eval_csv.exists() else []
        bad_steps = [
            step
            for name in ("loss_qvalue.csv", "loss_actor.csv")
            if (scalars / name).exists()
            for step, value in read_scalar_csv(scalars / name)
            if not math.isfinite(value)
        ]
        if bad_steps:
            nonfinite[(precision, run)] = min(bad_steps)
    return curves, nonfinite


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding one sub-folder per recipe run")
    args = parser.parse_args(argv)
    curves, nonfinite = collect(args.root)
    if not curves:
        raise SystemExit(f"no recipe runs under {args.root}")
    tasks = {task_of(run_dir) for run_dir in args.root.glob("*/lowprec_sac_*")}
    if len(tasks) != 1:
        raise SystemExit(f"expected the runs of one task under {args.root}, found {sorted(tasks)}")
    task = tasks.pop()
    precisions = [p for p in PRECISION_ORDER if p in curves]

    report = BenchmarkReport(
        f"lowprec_sac_parity_{task}",
        f"Low-precision SAC: returns parity (DMC {task}, CPU)",
        description=(
            f"SAC from states on DMC {task} with the recipe's CPU defaults (2x256 MLPs, "
            "batch 256, lr 3e-4, one update per environment step, 1,000 random steps first), "
            "evaluated every 2,000 steps with the deterministic policy (mean of 2 episodes). "
            "Each seed trains every precision with the same seed."
        ),
        command="python -m seer_benchmarks.parity_lowprec_sac <runs folder>` after the recipe runs "
        "listed in that module's docstring (a long experiment, not part of `make bench",
    )
    rows = []
    final_by_precision: dict[str, list[float]] = {}
    for precision in precisions:
        for run, curve in sorted(curves[precision].items()):
            finite = [value for _, value in curve if math.isfinite(value)]
            final = curve[-1][1] if curve else math.nan
            diverged = (precision, run) in nonfinite
            rows.append(
                [
                    precision,
                    run,
                    curve[-1][0] if curve else "-",
                    round(final, 1) if math.isfinite(final) and not diverged else "-",
                    round(max(finite), 1) if finite else "-",
                    nonfinite.get((precision, run), "-"),
                ]
            )
            if math.isfinite(final) and not diverged:
                final_by_precision.setdefault(precision, []).append(final)
    report.add_table(
        "Every run",
        [
            "precision",
            "run",
            "last eval step",
            "final return",
            "best return",
            "loss non-finite at step",
        ],
        rows,
    )
    summary = []
    for precision in precisions:
        finals = final_by_precision.get(precision, [])
        summary.append(
            [
                precision,
                len(curves[precision]),
                len(finals),
                round(statistics.mean(finals), 1) if finals else "-",
                round(statistics.stdev(finals), 1) if len(finals) > 1 else "-",
            ]
        )
    report.add_table(
        "Final evaluation return",
        ["precision", "runs", "finite runs", "mean", "std over seeds"],
        summary,
    )

    fig, ax = plt.subplots(figsize=(7, 4))
    for precision in precisions:
        plot_mean_band(ax, curves[precision], label=precision)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("evaluation return")
    ax.set_title(f"SAC on {task}: mean and min-max over seeds")
    ax.legend()
    fig.tight_layout()
    figure = DOCS_DIR / f"lowprec_sac_parity_{task}.png"
    fig.savefig(figure, dpi=90)
    report.add_figure(figure, "evaluation return per precision")
    report.raw["curves"] = {p: dict(runs) for p, runs in curves.items()}
    print(report.write())


if __name__ == "__main__":
    main()
