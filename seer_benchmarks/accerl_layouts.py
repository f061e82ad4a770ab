r"""AcceRL with overlapped acting: which actor layout each arm runs fastest in, on this machine.

A long experiment, not part of ``make bench``. The time-to-threshold comparison of
:mod:`seer_benchmarks.accerl_overlap` fixes one layout (workers, environments per worker,
policy width) for both arms. Fair to the fp32 actors means giving them their best layout too,
so this page runs both arms of ``examples/accerl_impala.py`` (overlapped acting, one seed)
in several layouts for the same frames, and compares each arm's best wall time::

    python examples/accerl_impala.py accerl.compression=int8+trace accerl.compare=true \
        collector.overlap=true collector.workers=<1, 2> network.width=<2048, 4096> \
        network.critic_width=64 env.envs_per_worker=<1, 16> collector.total_frames=<frames> \
        collector.frames_per_batch=<256, 512> accerl.ship_every=4 seed=0 \
        logger.output_dir=<root>/<layout>

then ``python -m seer_benchmarks.accerl_layouts <root>`` writes
``docs/benchmarks/accerl_layouts.md``. It also times each width's policy alone (fp32 and the
compressed pipeline, one worker's batch, single-threaded) to show how much of a worker's step
inference is.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import Any

from seer_benchmarks.accerl_overlap import calls_per_worker, read_report, recipe_policy_ms
from seer_benchmarks.accerl_wall_time import final_return
from seer_benchmarks.harness import BenchmarkReport


def workload(settings: dict[str, Any], frames: int) -> tuple:
    """What two layouts must share to be compared: policy, environments per worker, frames."""
    return (settings["width"], settings["critic_width"], settings["envs_per_worker"],
            settings["frames_per_batch"], frames)  # fmt: skip


def layout_rows(reports: list[dict[str, Any]]) -> list[list[Any]]:
    """One row per invocation: both arms' wall time, learner waiting/busy time and returns."""
    rows = []
    for rep in reports:
        s = rep["settings"]
        compressed, full = rep["runs"]
        rows.append([
            s["width"], s["envs_per_worker"], s["workers"], s["frames_per_batch"],
            full["frames"], round(compressed["wall"], 1), round(full["wall"], 1),
            round(compressed["wall"] / full["wall"], 2),
            f"{compressed['actor_time']:.1f} / {full['actor_time']:.1f}",
            f"{compressed['learner_time']:.1f} / {full['learner_time']:.1f}",
            f"{1e3 * compressed['wall'] / calls_per_worker(compressed, s):.2f} / "
            f"{1e3 * full['wall'] / calls_per_worker(full, s):.2f}",
            f"{final_return(compressed):.1f} / {final_return(full):.1f}",
        ])  # fmt: skip
    return rows


def best_layout_rows(reports: list[dict[str, Any]]) -> list[list[Any]]:
    """Per workload: each arm's fastest layout, and compressed (best) ÷ fp32 (best)."""
    rows = []

    def key(rep: dict[str, Any]) -> tuple:
        return workload(rep["settings"], rep["runs"][1]["frames"])

    for (width, _, envs, _, frames), group in itertools.groupby(sorted(reports, key=key), key):
        group = list(group)
        best = [min(group, key=lambda rep, i=i: rep["runs"][i]["wall"]) for i in (0, 1)]
        walls = [best[i]["runs"][i]["wall"] for i in (0, 1)]
        rows.append([
            width, envs, frames, len(group),
            f"{walls[0]:.1f} ({_workers(best[0])})", f"{walls[1]:.1f} ({_workers(best[1])})",
            round(walls[0] / walls[1], 2),
        ])  # fmt: skip
    return rows


def _workers(report: dict[str, Any]) -> str:
    count = report["settings"]["workers"]
    return f"{count} worker" + ("s" if count > 1 else "")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder of the layout runs (one per layout)")
    parser.add_argument("--conditions", default="", help="what else ran on the machine")
    args = parser.parse_args(argv)
    reports = [read_report(p) for p in sorted(args.root.glob("*/accerl_impala_*/report.json"))]
    reports = [r for r in reports if len(r["runs"]) == 2 and r["settings"]["overlap"]]
    if not reports:
        raise SystemExit(f"no finished two-arm overlapped AcceRL IMPALA runs under {args.root}")
    reports.sort(key=lambda r: (workload(r["settings"], r["runs"][1]["frames"]),
                                r["settings"]["workers"]))  # fmt: skip
    pipeline = reports[0]["runs"][0]["final_pipeline"]
    s = reports[0]["settings"]

    report = BenchmarkReport(
        "accerl_layouts",
        "AcceRL with overlapped acting: each arm in its best actor layout (CPU)",
        description=(
            f"`examples/accerl_impala.py` on {s['env']} with `collector.overlap=true` "
            f"(TorchRL `MultiAsyncCollector`), both arms of one seed ({s['seed']}) back to back "
            f"in one process: compressed actors (`{pipeline}`) then fp32 actors, weights shipped "
            f"every {s['ship_every']} learner updates, critic {s['critic_width']}-wide, one "
            "torch thread per process. Each layout "
            "(collector worker processes, environments per worker) is run for the same frames; "
            "a fair comparison gives each arm its fastest layout. Learner waiting = time the "
            "learner waited for a batch (acting-bound when large). " + args.conditions
        ).strip(),
        command="python -m seer_benchmarks.accerl_layouts <root>` after the recipe runs "
        "listed in that module's docstring (a long experiment, not part of `make bench",
    )
    report.add_table(
        "Wall time for the same frames, per layout (s)",
        ["width", "envs / worker", "workers", "frames / batch", "frames", "compressed",
         "fp32", "÷ fp32 (same layout)", "learner waiting (s) c / f", "learner busy (s) c / f",
         "wall per worker call (ms) c / f", "final return c / f"],
        layout_rows(reports),
    )  # fmt: skip
    best = best_layout_rows(reports)
    report.add_table(
        "Each arm in its fastest layout (s)",
        ["width", "envs / worker", "frames", "layouts run", "compressed (best)", "fp32 (best)",
         "compressed ÷ fp32"],
        best,
    )  # fmt: skip

    timing_rows, bounds = [], []
    for (width, envs), group in itertools.groupby(
        reports, key=lambda r: (r["settings"]["width"], r["settings"]["envs_per_worker"])
    ):
        group = list(group)
        timed = recipe_policy_ms(group[0]["config"], ["fp32", pipeline])
        r = timed[pipeline] / timed["fp32"]
        timing_rows.append([width, envs, round(timed["fp32"], 3), round(timed[pipeline], 3),
                            round(r, 2)])  # fmt: skip
        # a single worker has a core to itself: its wall time per call is its step time
        alone = [rep for rep in group if rep["settings"]["workers"] == 1]
        if alone:
            full = alone[0]["runs"][1]
            step_ms = 1e3 * full["wall"] / calls_per_worker(full, alone[0]["settings"])
            share = timed["fp32"] / step_ms
            if share < 1.0:
                bounds.append((width, envs, share, r, 1 - share * (1 - r)))
    report.add_table(
        "Policy inference alone, one worker's batch (ms per call, medians, single-threaded)",
        ["width", "batch", "fp32", pipeline, "÷ fp32"],
        timing_rows,
    )  # fmt: skip
    report.raw["runs"] = [{k: v for k, v in r.items() if k != "path"} for r in reports]
    for width, envs, frames, _, c, f, ratio in best:
        report.add_note(
            f"Width {width}, {envs} environment(s) per worker, {frames:,} frames: compressed "
            f"actors in their fastest layout {c} s, fp32 actors in theirs {f} s: "
            f"{ratio:.2f} (target for time to a return threshold: ≤ 0.7)."
        )
    for width, envs, share, r, bound in bounds:
        report.add_note(
            f"Width {width}, {envs} environment(s) per worker: inference is {share:.0%} of a "
            "lone fp32 worker's step (policy alone ÷ wall time per worker call, which includes "
            f"the worker's start-up), and the compressed policy takes {r:.2f} of the fp32 "
            "policy's time, so compressed actors can at best "
            f"take {bound:.2f} of the fp32 actors' time per frame (Amdahl), before the "
            "learner's share of the cores and the rebuild of each shipped policy."
        )
    report.add_note(
        "Final returns are listed for completeness: these runs measure speed over a fixed "
        "number of frames, and several of them (16 environments per worker, and the 4096-wide "
        "policy with one worker) had not learned or had collapsed to one action (returns near "
        "10) when they stopped."
    )
    print(report.write())


if __name__ == "__main__":
    main()
