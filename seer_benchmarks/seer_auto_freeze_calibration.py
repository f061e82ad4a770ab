r"""Calibrates ``freeze_at="auto"`` on the encoder trajectory of a real SEER recipe run.

A long experiment, not part of ``make bench``. Run a SEER recipe once with the trajectory
recorded (the frozen layers' parameters at every criterion check; no freeze, so the whole run is
seen)::

    python examples/seer_atari.py env.name=RoadRunner seed=0 seer.freeze_at=100000000 \
        seer.record_trajectory=true seer.auto_interval=1000 logger.output_dir=runs/auto
    python -m seer_benchmarks.seer_auto_freeze_calibration runs/auto/<run folder>

Runs of ``examples/seer_atari.py`` write ``docs/benchmarks/seer_auto_freeze_calibration.*``,
runs of ``examples/seer_dmc.py`` (whose whole encoder freezes; the probe is the centre 84x84
crop of its 100x100 renders) ``seer_auto_freeze_calibration_dmc.*``.

From the recorded snapshots it computes, at every check, both statistics of
:class:`~torchrl_seer.trainers.ParameterConvergence` (``relative_change`` and ``drift_ratio``
over several windows) and the **latent drift to the final encoder**,
``||f_t(x) - f_T(x)|| / ||f_T(x)||`` on a fixed probe batch of the game's observations: the error
that freezing at ``t`` bakes into the stored latents relative to training on. Each criterion is
replayed offline with the class itself (so it fires exactly where it would have fired online).

Calibration rule (fixed before the run): a reference freeze step is chosen (``--safe-step``), the
latest step known to cost no return on this game where one is known (50,000 of 100,000 steps on
RoadRunner, three seeds, in ``seer_parity.md``); where none is known, the latest step tested (on
DMC cartpole_swingup 6,250 of 12,500 agent steps, which costs return: ``seer_late_freeze_dmc.md``),
so that the page shows what a criterion firing there would have seen. A statistic's calibrated
bound is the largest value it took over the ``patience`` checks ending at that step, so that the
calibrated criterion fires there on this run;
the page then reports where each bound fires, and how the latent drift to the final encoder looks at
those steps. Held-out runs (``--validate <run folder>``, e.g. another seed recorded the same way)
are not used for calibration: the page reports where each calibrated bound fires on them (a run
of another game checks whether the bound carries over to it; its latent drift is measured on
that game's observations; held-out runs of the other recipe are refused).
Criteria are replayed from the step learning starts (``optim.learn_start``) and, with
``--earliest-step N``, also with checks before ``N`` not counted (the recipe's
``seer.auto_min_step``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seer_benchmarks.harness import DOCS_DIR, BenchmarkReport
from torchrl_seer.modules import (
    CenterCrop,
    CURLPixelEncoder,
    DataEfficientAtariEncoder,
    SplitEncoder,
)
from torchrl_seer.trainers import ParameterConvergence

PAGE = "seer_auto_freeze_calibration"
WINDOWS = (5, 10, 20)
PATIENCE = 3


@dataclass
class RecordedRun:
    """The encoder trajectory of one recipe run and the settings the criteria need."""

    name: str
    recipe: str
    game: str
    seed: int
    learn_start: int
    total_steps: int
    steps: list[int]
    snapshots: torch.Tensor

    @classmethod
    def load(cls, run_dir: Path) -> RecordedRun:
        """Reads ``encoder_trajectory.pt`` and the configuration from a run folder."""
        trajectory = torch.load(run_dir / "encoder_trajectory.pt")
        config = json.loads((run_dir / "report.json").read_text())["config"]
        exp_name = json.loads((run_dir / "run.json").read_text())["exp_name"]
        recipe = next((name for name in RECIPES if exp_name.startswith(f"{name}_")), None)
        if recipe is None:
            raise ValueError(
                f"{run_dir} is a run of {exp_name!r}; expected a run of one of {list(RECIPES)}."
            )
        return cls(
            name=run_dir.name,
            recipe=recipe,
            game=config["env"]["name"],
            seed=config["seed"],
            learn_start=config["optim"]["learn_start"],
            total_steps=config["collector"]["total_frames"],
            steps=list(trajectory["steps"]),
            snapshots=trajectory["parameters"],
        )

    def replay(self, *, earliest_step: int = 0, **kwargs: Any) -> ParameterConvergence:
        """Replays a criterion (``ParameterConvergence`` keyword arguments) on the run.

        Checks before learning starts, or before ``earliest_step``, are not counted.
        """
        min_step = max(self.learn_start, earliest_step)
        return replay_criterion(self.steps, self.snapshots, min_step=min_step, **kwargs)


def replay_criterion(
    steps: list[int], snapshots: torch.Tensor, *, min_step: int, **kwargs: Any
) -> ParameterConvergence:
    """Feeds recorded snapshots through a fresh :class:`ParameterConvergence`."""
    param = nn.Parameter(snapshots[0].clone(), requires_grad=False)
    criterion = ParameterConvergence(
        [param], check_interval=1, patience=PATIENCE, min_step=min_step, **kwargs
    )
    for step, snapshot in zip(steps, snapshots, strict=True):
        param.data.copy_(snapshot)
        criterion.update(step)
    return criterion


def atari_probe(game: str, num: int, seed: int) -> torch.Tensor:
    """Stacked observations of an Atari ``game`` under a uniform random policy."""
    from torchrl_seer.envs import make_atari_env

    return _random_rollout_pixels(make_atari_env(game, seed=seed), num, seed)


def dmc_probe(task: str, num: int, seed: int) -> torch.Tensor:
    """Centre 84x84 crops of a DMC ``task``'s stacked 100x100 renders under random actions."""
    from torchrl_seer.envs import PLANET_ACTION_REPEAT, make_dmc_env, split_dmc_task

    domain, name = split_dmc_task(task)
    env = make_dmc_env(
        domain, name, size=100, frame_stack=3, action_repeat=PLANET_ACTION_REPEAT.get(task, 1),
        seed=seed,
    )  # fmt: skip
    return CenterCrop(84)(_random_rollout_pixels(env, num, seed))


def _random_rollout_pixels(env: Any, num: int, seed: int) -> torch.Tensor:
    with torch.random.fork_rng():  # the random actions too: the same probe on every run
        torch.manual_seed(seed)
        rollout = env.rollout(num, break_when_any_done=False)
    env.close()
    return rollout["pixels"]


@dataclass(frozen=True)
class RecipeEncoder:
    """How the encoder a recipe records is rebuilt and probed, and the page its runs write."""

    script: str
    part: str  # what the frozen layers are called on the page
    encoder: Callable[[], SplitEncoder]
    probe: Callable[[str, int, int], torch.Tensor]
    page: str


RECIPES = {
    "seer_atari": RecipeEncoder(
        "examples/seer_atari.py", "CNN", lambda: DataEfficientAtariEncoder(4), atari_probe, PAGE
    ),
    "seer_dmc": RecipeEncoder(
        "examples/seer_dmc.py", "encoder", lambda: CURLPixelEncoder(9), dmc_probe, f"{PAGE}_dmc"
    ),
}


def probe_batch(recipe: str, game: str, num: int, seed: int) -> torch.Tensor:
    """The probe batch of a recipe's ``game``: observations under a uniform random policy."""
    return RECIPES[recipe].probe(game, num, seed)


def latent_drift(recipe: str, snapshots: torch.Tensor, probe: torch.Tensor) -> list[float]:
    """Relative distance of each snapshot's latents on ``probe`` to the final snapshot's."""
    encoder = RECIPES[recipe].encoder()
    params = list(encoder.frozen_part.parameters())
    latents = []
    with torch.no_grad():
        for snapshot in snapshots:
            nn.utils.vector_to_parameters(snapshot, params)
            latents.append(encoder.frozen_part_forward(probe).flatten(1))
    final = latents[-1]
    return [float((z - final).norm() / final.norm()) for z in latents]


def _step(step: int | None) -> str:
    return "never" if step is None else f"{step:,}"


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def calibrated_bound(history: list[tuple[int, float]], safe_step: int) -> float | None:
    """The largest value over the ``PATIENCE`` checks ending at ``safe_step``."""
    values = [value for step, value in history if step <= safe_step][-PATIENCE:]
    return max(values) if len(values) == PATIENCE else None


def _plot(
    out: Path,
    steps: list[int],
    series: dict[str, list[tuple[int, float]]],
    drift: list[float],
    safe: int,
    *,
    held_out: dict[str, dict[str, list[tuple[int, float]]]],
    part: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10.5, 6), sharex=True)
    for label, history in series.items():
        line = top.plot([s for s, _ in history], [v for _, v in history], label=label)[0]
        for name, histories in held_out.items():
            other = histories[label]
            top.plot(
                [s for s, _ in other], [v for _, v in other], color=line.get_color(),
                linestyle=":", label=f"{label} ({name}, held out)",
            )  # fmt: skip
    top.set_yscale("log")
    top.set_ylabel("statistic")
    top.axvline(safe, color="grey", linestyle="--", linewidth=1)
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    bottom.plot(steps, drift, color="black")
    bottom.axvline(safe, color="grey", linestyle="--", linewidth=1, label="reference freeze step")
    bottom.set_ylabel(f"latent drift to final {part}")
    bottom.set_xlabel("agent steps")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def criteria_to_replay() -> dict[str, dict[str, Any]]:
    """The criteria compared on the page, by label."""
    criteria: dict[str, dict[str, Any]] = {"relative_change": {"statistic": "relative_change"}}
    for window in WINDOWS:
        criteria[f"drift_ratio, k={window}"] = {"statistic": "drift_ratio", "window": window}
    return criteria


def calibrate(
    run_dir: Path,
    *,
    safe_step: int,
    probe_size: int,
    out_dir: Path,
    validate: tuple[Path, ...] = (),
    earliest_step: int | None = None,
) -> BenchmarkReport:
    """Computes the statistics, the calibrated bounds and their firing steps; writes the page."""
    run = RecordedRun.load(run_dir)
    held_out = [RecordedRun.load(path) for path in validate]
    for other in held_out:
        if other.recipe != run.recipe:
            raise ValueError(
                f"held-out run {other.name} is a {other.recipe} run; the calibration run is a "
                f"{run.recipe} run (a bound is calibrated for one recipe's encoder)."
            )
    recipe = RECIPES[run.recipe]
    criteria = criteria_to_replay()
    defaults = {label: run.replay(**kwargs) for label, kwargs in criteria.items()}
    histories = {label: criterion.history for label, criterion in defaults.items()}
    probes: dict[str, torch.Tensor] = {}  # one probe batch per game: drift on its own frames
    for game in dict.fromkeys([run.game, *(other.game for other in held_out)]):
        probes[game] = probe_batch(run.recipe, game, probe_size, seed=12345)
    drift = latent_drift(run.recipe, run.snapshots, probes[run.game])
    drift_at = dict(zip(run.steps, drift, strict=True))

    rows, raw_bounds = [], {}
    for label, kwargs in criteria.items():
        default = defaults[label]
        bound = calibrated_bound(histories[label], safe_step)
        fired = None if bound is None else run.replay(threshold=bound, **kwargs).fired_at
        theory_cell = "-"
        theory = None
        if kwargs["statistic"] == "drift_ratio":
            theory_bound = 2 / kwargs["window"] ** 0.5
            theory = run.replay(threshold=theory_bound, **kwargs).fired_at
            theory_cell = f"{theory_bound:.3g}: {_step(theory)}"
        values = [v for _, v in histories[label]]
        late = _fires_late(run, bound, kwargs, earliest_step)
        raw_bounds[label] = {
            "bound": bound,
            "fires_at": fired,
            "fires_at_from_earliest_step": late,
            "default_fires_at": default.fired_at,
            "theory_fires_at": theory,
        }
        rows.append([
            label,
            f"{min(values):.3g} - {max(values):.3g}" if values else "-",
            f"{default.threshold:g}: {_step(default.fired_at)}",
            theory_cell,
            "-" if bound is None else f"{bound:.3g}",
            _step(fired),
            "-" if fired is None else f"{drift_at[fired]:.3f}",
            *([] if earliest_step is None else [_step(late)]),
        ])  # fmt: skip
    late_header = [] if earliest_step is None else [f"calibrated, from step {earliest_step:,}"]

    report = BenchmarkReport(
        recipe.page,
        f"SEER: calibrating freeze_at=auto on a real run ({run.game})",
        description=(
            f"The {recipe.part} of `{recipe.script}` ({run.game}, seed {run.seed}, "
            f"{run.total_steps:,} agent steps, no freeze) was snapshotted every "
            f"{run.steps[1] - run.steps[0]:,} agent steps (`seer.record_trajectory=true`). Each "
            "criterion of `ParameterConvergence` is replayed on those snapshots (patience "
            f"{PATIENCE}, earliest step {run.learn_start:,}); the latent drift to the final "
            f"{recipe.part} is measured on {probe_size} stacked observations of the game under a "
            "uniform random policy. Calibration: a statistic's bound is the largest value it "
            f"took over the {PATIENCE} checks ending at the reference freeze step ({safe_step:,}; "
            "what a freeze there costs in return is on the game's parity pages), so the "
            "calibrated criterion fires there on this run."
            + (
                f" Held out: {len(held_out)} run(s) recorded the same way, not used to calibrate."
                if held_out
                else ""
            )
        ),
        command=f"python -m seer_benchmarks.{PAGE} <run folder> --safe-step {safe_step}"
        + " --validate <run folder>" * len(held_out)
        + ("" if earliest_step is None else f" --earliest-step {earliest_step}"),
        out_dir=out_dir,
    )
    report.add_table(
        f"Where each criterion fires (calibration run, seed {run.seed})",
        ["statistic", "range over the run", "default bound: fires at", "bound 2/sqrt(k): fires at",
         "calibrated bound", "calibrated: fires at", "latent drift to final there",
         *late_header],
        rows,
    )  # fmt: skip
    raw_held_out = [
        validation_rows(
            other, criteria, raw_bounds, probes[other.game], earliest_step=earliest_step
        )
        for other in held_out
    ]
    if held_out:
        report.add_table(
            "Held-out runs: where the calibrated bounds fire",
            ["run", "steps recorded", "statistic", "calibrated bound", "fires at",
             "latent drift to the last snapshot there", "default bound: fires at",
             *late_header],
            [row for result in raw_held_out for row in result["rows"]],
        )  # fmt: skip
    every = max(1, len(run.steps) // 20)
    report.add_table(
        f"The statistics and the latent drift along the calibration run (seed {run.seed})",
        ["agent steps", *histories, "latent drift to final"],
        [
            [step, *[_cell(dict(h).get(step)) for h in histories.values()], f"{drift_at[step]:.3f}"]
            for step in run.steps[::every]
        ],
    )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    figure = out_dir / f"{recipe.page}.png"
    others = {f"{r['game']}, seed {r['seed']}": r["histories"] for r in raw_held_out}
    _plot(figure, run.steps, histories, drift, safe_step, held_out=others, part=recipe.part)
    report.add_figure(figure, "criterion statistics and latent drift along the run")
    report.raw = {
        "run": run.name,
        "steps": run.steps,
        "histories": histories,
        "latent_drift": drift,
        "bounds": raw_bounds,
        "safe_step": safe_step,
        "held_out": [{k: v for k, v in r.items() if k != "rows"} for r in raw_held_out],
    }
    return report


def validation_rows(
    run: RecordedRun,
    criteria: dict[str, dict[str, Any]],
    bounds: dict[str, dict[str, Any]],
    probe: torch.Tensor,
    *,
    earliest_step: int | None = None,
) -> dict[str, Any]:
    """Where each calibrated bound (and each default bound) fires on a held-out run.

    ``probe`` holds observations of the held-out run's own game.
    """
    drift_at = dict(zip(run.steps, latent_drift(run.recipe, run.snapshots, probe), strict=True))
    rows, fired_at, fired_late, histories = [], {}, {}, {}
    for label, kwargs in criteria.items():
        bound = bounds[label]["bound"]
        default = run.replay(**kwargs)
        histories[label] = default.history
        fired = None if bound is None else run.replay(threshold=bound, **kwargs).fired_at
        fired_at[label] = fired
        fired_late[label] = _fires_late(run, bound, kwargs, earliest_step)
        rows.append([
            f"{run.game}, seed {run.seed}", f"{run.steps[-1]:,} of {run.total_steps:,}", label,
            "-" if bound is None else f"{bound:.3g}", _step(fired),
            "-" if fired is None else f"{drift_at[fired]:.3f}",
            f"{default.threshold:g}: {_step(default.fired_at)}",
            *([] if earliest_step is None else [_step(fired_late[label])]),
        ])  # fmt: skip
    return {
        "run": run.name,
        "game": run.game,
        "seed": run.seed,
        "last_step": run.steps[-1],
        "fires_at": fired_at,
        "fires_at_from_earliest_step": fired_late,
        "histories": histories,
        "rows": rows,
    }


def _fires_late(
    run: RecordedRun, bound: float | None, kwargs: dict[str, Any], earliest_step: int | None
) -> int | None:
    """Where the calibrated bound fires with checks before ``earliest_step`` not counted."""
    if bound is None or earliest_step is None:
        return None
    return run.replay(threshold=bound, earliest_step=earliest_step, **kwargs).fired_at


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "run_dir", type=Path, help="a seer_atari or seer_dmc run folder with encoder_trajectory.pt"
    )
    parser.add_argument(
        "--safe-step",
        type=int,
        default=50_000,
        help="reference freeze step: the latest step known to cost no return, where one is known",
    )
    parser.add_argument("--probe-size", type=int, default=512)
    parser.add_argument(
        "--validate",
        type=Path,
        action="append",
        default=[],
        help="a held-out run folder (same recording); repeatable",
    )
    parser.add_argument(
        "--earliest-step",
        type=int,
        default=None,
        help="also replay the calibrated bounds with checks before this step not counted",
    )
    parser.add_argument(
        "--note", action="append", default=[], help="a paragraph for the page's notes"
    )
    args = parser.parse_args(argv)
    report = calibrate(
        args.run_dir,
        safe_step=args.safe_step,
        probe_size=args.probe_size,
        out_dir=DOCS_DIR,
        validate=tuple(args.validate),
        earliest_step=args.earliest_step,
    )
    for note in args.note:
        report.add_note(note)
    print(report.write())


if __name__ == "__main__":
    main()
