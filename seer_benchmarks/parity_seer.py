r"""Returns parity of SEER against the same agent without a freeze: aggregates recipe runs.

This is a long experiment, not part of ``make bench``. Run a SEER recipe once per task, arm and
seed — the no-freeze arm is the same recipe with a freeze step beyond the run — then aggregate.
Atari (``examples/seer_atari.py``; hydra multirun, one run folder per combination)::

    python examples/seer_atari.py -m env.name=RoadRunner,Breakout seed=0,1 \
        seer.freeze_at=20000,50000,100000000 logger.output_dir=runs/parity_seer/atari
    # the freeze_at="auto" criterion (ParameterConvergence) as its own arm:
    python examples/seer_atari.py env.name=RoadRunner seer.freeze_at=auto seed=0 \
        logger.output_dir=runs/parity_seer/atari
    python -m seer_benchmarks.parity_seer runs/parity_seer

Atari with a pixel buffer smaller than the run (``--recipe atari_capped``): the capped no-freeze
run, checkpointed at T_f; the SEER arm is a copy of its run folder with ``seer.freeze_at`` set to
T_f in the copy's ``config.yaml``, resumed (identical up to T_f); the full-buffer arms can be
taken from the Atari page's record::

    python examples/seer_atari.py env.name=RoadRunner seed=0 replay_buffer.size=20000 \
        seer.freeze_at=100000000 checkpoint.interval=50000 logger.output_dir=runs/capped/nofreeze
    cp -r runs/capped/nofreeze/<run> runs/capped/seer/   # after its checkpoint at 50,000 steps
    # edit runs/capped/seer/<run>/config.yaml: seer.freeze_at: 50000, then
    python examples/seer_atari.py env.name=RoadRunner seed=0 replay_buffer.size=20000 \
        seer.freeze_at=50000 checkpoint.interval=50000 resume=runs/capped/seer/<run>
    python -m seer_benchmarks.parity_seer runs/capped --recipe atari_capped \
        --import-runs docs/benchmarks/seer_parity.json --import-select RoadRunner:0

Transfer (``--recipe atari_transfer``): a CNN frozen by a capped SEER run (saved with
``seer.save_encoder=runs/roadrunner_cnn_50k.pt``), loaded and frozen from step 0 on another game
and on other seeds of its own game, compared over 50k steps with the Atari page's no-freeze runs
(an arm is named by the file of the CNN it loads)::

    python examples/seer_atari.py env.name=Breakout seed=0 collector.total_frames=50000 \
        seer.freeze_at=0 seer.load_encoder=runs/roadrunner_cnn_50k.pt \
        logger.output_dir=runs/transfer/breakout
    python examples/seer_atari.py env.name=RoadRunner seed=1 collector.total_frames=50000 \
        seer.freeze_at=0 seer.load_encoder=runs/roadrunner_cnn_50k.pt \
        logger.output_dir=runs/transfer/roadrunner_s1   # and seed=2
    # the same with the CNNs of seeds 1 and 2 (taken from their runs' checkpoints):
    # roadrunner_s2_cnn_50k.pt on Breakout seed 0, roadrunner_s1_cnn_50k.pt on RoadRunner seed 0
    python -m seer_benchmarks.parity_seer runs/transfer --recipe atari_transfer --max-steps 50000 \
        --import-runs docs/benchmarks/seer_parity.json --import-select "Breakout:0:no freeze" \
        --import-select "RoadRunner:0:no freeze" --import-select "RoadRunner:1:no freeze" \
        --import-select "RoadRunner:2:no freeze"

DMC from pixels (``examples/seer_dmc.py``, 12,500 agent steps = 100k environment steps at
action repeat 8)::

    python examples/seer_dmc.py -m collector.total_frames=12500 seer.freeze_at=2500,100000000 \
        optim.autocast=bf16 loss.curl=false seed=0,1,2 logger.output_dir=runs/parity_seer_dmc/s
    # ablation: the same freeze, pixel replay kept (a fresh crop per sample, no latents)
    python examples/seer_dmc.py collector.total_frames=12500 seer.freeze_at=2500 \
        optim.autocast=bf16 loss.curl=false seer.latent_replay=false seed=0 \
        logger.output_dir=runs/parity_seer_dmc/s
    python -m seer_benchmarks.parity_seer runs/parity_seer_dmc --recipe dmc

DMC with the freeze after half the run (``--recipe dmc_late``): the no-freeze run stops at
6,250 agent steps (its checkpoint); the SEER arm is a copy of its folder with
``seer.freeze_at: 6250`` in the copy's ``config.yaml``, resumed to 12,500 steps; the no-freeze
run is resumed to 12,500 steps (both identical up to the freeze)::

    python examples/seer_dmc.py env.name=cartpole_swingup seed=0 loss.curl=false \
        optim.autocast=bf16 seer.freeze_at=100000000 seer.record_trajectory=true \
        checkpoint.interval=1250 collector.total_frames=6250 \
        logger.output_dir=runs/dmc_late/nofreeze
    cp -r runs/dmc_late/nofreeze/<run> runs/dmc_late/seer/   # edit its config.yaml as above
    python examples/seer_dmc.py ... seer.freeze_at=6250 collector.total_frames=12500 \
        resume=runs/dmc_late/seer/<run>
    python examples/seer_dmc.py ... collector.total_frames=12500 \
        resume=runs/dmc_late/nofreeze/<run>
    python -m seer_benchmarks.parity_seer runs/dmc_late --recipe dmc_late

Each run folder holds its ``config.yaml``, ``report.json`` and the TorchRL logger's CSV files.
The page (``docs/benchmarks/seer_parity.md`` for Atari, ``seer_parity_dmc.md`` for DMC) reports,
per run, the training return at the end of the run, the learner updates before and after the
freeze and their median times, and per task the mean over seeds of each arm (one arm per freeze
step).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from seer_benchmarks.curves import Curve, bin_curve, plot_mean_band, read_scalar_csv
from seer_benchmarks.harness import DOCS_DIR, BenchmarkReport
from torchrl_seer.envs import PLANET_ACTION_REPEAT, split_dmc_task

#: Returns at the end of a run are the mean over episodes finished in this last share of it.
FINAL_SHARE = 0.1
NO_FREEZE = "no freeze"


AUTO = "SEER T_f=auto"
#: Arm label of a run that starts from a CNN saved by another run (transfer).
TRANSFERRED = "transferred CNN"
#: Separates an arm from the pixel buffer capacity it names.
PIXEL_BUFFER = ", pixel buffer "
#: Arm label of the ablation that freezes the encoder but keeps pixel replay (no latents).
FREEZE_ONLY = "freeze, pixel replay"


@dataclass(frozen=True)
class RecipePage:
    """What differs between the Atari and the DMC parity pages."""

    page: str
    title: str
    description: str
    bin_frames: int
    window_frames: int
    #: the recipe's default pixel buffer; other capacities are named in the arm (None: always)
    default_pixel_capacity: int | None
    #: the recipe whose run folders the page reads
    recipe: str


RECIPES = {
    "atari": RecipePage(
        page="seer_parity",
        title="SEER: returns parity on Atari against the same agent without a freeze (CPU)",
        description=(
            "DQN with the data-efficient CNN from `examples/seer_atari.py` at its defaults "
            "(100k agent steps = 400k frames, replay ratio 1, 3-step returns, pixel replay of "
            "100k transitions). The SEER arm freezes the lower CNN at T_f and continues on "
            "latent replay grown to the pixel buffer's memory budget; the no-freeze arm is the "
            "same run with T_f beyond the end. Returns are training-episode returns "
            "(epsilon-greedy, epsilon 0.01 after 20k steps): the final return averages the "
            f"episodes ending in the last {FINAL_SHARE:.0%} of each run's frames, the "
            "second-half return those ending in its second half. Before T_f the two arms of "
            "one seed are the same run (same seed, deterministic), which the curves show. "
            "Learner seconds = updates x median update time, per phase."
        ),
        bin_frames=20_000,
        window_frames=40_000,
        default_pixel_capacity=100_000,
        recipe="atari",
    ),
    "atari_capped": RecipePage(
        page="seer_capped_buffer",
        title="SEER on Atari with a pixel buffer smaller than the run: does the grown latent "
        "buffer help? (CPU)",
        description=(
            "DQN with the data-efficient CNN from `examples/seer_atari.py` (100k agent steps = "
            "400k frames, replay ratio 1, 3-step returns), with a pixel buffer that holds only "
            "part of the run. SEER freezes the lower CNN at T_f and migrates the buffer to fp32 "
            "latents (the recipe's default) grown to the pixel buffer's memory budget, so after "
            "the freeze it "
            "keeps transitions the capped pixel buffer has to overwrite. Arms: SEER with the "
            "capped pixel buffer, the same agent with the capped pixel buffer and no freeze, and "
            "the full 100k pixel buffer (with and without the freeze). The SEER arm is the "
            "no-freeze run of the same seed continued from its checkpoint at T_f with the freeze "
            "(identical up to T_f). Returns are training-episode returns (epsilon-greedy, "
            f"epsilon 0.01 after 20k steps); final return: episodes ending in the last "
            f"{FINAL_SHARE:.0%} of the run's frames. Learner seconds = updates x median update "
            "time, per phase."
        ),
        bin_frames=20_000,
        window_frames=40_000,
        default_pixel_capacity=None,
        recipe="atari",
    ),
    "atari_transfer": RecipePage(
        page="seer_transfer",
        title="SEER transfer on Atari: a CNN frozen by one run, reused from step 0 on another "
        "game and on other seeds of its own (CPU)",
        description=(
            "DQN from `examples/seer_atari.py`. A transferred arm loads the data-efficient CNN "
            "that a capped-buffer SEER run froze on RoadRunner at 50k steps (the arm names the "
            "file: `roadrunner_cnn_50k` from seed 0, `roadrunner_s1_cnn_50k` and "
            "`roadrunner_s2_cnn_50k` from seeds 1 and 2) and starts its task with "
            "`seer.freeze_at=0 seer.load_encoder=...`: the buffer stores 576-float latents from "
            "the first transition and only the Q head learns. Targets: Breakout (another game) "
            "and RoadRunner with other seeds than the CNN's (the same game: a control that "
            "separates what the features carry across games from what freezing from step 0 "
            "costs). The from-scratch "
            "arm is the no-freeze run of the same task and seed on the Atari parity page (same "
            "settings, imported). Both are compared over the transferred run's length: final "
            f"return = episodes ending in its last {FINAL_SHARE:.0%}; the median update times "
            "say what the learner pays per update."
        ),
        bin_frames=20_000,
        window_frames=40_000,
        default_pixel_capacity=100_000,
        recipe="atari",
    ),
    "dmc": RecipePage(
        page="seer_parity_dmc",
        title="SEER: returns parity on DMC from pixels against the same agent without a freeze "
        "(CPU)",
        description=(
            "SAC from pixels with the CURL/SAC-AE encoder from `examples/seer_dmc.py`: 100x100 "
            "renders, 3 stacked frames, random 84x84 crops for learning, batch 128, hidden "
            "1024, pixel replay of 5,000 transitions, learning from 1,000 steps, one update per "
            "agent step, 12,500 agent steps = 100k environment steps at action repeat 8. The "
            "SEER arm freezes the whole encoder at T_f and continues on latent replay (K=4 "
            "random-crop latents per observation) grown to the pixel buffer's memory budget; "
            "the no-freeze arm is the same run with T_f beyond the end. The flags of each run "
            "(e.g. `optim.autocast=bf16`, `loss.curl=false`) are in its `report.json`. Returns are "
            "training-episode returns (1,000 environment steps each, actions sampled from the "
            f"policy): the final return averages the episodes ending in the last "
            f"{FINAL_SHARE:.0%} of each run's environment steps, the second-half return those "
            "ending in its second half. Learner seconds = updates x median update time, per "
            "phase."
        ),
        bin_frames=5_000,
        window_frames=10_000,
        default_pixel_capacity=5_000,
        recipe="dmc",
    ),
    "dmc_late": RecipePage(
        page="seer_late_freeze_dmc",
        title="SEER on DMC from pixels with the freeze after half the run (CPU)",
        description=(
            "SAC from pixels with the CURL/SAC-AE encoder from `examples/seer_dmc.py` at the "
            "settings of the DMC parity page (100x100 renders, 3 stacked frames, random 84x84 "
            "crops, batch 128, hidden 1024, pixel replay of 5,000 transitions, learning from "
            "1,000 steps, one update per agent step, 12,500 agent steps = 100k environment "
            "steps at action repeat 8, `loss.curl=false`, the learner's forward passes in bf16 "
            "autocast: `optim.autocast=bf16`). The SEER arm freezes "
            "the whole encoder at half the run (6,250 agent steps = 50k environment steps) and "
            "continues on latent replay (K=4 random-crop latents) grown to the pixel buffer's "
            "memory budget; it is the no-freeze run of the same seed continued from its "
            "checkpoint at the freeze step (identical before it). Returns are training-episode "
            "returns (1,000 environment steps each, actions sampled from the policy): final "
            f"return = episodes ending in the last {FINAL_SHARE:.0%} of the run's environment "
            "steps. Learner seconds = updates x median update time, per phase."
        ),
        bin_frames=5_000,
        window_frames=10_000,
        default_pixel_capacity=5_000,
        recipe="dmc",
    ),
}


def frames_per_step(config: dict[str, Any]) -> int:
    """Environment frames per agent step of a recipe run: 4 on Atari, the action repeat on DMC."""
    if "game" in config:
        return 4
    return config.get("action_repeat") or PLANET_ACTION_REPEAT.get(task_name(config), 1)


def task_name(config: dict[str, Any]) -> str:
    """The Atari game, or ``domain_task`` on DMC."""
    return config.get("game") or f"{config['domain']}_{config['task']}"


def arm_order(arm: str) -> tuple[int, int, int, int]:
    """Sort key: fixed freeze steps (SEER, then the freeze-only ablation), auto, no freeze.

    Arms that name a pixel buffer capacity are ordered by it next.
    """
    base, _, capacity = arm.partition(PIXEL_BUFFER)
    size = int(capacity.replace(",", "")) if capacity else 0
    if base in (AUTO, NO_FREEZE):
        return (1 if base == AUTO else 2, 0, 0, size)
    return (0, int(base.split("=")[1].replace(",", "")), int(base.startswith(FREEZE_ONLY)), size)


def arm_name(
    config: dict[str, Any], freeze: dict[str, Any], default_pixel_capacity: int | None = None
) -> str:
    """The arm of a run: ``freeze_at="auto"``, its fixed freeze step, or no freeze.

    A run with ``--no-latent-replay`` (the encoder frozen, pixel replay kept) is its own arm, and
    so is a run that loads a saved CNN (transfer), named by the CNN's file.
    A pixel buffer capacity other than ``default_pixel_capacity`` is named in the arm (always
    when that is ``None``).
    """
    if config.get("load_encoder"):  # named by the file of the CNN it loads
        source = Path(config["load_encoder"]).stem
        name = f"{TRANSFERRED} {source} T_f={freeze.get('freeze_step', 0):,}"
    elif config["freeze_at"] == "auto":
        name = AUTO
    elif not freeze:
        name = NO_FREEZE
    else:
        kind = "SEER" if config.get("latent_replay", True) else FREEZE_ONLY
        name = f"{kind} T_f={freeze['freeze_step']:,}"
    capacity = config.get("pixel_capacity")
    if capacity is not None and capacity != default_pixel_capacity:
        name += f"{PIXEL_BUFFER}{capacity:,}"
    return name


def _float(rows: dict[str, str], key: str) -> float:
    try:
        return float(rows[key].replace(",", ""))
    except (KeyError, ValueError):
        return math.nan


def flat_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The settings the page reads, from a SEER recipe's (nested) configuration."""
    flat = {
        "seed": cfg["seed"],
        "total_steps": cfg["collector"]["total_frames"],
        "freeze_at": cfg["seer"]["freeze_at"],
        "latent_replay": cfg["seer"].get("latent_replay", True),
        "pixel_capacity": cfg["replay_buffer"]["size"],
        "load_encoder": cfg["seer"].get("load_encoder"),
    }
    if "exploration" in cfg:  # seer_atari
        flat["game"] = cfg["env"]["name"]
    else:  # seer_dmc
        flat["domain"], flat["task"] = split_dmc_task(cfg["env"]["name"])
        flat["action_repeat"] = cfg["env"]["action_repeat"]
    return flat


def read_run(report_path: Path, default_pixel_capacity: int | None = None) -> dict[str, Any]:
    """Reads one recipe run: its report and its episode returns.

    Args:
        report_path (Path): the run's ``report.json`` (written by the SEER recipes).
        default_pixel_capacity (int, optional): see :func:`arm_name`.

    Returns:
        A dict with ``task``, ``arm``, ``seed``, ``curve`` (frames, episode return), ``final``
        (mean return over the last :data:`FINAL_SHARE` of the frames), ``second_half`` (mean over
        the second half of the frames), update counts and median
        update times, and the estimated learner seconds (updates x median time, per phase).
    """
    report = json.loads(report_path.read_text())
    config, freeze = flat_config(report["config"]), report["freeze"]
    rows = {label: value for label, value in report["tables"][0]["rows"]}
    # the report's episode returns are checkpointed with the run; older reports lack them
    curve: Curve = [(int(frame), float(ret)) for frame, ret in report.get("episode_returns", [])]
    csv_files = list(report_path.parent.glob("*/scalars/episode_return.csv"))
    if not curve and csv_files:
        curve = read_scalar_csv(csv_files[0])
    last = frames_per_step(config) * config["total_steps"]
    tail = [ret for step, ret in curve if step > (1 - FINAL_SHARE) * last]
    second_half = [ret for step, ret in curve if step > last / 2]
    updates_before, updates_after = (
        int(n) for n in rows["learner updates before / after freeze"].split(" / ")
    )
    ms_before = _float(rows, "median update time before freeze (ms)")
    ms_after = _float(rows, "median update time after freeze (ms)")
    learner_seconds = 1e-3 * (
        updates_before * ms_before + (updates_after * ms_after if updates_after else 0.0)
    )
    return {
        "task": task_name(config),
        "arm": arm_name(config, freeze, default_pixel_capacity),
        "seed": config["seed"],
        "freeze_step": freeze.get("freeze_step"),
        "freeze_frame": freeze.get("freeze_frame"),
        "frames_per_step": frames_per_step(config),
        "curve": curve,
        "episodes": len(curve),
        "final": statistics.mean(tail) if tail else math.nan,
        "second_half": statistics.mean(second_half) if second_half else math.nan,
        "updates_before": updates_before,
        "updates_after": updates_after,
        "ms_before": ms_before,
        "ms_after": ms_after,
        "learner_seconds": learner_seconds,
        "latent_capacity": freeze.get("latent_capacity"),
    }


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def _rounded(value: float) -> int | str:
    return "-" if math.isnan(value) else round(value)


def truncated(run: dict[str, Any], max_steps: int) -> dict[str, Any]:
    """A run's returns over its first ``max_steps`` agent steps (Atari: 4 frames per step).

    The final and second-half returns are recomputed over that length; learner seconds, which
    cover the whole run, become ``nan``.
    """
    last = run["frames_per_step"] * max_steps
    curve = [(frame, ret) for frame, ret in run["curve"] if frame <= last]
    tail = [ret for frame, ret in curve if frame > (1 - FINAL_SHARE) * last]
    second_half = [ret for frame, ret in curve if frame > last / 2]
    return dict(
        run,
        curve=curve,
        episodes=len(curve),
        final=statistics.mean(tail) if tail else math.nan,
        second_half=statistics.mean(second_half) if second_half else math.nan,
        learner_seconds=math.nan,
    )


def imported_runs(
    record: Path, select: list[str], capacity: int, recipe: RecipePage
) -> list[dict[str, Any]]:
    """Runs of an earlier parity page (its JSON ``raw`` record), for arms not run again.

    Args:
        record (Path): the page's JSON record.
        select (list of str): ``TASK:SEED`` or ``TASK:SEED:ARM`` of the runs to take.
        capacity (int): their pixel buffer capacity, named in the arm as :func:`arm_name` does
            (unless the arm already names one).
        recipe (RecipePage): the page being written.
    """
    wanted = [item.split(":", 2) for item in select]
    runs = []
    for run in json.loads(record.read_text())["raw"]["runs"]:
        if any(
            run["task"] == want[0]
            and run["seed"] == int(want[1])
            and (len(want) == 2 or run["arm"] == want[2])
            for want in wanted
        ):
            per_step = 4 if recipe.recipe == "atari" else PLANET_ACTION_REPEAT.get(run["task"], 1)
            run = dict(run, imported_from=record.name, frames_per_step=per_step)
            # runs of a page that names buffers in its arms (re-imported) keep their name
            if capacity != recipe.default_pixel_capacity and PIXEL_BUFFER not in run["arm"]:
                run["arm"] = f"{run['arm']}{PIXEL_BUFFER}{capacity:,}"
            runs.append(run)
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding one sub-folder per recipe run")
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="atari")
    parser.add_argument("--bin-frames", type=int, default=None, help="curve grid spacing")
    parser.add_argument("--window-frames", type=int, default=None, help="curve averaging")
    parser.add_argument("--note", action="append", default=[], help="a paragraph for the page")
    parser.add_argument(
        "--import-runs",
        type=Path,
        default=None,
        help="a parity page's JSON record whose runs are added (with --import-select)",
    )
    parser.add_argument(
        "--import-select",
        action="append",
        default=[],
        help="TASK:SEED[:ARM] of imported runs to add (repeatable)",
    )
    parser.add_argument(
        "--import-capacity", type=int, default=100_000, help="pixel buffer of imported runs"
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="compare every run over its first N agent steps (learner seconds are then left out)",
    )
    args = parser.parse_args(argv)
    recipe = RECIPES[args.recipe]
    bin_frames = args.bin_frames or recipe.bin_frames
    window_frames = args.window_frames or recipe.window_frames
    pattern = f"**/seer_{recipe.recipe}_*/report.json"
    runs = [
        read_run(path, recipe.default_pixel_capacity) for path in sorted(args.root.glob(pattern))
    ]
    if args.import_runs is not None:
        runs += imported_runs(args.import_runs, args.import_select, args.import_capacity, recipe)
    if not runs:
        raise SystemExit(f"no SEER recipe runs ({pattern}) under {args.root}")
    if args.max_steps is not None:
        runs = [truncated(run, args.max_steps) for run in runs]
    runs.sort(key=lambda r: (r["task"], arm_order(r["arm"]), r["seed"]))
    tasks = sorted({r["task"] for r in runs})
    arms = sorted({r["arm"] for r in runs}, key=arm_order)
    palette = itertools.cycle(plt.get_cmap("tab10").colors)  # as many arms as a page has
    colors = {arm: "black" if arm == NO_FREEZE else next(palette) for arm in arms}

    report = BenchmarkReport(
        recipe.page,
        recipe.title,
        description=f"{recipe.description} The recipe runs are listed in the docstring of "
        "`seer_benchmarks/parity_seer.py` (a long experiment, not part of `make bench`).",
        command=f"python -m seer_benchmarks.parity_seer <runs folder> --recipe {args.recipe}",
    )
    report.add_table(
        "Every run",
        [
            "task",
            "arm",
            "seed",
            "T_f",
            "episodes",
            "final return",
            "mean return, 2nd half",
            "updates before / after freeze",
            "median ms before / after",
            "learner seconds",
            "latent capacity",
        ],
        [
            [
                r["task"],
                r["arm"],
                r["seed"],
                "-" if r["freeze_step"] is None else r["freeze_step"],
                r["episodes"],
                round(r["final"], 1),
                round(r["second_half"], 1),
                f"{r['updates_before']} / {r['updates_after']}",
                f"{_ms(r['ms_before'])} / {_ms(r['ms_after']) if r['updates_after'] else '-'}",
                _rounded(r["learner_seconds"]),
                r["latent_capacity"] or "-",
            ]
            for r in runs
        ],
    )
    summary = []
    by_task_arm: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_task_arm[(r["task"], r["arm"])].append(r)
    for task in tasks:
        for arm in arms:
            group = by_task_arm.get((task, arm), [])
            if not group:
                continue
            finals = [r["final"] for r in group]
            summary.append(
                [
                    task,
                    arm,
                    len(group),
                    ", ".join(f"{f:.1f}" for f in finals),
                    round(statistics.mean(finals), 1),
                    # a run with no episode in its final window (still going) has no final return
                    round(statistics.stdev(finals), 1)
                    if len(finals) > 1 and not any(math.isnan(f) for f in finals)
                    else "-",
                    _rounded(statistics.mean(r["learner_seconds"] for r in group)),
                ]
            )
    report.add_table(
        "Per task: final training return over seeds",
        ["task", "arm", "seeds", "per seed", "mean", "std", "mean learner seconds"],
        summary,
    )

    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for arm in arms:
            group = by_task_arm.get((task, arm), [])
            if not group:
                continue
            binned = {
                str(r["seed"]): bin_curve(r["curve"], bin_width=bin_frames, window=window_frames)
                for r in group
            }
            plot_mean_band(ax, binned, label=arm, color=colors[arm])
        for frame in {r["freeze_frame"] for r in runs if r["task"] == task and r["freeze_frame"]}:
            ax.axvline(frame, color="grey", ls="--", lw=1)
        ax.set(
            xlabel="environment frames",
            ylabel=f"training return (mean over {window_frames:,} frames)",
            title=f"{task}: SEER vs no freeze (dashed: T_f)",
        )
        ax.legend()
    fig.tight_layout()
    figure = DOCS_DIR / f"{recipe.page}.png"
    fig.savefig(figure, dpi=90)
    report.add_figure(figure, "training return, mean and min-max over seeds")
    for note in args.note:
        report.add_note(note)
    report.raw["runs"] = [{k: v for k, v in r.items()} for r in runs]
    print(report.write())


if __name__ == "__main__":
    main()
