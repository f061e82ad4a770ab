r"""AcceRL with a distilled student for overlapped actors: is it shipped, and does it pay?

A long experiment, not part of ``make bench``. The IMPALA recipe (``examples/accerl_impala.py``)
with ``accerl.distill_width`` trains a small student policy in a background thread
(:class:`~torchrl_seer.collectors.AsyncDistiller`) and puts it, compressed like the starting
pipeline, at the top of the Monitor's ladder: the actors move to it only once its KL from the
learner's policy stays under the Monitor's recovery bound. Per seed, the compressed arm (with
the student) and fp32 actors in the same layout run back to back in one process; fp32 actors
in their own best layout (two workers on this machine, ``accerl_layouts.md``) run separately::

    python examples/accerl_impala.py accerl.compression=int8+trace accerl.distill_width=64 \
        accerl.distill_updates_per_batch=8 accerl.monitor_every=1 accerl.threshold=100 \
        network.width=2048 network.critic_width=64 env.envs_per_worker=1 collector.workers=1 \
        collector.overlap=true collector.total_frames=20480 collector.frames_per_batch=256 \
        accerl.ship_every=4 seed=<0, 1, 2> logger.output_dir=<root>/distill
    # the same without accerl.distill_updates_per_batch: an unpaced student (rows of its own)
    python examples/accerl_impala.py accerl.compression=none accerl.compare=false \
        accerl.monitor_every=1 accerl.threshold=100 network.width=2048 network.critic_width=64 \
        env.envs_per_worker=1 collector.workers=2 collector.overlap=true \
        collector.total_frames=20480 collector.frames_per_batch=256 accerl.ship_every=4 \
        seed=<0, 1, 2> logger.output_dir=<root>/fp32_best

then ``python -m seer_benchmarks.accerl_distillation <root>`` writes
``docs/benchmarks/accerl_distillation.md``: per run (student pace and seed), the student's KL
at every Monitor check against the recovery bound, the frames the student acted, the
distiller's updates and publications, and the wall time to the return threshold of each arm.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from seer_benchmarks.accerl_overlap import read_report
from seer_benchmarks.accerl_wall_time import final_return
from seer_benchmarks.harness import DOCS_DIR, BenchmarkReport
from torchrl_seer.collectors import CompressionMonitor
from torchrl_seer.trainers.helpers.accerl import time_to_threshold

# the recipe builds its Monitor with these defaults
_MONITOR_DEFAULTS = inspect.signature(CompressionMonitor).parameters
RECOVER_FRACTION = _MONITOR_DEFAULTS["recover_fraction"].default
RECOVER_PATIENCE = _MONITOR_DEFAULTS["recover_patience"].default


def student_kl(arm: dict[str, Any]) -> list[tuple[float, float, bool]]:
    """``(frames, KL of the student, acting)`` at every Monitor check of a distilling arm.

    The student is the ladder's top level (0): at level 1 the Monitor measures it as the
    more compressed candidate, at level 0 it is the acting policy.
    """
    points = []
    for entry in arm["monitor_history"]:
        level = entry["monitor/level"]
        if level == 0:
            points.append((entry["step"], entry["monitor/kl"], True))
        elif level == 1 and "monitor/kl_more_compressed" in entry:
            points.append((entry["step"], entry["monitor/kl_more_compressed"], False))
    return points


def student_frames(arm: dict[str, Any]) -> int:
    """Frames collected while the actors held the student (from the Monitor's level changes)."""
    total, since = 0, None
    for event in arm["monitor_events"]:
        if event["to"].startswith("distill") and since is None:
            since = event["step"]
        elif not event["to"].startswith("distill") and since is not None:
            total, since = total + event["step"] - since, None
    return total + (arm["frames"] - since if since is not None else 0)


def pace(report: dict[str, Any]) -> str:
    """The student's pace in a run: steps per learner batch, or ``"unpaced"``."""
    steps = report["config"]["accerl"].get("distill_updates_per_batch")
    return "unpaced" if steps is None else f"{steps} per batch"


def _time(arm: dict[str, Any], threshold: float) -> float | None:
    return time_to_threshold(arm["curve"], threshold)


def _cell(seconds: float | None) -> Any:
    return "not reached" if seconds is None else round(seconds, 1)


def seed_rows(distill: list[dict], best: dict[int, dict], threshold: float, bound: float):
    """The per-seed tables (a row per run), and the time ratios of each pace of the student."""
    student_rows, time_rows = [], []
    ratios: dict[str, list[float]] = {}
    for rep in distill:
        seed = rep["settings"]["seed"]
        compressed, same_layout = rep["runs"]
        kls = [kl for _, kl, _ in student_kl(compressed)]
        stats = compressed.get("distillation", {})
        student_rows.append([
            pace(rep), seed, stats.get("updates", "—"), stats.get("publications", "—"),
            len(kls), sum(kl < RECOVER_FRACTION * bound for kl in kls),
            round(statistics.median(kls), 4) if kls else "—",
            round(min(kls), 4) if kls else "—",
            f"{student_frames(compressed):,} of {compressed['frames']:,}",
        ])  # fmt: skip
        fp32_two = best.get(seed)
        times = [_time(compressed, threshold), _time(same_layout, threshold),
                 _time(fp32_two, threshold) if fp32_two else None]  # fmt: skip
        # fp32 in whichever of its layouts reached the threshold first on this seed
        fp32_reached = [t for t in times[1:] if t is not None]
        fp32_first = min(fp32_reached) if fp32_reached else None
        ratio = times[0] / fp32_first if times[0] is not None and fp32_first else None
        if ratio is not None:
            ratios.setdefault(pace(rep), []).append(ratio)
        same = times[0] / times[1] if times[0] is not None and times[1] else None
        time_rows.append([
            pace(rep), seed, *(_cell(t) for t in times), "—" if same is None else round(same, 2),
            "—" if ratio is None else round(ratio, 2),
            f"{compressed['wall']:.1f} / {same_layout['wall']:.1f} / "
            + (f"{fp32_two['wall']:.1f}" if fp32_two else "—"),
            f"{compressed['learner_time']:.1f} / {same_layout['learner_time']:.1f}",
            f"{final_return(compressed):.1f} / {final_return(same_layout):.1f} / "
            + (f"{final_return(fp32_two):.1f}" if fp32_two else "—"),
        ])  # fmt: skip
    return student_rows, time_rows, ratios


def plot(distill: list[dict], best: dict[int, dict], bound: float, path: Path) -> Path:
    """Left: the student's KL at every Monitor check; right: return against wall time."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    paces = list(dict.fromkeys(pace(rep) for rep in distill))
    shown: set[str] = set()
    for rep in distill:
        compressed, same_layout = rep["runs"]
        seed, pace_index = rep["settings"]["seed"], paces.index(pace(rep)) % 3
        style = ("-", "--", ":")[pace_index]
        points = student_kl(compressed)
        if points:
            frames, kls, _ = zip(*points, strict=True)
            left.plot(frames, kls, lw=1, ls=style, marker=".", ms=3,
                      label=f"seed {seed}, {pace(rep)}")  # fmt: skip
        reds = ("tab:red", "tab:purple", "tab:brown")
        for arm, color, name in ((compressed, reds[pace_index],
                                  f"compressed + student ({pace(rep)}), 1 worker"),
                                 (same_layout, "grey", "fp32, 1 worker"),
                                 (best.get(seed), "black", "fp32, 2 workers")):  # fmt: skip
            if arm and arm["curve"]:
                t, _, ret = zip(*arm["curve"], strict=True)
                right.plot(t, ret, color=color, alpha=0.7, lw=1,
                           label=None if name in shown else name)  # fmt: skip
                shown.add(name)
    left.axhline(bound, color="tab:orange", ls="--", label=f"KL bound {bound:g}")
    left.axhline(RECOVER_FRACTION * bound, color="tab:green", ls=":",
                 label=f"recovery bound {RECOVER_FRACTION * bound:g}")  # fmt: skip
    left.set(yscale="log", xlabel="frames", ylabel="KL(learner ‖ student)",
             title="distilled student at each Monitor check")  # fmt: skip
    left.legend(fontsize=7, ncol=2)
    right.set(xlabel="wall time (s)", ylabel="episode return", title="return vs wall time")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder with distill/ and fp32_best/ runs")
    parser.add_argument("--conditions", default="", help="what else ran on the machine")
    parser.add_argument("--note", action="append", default=[], help="a paragraph for the page")
    args = parser.parse_args(argv)
    distill = [read_report(p) for p in sorted(args.root.glob("distill/*/report.json"))]
    distill = [r for r in distill if len(r["runs"]) == 2 and "distillation" in r["runs"][0]]
    if not distill:
        raise SystemExit(f"no finished distilling two-arm runs under {args.root / 'distill'}")
    distill.sort(key=lambda r: (pace(r) == "unpaced", r["settings"]["seed"]))
    best, best_workers = {}, set()
    for path in sorted(args.root.glob("fp32_best/*/report.json")):
        rep = read_report(path)
        best[rep["settings"]["seed"]] = rep["runs"][0]
        best_workers.add(rep["settings"]["workers"])
    cfg = distill[0]["config"]
    s = distill[0]["settings"]
    bound = float(cfg["accerl"]["kl_bound"])
    threshold = float(json.loads(distill[0]["path"].read_text())["threshold"])

    report = BenchmarkReport(
        "accerl_distillation",
        "AcceRL with a distilled student for overlapped actors (CPU)",
        description=(
            f"`examples/accerl_impala.py` on {s['env']}, overlapped acting (TorchRL "
            f"`MultiAsyncCollector`), a {s['width']}-wide 2-layer MLP policy (critic "
            f"{s['critic_width']}-wide), {s['envs_per_worker']} environment per worker, "
            f"weights shipped every {s['ship_every']} updates. The compressed arm starts on "
            f"`{distill[0]['runs'][0]['compression']}` and distils a "
            f"{cfg['accerl']['distill_width']}-wide student in a background thread "
            "(`AsyncDistiller`, paced at a number of student steps per learner batch or "
            "unpaced, as each row says; published when its KL on the latest states is "
            f"within {bound:g}); the Monitor (checks every {cfg['accerl']['monitor_every']} "
            f"batch(es)) moves the actors to the student after {RECOVER_PATIENCE} consecutive "
            f"checks with its KL under {RECOVER_FRACTION:g} x {bound:g}. Each seed runs the "
            f"compressed arm and fp32 actors in the same layout ({s['workers']} worker) back "
            "to back in one process, and fp32 actors in their fastest layout per frame "
            f"({', '.join(map(str, sorted(best_workers))) or '—'} workers, `accerl_layouts.md`) "
            "separately; the ratio takes, per seed, whichever fp32 layout reached the threshold "
            "first. Time to threshold = wall time at which the mean of the last 5 logged "
            f"returns first reaches {threshold:g}. Target: compressed ÷ fp32 ≤ 0.7. "
            + args.conditions
        ).strip(),
        command="python -m seer_benchmarks.accerl_distillation <root>` after the recipe runs "
        "listed in that module's docstring (a long experiment, not part of `make bench",
    )
    student_rows, time_rows, ratios = seed_rows(distill, best, threshold, bound)
    report.add_table(
        "The student, per seed",
        ["student pace", "seed", "student updates", "publications", "Monitor checks",
         f"checks under the recovery bound ({RECOVER_FRACTION * bound:g})", "median KL",
         "lowest KL", "frames acted by the student"],
        student_rows,
    )  # fmt: skip
    report.add_table(
        f"Wall time to return {threshold:g} (s), per seed",
        ["student pace", "seed", "compressed + student (1 worker)", "fp32 (1 worker)",
         "fp32 (2 workers)", "÷ fp32 (1 worker)", "÷ fp32 (first of its layouts)",
         "wall (s) c / f1 / f2", "learner busy (s) c / f1", "final return c / f1 / f2"],
        time_rows,
    )  # fmt: skip
    figure = plot(distill, best, bound, DOCS_DIR / "accerl_distillation.png")
    report.add_figure(figure, "student KL per Monitor check; return vs wall time")
    for student_pace, values in ratios.items():
        report.add_note(
            f"Compressed (student {student_pace}) ÷ fp32 (whichever fp32 layout reached it "
            f"first), time to return {threshold:g}: median {statistics.median(values):.2f} over "
            f"{len(values)} seed(s) ({', '.join(f'{r:.2f}' for r in values)}); target ≤ 0.7."
        )
    for note in args.note:
        report.add_note(note)
    report.raw = {"threshold": threshold, "student": student_rows, "times": time_rows,
                  "runs": [{"seed": r["settings"]["seed"], "arms": r["runs"]} for r in distill],
                  "fp32_best": {seed: arm for seed, arm in best.items()}}  # fmt: skip
    print(report.write())


if __name__ == "__main__":
    main()
