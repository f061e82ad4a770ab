r"""Low-precision SAC at full budget, side by side with TorchRL's own SAC example.

This is a long experiment, not part of ``make bench``. Per seed, run our recipe and TorchRL's
``sota-implementations/sac/sac.py`` (its script and config unchanged; the overrides below set the
environment, the frame counts, the logger and the CPU) at the same time, one torch thread each,
so that both see the same machine load::

    export OMP_NUM_THREADS=1 MUJOCO_GL=egl
    python examples/lowprec_sac_dmc.py seed=0 collector.total_frames=100000 \
        "loss.precisions=[fp32]" logger.eval_every=10000 logger.eval_episodes=5 \
        checkpoint.interval=10000 logger.output_dir=runs/lowprec_full/ours_s0 &
    (mkdir -p runs/lowprec_full/torchrl_s0 && cd runs/lowprec_full/torchrl_s0 && \
     /usr/bin/time -v python <torchrl repo>/sota-implementations/sac/sac.py \
        env.name=cartpole env.task=swingup env.library=dm_control env.seed=0 \
        collector.total_frames=100000 collector.init_random_frames=1000 \
        collector.env_per_collector=1 collector.device=cpu network.device=cpu \
        logger.backend=csv logger.eval_iter=10000 > run.log 2> time.log) &
    wait
    python -m seer_benchmarks.lowprec_sac_vs_torchrl runs/lowprec_full --note "..."

More arms join the page later without running the others again: each goes under its own runs
folder (e.g. the bf16 preset, ``"loss.precisions=[bf16]"``, which pays off on CPUs with bf16
matrix instructions) and the page's earlier record is imported::

    python examples/lowprec_sac_dmc.py seed=0 collector.total_frames=100000 \
        "loss.precisions=[bf16]" logger.eval_every=10000 logger.eval_episodes=5 \
        checkpoint.interval=10000 logger.output_dir=runs/lowprec_bf16/ours_s0
    python -m seer_benchmarks.lowprec_sac_vs_torchrl runs/lowprec_bf16 \
        --import-runs docs/benchmarks/lowprec_sac_vs_torchrl.json \
        --speed-check runs/lowprec_bf16_speed --note "..."

(``--speed-check``: runs of the new arm and of TorchRL's example made at once on the new arm's
machine, shorter or over the full budget, laid out as above, so that the new arm gets a time ratio
too. ``--label <text>``: appended to the names of our arms under the runs folder, so that runs of a
changed recipe stand beside the imported runs of the same precision instead of replacing them.)

Every arm records the CPU it ran on; a time ratio is taken only between a seed's runs on one
machine made together (an imported run is not timed against a new one).

The page ``docs/benchmarks/lowprec_sac_vs_torchrl.md`` reports, per seed and arm, the evaluation
return curve, the return at the last evaluation, and the training wall time per environment step
with the evaluations left out: for our recipe its run report's wall time minus its evaluation
time; for TorchRL's example the sum of the per-iteration ``collect``, ``rb - extend`` and ``train``
timings it logs. A run still going (or stopped) is reported at the step it reached.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from seer_benchmarks.curves import Curve, read_scalar_csv
from seer_benchmarks.harness import DOCS_DIR, BenchmarkReport, machine_info

NAME = "lowprec_sac_vs_torchrl"
TORCHRL_ARM = "TorchRL sac.py, fp32"
SPEED_CHECK = "Paired speed check"  # how every such table of the page is titled
OWN_CHECK = "our recipe as of this commit"


def read_ours(run_root: Path) -> list[dict[str, Any]]:
    """Every precision of every recipe run under ``run_root`` (from the runs' report.json)."""
    arms = []
    for report in sorted(run_root.glob("lowprec_sac_*/report.json")):
        for result in json.loads(report.read_text())["runs"]:
            train_seconds = result["seconds"] - result.get("eval_seconds", 0.0)
            arms.append(
                {
                    "arm": f"ours, {result['precision']}",
                    "curve": [(int(step), float(value)) for step, value in result["curve"]],
                    "steps": result["steps"],
                    "updates": result["updates"],
                    "train_seconds": train_seconds,
                }
            )
    return arms


def read_torchrl(run_root: Path) -> list[dict[str, Any]]:
    """The TorchRL example's run under ``run_root`` (hydra output folder, CSV logger)."""
    arms = []
    for scalars in sorted(run_root.glob("outputs/*/*/sac_logging/*/scalars")):
        eval_csv = scalars / "eval" / "reward.csv"
        per_iteration = [
            read_scalar_csv(scalars / "time" / f"{phase}.csv")
            for phase in ("collect", "rb - extend", "train")
            if (scalars / "time" / f"{phase}.csv").exists()
        ]
        steps = max((step for curve in per_iteration for step, _ in curve), default=0)
        arms.append(
            {
                "arm": TORCHRL_ARM,
                "curve": read_scalar_csv(eval_csv) if eval_csv.exists() else [],
                "steps": steps,
                "updates": None,
                "train_seconds": sum(value for curve in per_iteration for _, value in curve),
            }
        )
    return arms


def ms_per_step(arm: dict[str, Any]) -> float:
    return 1000 * arm["train_seconds"] / max(1, arm["steps"])


def read_pairs(root: Path) -> dict[int, list[dict[str, Any]]]:
    """Every arm of every seed under ``root`` (``ours_s<seed>/`` and ``torchrl_s<seed>/``).

    The arms are tagged with the CPU of the machine this runs on (runs are aggregated where
    they ran).
    """
    seeds = sorted({int(p.name.split("_s")[-1]) for p in root.glob("*_s[0-9]*") if p.is_dir()})
    cpu = machine_info()["cpu"]
    return {
        seed: [
            dict(arm, machine=cpu)
            for arm in read_ours(root / f"ours_s{seed}") + read_torchrl(root / f"torchrl_s{seed}")
        ]
        for seed in seeds
    }


def labelled(runs: dict[int, list[dict[str, Any]]], label: str) -> dict[int, list[dict[str, Any]]]:
    """``runs`` with ``label`` appended to the name of each arm of ours (not TorchRL's).

    Runs of a changed recipe then stand beside the imported runs of the same precision instead
    of replacing them (e.g. ``"ours, bf16"`` becomes ``"ours, bf16, <label>"``).
    """
    return {
        seed: [
            arm if arm["arm"] == TORCHRL_ARM else dict(arm, arm=f"{arm['arm']}, {label}")
            for arm in arms
        ]
        for seed, arms in runs.items()
    }


def imported_pairs(saved: dict[str, Any], name: str) -> dict[int, list[dict[str, Any]]]:
    """The arms of an earlier record of this page, for runs not made again.

    Each arm keeps the CPU it ran on (from the record's machine, unless the arm names its own)
    and names the record it was made for (kept from an earlier import), so that only runs made
    together are timed against each other.

    Args:
        saved (dict): the earlier record (this page's JSON, loaded).
        name (str): the record's file name, stored with each arm it brings.
    """
    cpu = saved["machine"]["cpu"]
    return {
        int(seed): [
            dict(arm, machine=arm.get("machine", cpu), imported_from=arm.get("imported_from", name))
            for arm in arms
        ]
        for seed, arms in saved["raw"]["runs"].items()
    }


def earlier_speed_checks(
    saved: dict[str, Any], fresh_rows: list[list[Any]] | None = None
) -> list[dict[str, Any]]:
    """The paired speed check tables of an earlier record (this page's JSON, loaded).

    The record's own check is titled with its commit and CPU; checks it had imported keep their
    titles. A check whose rows are ``fresh_rows`` (the same runs, checked again for the new
    page) is left out.
    """
    machine = saved["machine"]
    return [
        dict(
            table,
            title=f"{SPEED_CHECK}: runs of both at once, our recipe at commit "
            f"{machine['commit']} ({machine['cpu']}, from the earlier record)"
            if OWN_CHECK in table["title"]
            else table["title"],
        )
        for table in saved["tables"]
        if table["title"].startswith(SPEED_CHECK) and table["rows"] != fresh_rows
    ]


def merged(
    runs: dict[int, list[dict[str, Any]]], earlier: dict[int, list[dict[str, Any]]]
) -> dict[int, list[dict[str, Any]]]:
    """``runs`` plus the arms of ``earlier`` that ``runs`` has not for the same seed."""
    seeds = sorted(set(runs) | set(earlier))
    out = {}
    for seed in seeds:
        fresh = runs.get(seed, [])
        names = {arm["arm"] for arm in fresh}
        out[seed] = [arm for arm in earlier.get(seed, []) if arm["arm"] not in names] + fresh
    return out


def paired_reference(arm: dict[str, Any], arms: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The TorchRL run a time ratio of ``arm`` is taken against: same seed, same machine.

    Runs on different machines (or an imported run and a new one) are not timed against each
    other: the ratio would measure the machines.
    """
    if arm["arm"] == TORCHRL_ARM:
        return None
    for reference in arms:
        if (
            reference["arm"] == TORCHRL_ARM
            and reference["steps"]
            and reference.get("machine") == arm.get("machine")
            and reference.get("imported_from") == arm.get("imported_from")
        ):
            return reference
    return None


def speed_check_rows(pairs: dict[int, list[dict[str, Any]]]) -> list[list[Any]]:
    """One row per seed and arm of ours: steps, both times per step, their ratio, returns."""
    rows = []
    for seed, arms in pairs.items():
        for arm in arms:
            reference = paired_reference(arm, arms)
            if reference is None:
                continue
            last, theirs = arm["curve"][-1:], reference["curve"][-1:]
            rows.append([
                seed, arm["arm"], f"{arm['steps']:,} / {reference['steps']:,}",
                round(ms_per_step(arm), 2), round(ms_per_step(reference), 2),
                round(ms_per_step(arm) / ms_per_step(reference), 3),
                f"{last[0][1]:.0f} at {last[0][0]:,}" if last else "-",
                f"{theirs[0][1]:.0f} at {theirs[0][0]:,}" if theirs else "-",
            ])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "root", type=Path, help="folder with ours_s<seed>/ and torchrl_s<seed>/ run folders"
    )
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        help="a paragraph for the page's notes (machine load, runs not made); repeatable",
    )
    parser.add_argument(
        "--speed-check",
        type=Path,
        default=None,
        help="folder of paired runs (same layout; shorter, or the full budget) timed with the "
        "current recipe",
    )
    parser.add_argument(
        "--label",
        default=None,
        help="appended to the arm names of our runs under root (e.g. a changed optimizer), so "
        "that they stand beside the imported runs of the same precision instead of replacing them",
    )
    parser.add_argument(
        "--import-runs",
        type=Path,
        default=None,
        help="an earlier JSON record of this page: its arms join those under root (a seed's "
        "arm run again under root replaces the imported one); its paired speed checks are kept",
    )
    args = parser.parse_args(argv)
    runs = read_pairs(args.root)
    if args.label is not None:
        runs = labelled(runs, args.label)
    earlier = json.loads(args.import_runs.read_text()) if args.import_runs is not None else None
    if earlier is not None:
        runs = merged(runs, imported_pairs(earlier, args.import_runs.name))
    if not any(runs.values()):
        raise SystemExit(f"no runs under {args.root}")

    report = BenchmarkReport(
        NAME,
        "Low-precision SAC at full budget beside TorchRL's SAC example (DMC cartpole_swingup, CPU)",
        description=(
            "SAC from states on DMC cartpole_swingup, 100k environment steps, one update per "
            "environment step (update-to-data ratio 1), batch 256, 2x256 ReLU MLPs, lr 3e-4, "
            "1,000 random steps first, one torch thread per run. Our recipe "
            "(`examples/lowprec_sac_dmc.py`): tanh-Gaussian actor with log-std in [-5, 2], "
            "alpha 0.1 at the start, target update tau 0.005 every 2 updates, 10 environment "
            "steps per collected batch, evaluation every 10k steps over 5 episodes. TorchRL's "
            "`sota-implementations/sac/sac.py` with its own config except env "
            "(`env.library=dm_control env.name=cartpole env.task=swingup`, one environment: "
            "`collector.env_per_collector=1`), frames (`collector.total_frames=100000 "
            "collector.init_random_frames=1000`), logger (`logger.backend=csv "
            "logger.eval_iter=10000`) and the CPU device: alpha 1.0 at the start, target "
            "polyak 0.995 every update, 1,000 environment steps and 1,000 updates per batch, "
            "evaluation over 1 episode. A seed's fp32 run of ours and TorchRL's run ran at the "
            "same time on the same machine, so they saw the same load; a time ratio is given "
            "only between runs of one machine made together (machine column)."
        ),
        command=f"python -m seer_benchmarks.{NAME} <runs folder>` after the runs listed in that "
        "module's docstring (a long experiment, not part of `make bench",
    )
    rows, ratios = [], []
    for seed, arms in runs.items():
        for arm in arms:
            last = arm["curve"][-1] if arm["curve"] else None
            reference = paired_reference(arm, arms)
            ratio = ms_per_step(arm) / ms_per_step(reference) if reference is not None else None
            if ratio is not None:
                ratios.append((arm["arm"], ratio))
            rows.append(
                [
                    seed,
                    arm["arm"],
                    arm["machine"],
                    arm["steps"],
                    last[0] if last else "-",
                    round(last[1], 1) if last else "-",
                    round(max(v for _, v in arm["curve"]), 1) if arm["curve"] else "-",
                    round(ms_per_step(arm), 2),
                    round(ratio, 2) if ratio is not None else "-",
                ]
            )
    report.add_table(
        "Every run",
        [
            "seed",
            "arm",
            "machine",
            "environment steps reached",
            "last evaluation at step",
            "return there",
            "best evaluation return",
            "training ms per environment step (evaluation excluded)",
            "÷ TorchRL's, same seed and machine",
        ],
        rows,
    )
    for arm_name in sorted({name for name, _ in ratios}):
        values = [ratio for name, ratio in ratios if name == arm_name]
        report.add_note(
            f"{arm_name}, the runs of the first table: training wall time per environment step ÷ "
            "TorchRL's example, median "
            f"over {len(values)} seed(s): {statistics.median(values):.2f} (target ≤ 1.1)."
        )

    fresh_rows = speed_check_rows(read_pairs(args.speed_check)) if args.speed_check else None
    if fresh_rows is not None:
        report.add_table(
            f"{SPEED_CHECK}: runs of both at once, {OWN_CHECK} ({machine_info()['cpu']})",
            ["seed", "arm", "environment steps (ours / TorchRL's)",
             "ours: training ms per step", "TorchRL's: training ms per step", "ours ÷ TorchRL's",
             "our last evaluation return", "TorchRL's last evaluation return"],
            fresh_rows,
        )  # fmt: skip
    if earlier is not None:
        for table in earlier_speed_checks(earlier, fresh_rows):
            report.add_table(table["title"], table["columns"], table["rows"])
    for note in args.note:
        report.add_note(note)

    arm_names = sorted(  # ours first, TorchRL's example last
        {arm["arm"] for arms in runs.values() for arm in arms if arm["curve"]},
        key=lambda name: (name == TORCHRL_ARM, name),
    )
    fig, axes = plt.subplots(
        1, len(arm_names), figsize=(3.2 * len(arm_names), 3.4), sharey=True, squeeze=False
    )
    for ax, arm_name in zip(axes[0], arm_names, strict=True):
        for seed, arms in runs.items():
            for arm in arms:
                if arm["arm"] == arm_name and arm["curve"]:
                    curve: Curve = arm["curve"]
                    ax.plot([s / 1000 for s, _ in curve], [v for _, v in curve], marker="o",
                            markersize=3, color=f"C{seed}", label=f"seed {seed}")  # fmt: skip
        ax.set_title(arm_name, fontsize=9)
        ax.set_xlabel("environment steps (thousands)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("evaluation return")
    fig.suptitle("SAC on cartpole_swingup", fontsize=10)
    fig.tight_layout()
    figure = DOCS_DIR / f"{NAME}.png"
    fig.savefig(figure, dpi=90)
    report.add_figure(figure, "evaluation return of each run")
    report.raw["runs"] = {str(seed): arms for seed, arms in runs.items()}
    print(report.write())


if __name__ == "__main__":
    main()
