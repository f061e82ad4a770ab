r"""AcceRL with overlapped acting: wall time to a return threshold, compressed ÷ fp32 actors.

A long experiment, not part of ``make bench``, in three steps (``examples/accerl_impala.py``).

1. **Acting share of candidate workloads**, fp32 actors, synchronous collection, one seed,
   one folder per candidate under ``<candidates>/``::

       python examples/accerl_impala.py accerl.compression=none accerl.compare=false seed=0 \
           collector.workers=2 <candidate settings> logger.output_dir=<candidates>/<name>

2. **The measurement** on the chosen workload, overlapped acting, both arms of a seed back to
   back in one process (compressed first), seeds one after the other::

       python examples/accerl_impala.py accerl.compression=int8+trace network.width=2048 \
           network.critic_width=64 env.envs_per_worker=1 collector.workers=2 \
           collector.overlap=true collector.total_frames=20480 collector.frames_per_batch=256 \
           accerl.ship_every=4 accerl.threshold=195 seed=<0, 1, 2> logger.output_dir=<runs>

3. **Aggregate** (this module): ``python -m seer_benchmarks.accerl_overlap <runs>
   --candidates <candidates> --threshold <return>``. It times the recipe's own policy alone
   (fp32 and each run's pipeline, at the actors' batch, single-threaded as collector workers
   run) to split acting time into inference and the rest (Amdahl's law), times the static-graph
   stage (fp32, int8, with ``torch.compile`` and with ``torch.jit.trace``) at the actor batch
   sizes, and writes ``docs/benchmarks/accerl_overlap.md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from tensordict import TensorDict

from seer_benchmarks.accerl_wall_time import final_return, plot_return_vs_wall
from seer_benchmarks.bench_accerl import categorical_mlp
from seer_benchmarks.harness import DOCS_DIR, REPO_ROOT, BenchmarkReport, interleaved_timings
from torchrl_seer.collectors import CompressedPolicy, PolicyCompressor
from torchrl_seer.trainers.helpers.accerl import time_to_threshold

#: Pipelines of the static-graph table: fp32 and int8, eager and as traced static graphs.
STATIC_GRAPH_PIPELINES = ("fp32", "trace", "int8", "int8+trace")
#: Added with ``--with-compile`` (each ``torch.compile`` build costs seconds to minutes of CPU).
COMPILE_PIPELINES = ("compile", "int8+compile")


def read_report(path: Path) -> dict[str, Any]:
    """One recipe invocation's ``report.json``: its settings (flattened) and its arms."""
    record = json.loads(path.read_text())
    cfg = record["config"]
    settings = {
        "env": cfg["env"]["name"], "atari": cfg["env"]["atari"], "width": cfg["network"]["width"],
        "critic_width": cfg["network"]["critic_width"] or cfg["network"]["width"],
        "envs_per_worker": cfg["env"]["envs_per_worker"], "workers": cfg["collector"]["workers"],
        "frames_per_batch": cfg["collector"]["frames_per_batch"],
        "overlap": cfg["collector"]["overlap"], "ship_every": cfg["accerl"]["ship_every"],
        "seed": cfg["seed"],
    }  # fmt: skip
    return {"path": path, "config": cfg, "settings": settings, "runs": record["runs"]}


def calls_per_worker(arm: dict[str, Any], settings: dict[str, Any]) -> float:
    """Policy calls one worker made (each worker steps its environments together)."""
    return arm["frames"] / (settings["workers"] * settings["envs_per_worker"])


def recipe_policy_ms(config: dict[str, Any], pipelines, *, repeats=9, inner=20) -> dict:
    """Times the recipe's own actor alone, per pipeline, at one worker's batch (ms per call)."""
    if str(REPO_ROOT / "examples") not in sys.path:
        sys.path.insert(0, str(REPO_ROOT / "examples"))
    import accerl_impala  # the recipe: its environments and networks

    torch.set_num_threads(1)  # as a collector worker runs
    torch.manual_seed(0)
    cfg = OmegaConf.create(config)
    env = accerl_impala.env_maker(cfg)(0)
    actor, _ = accerl_impala.make_networks(env, cfg.network.width, cfg.network.critic_width)
    data = env.reset().reshape(-1)
    env.close()
    policies = {p: CompressedPolicy(actor, PolicyCompressor.from_spec(p)) for p in pipelines}
    return _median_ms(policies, data, repeats=repeats, inner=inner)


def _median_ms(policies, data, *, repeats, inner) -> dict[str, float]:
    def calls(policy):
        def run():
            for _ in range(inner):
                policy(data.clone(False))

        return run

    with torch.no_grad():
        timings = interleaved_timings({n: calls(p) for n, p in policies.items()}, repeats=repeats)
    return {name: 1e3 * t.median / inner for name, t in timings.items()}


def static_graph_rows(pipelines, widths=(2048,), batches=(1, 16)) -> list[list[Any]]:
    """Per-call time of the CartPole-sized MLP actor per pipeline, and graph build time."""
    torch.set_num_threads(1)
    rows = []
    for width in widths:
        for batch in batches:
            torch.manual_seed(0)
            actor = categorical_mlp(4, 2, width)
            data = TensorDict(observation=torch.randn(batch, 4), batch_size=[batch])
            policies = {}
            build = {}
            for spec in pipelines:
                policies[spec] = CompressedPolicy(actor, PolicyCompressor.from_spec(spec))
                start = time.perf_counter()
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    policies[spec](data.clone(False))  # a static graph is built here
                build[spec] = time.perf_counter() - start
            ms = _median_ms(policies, data, repeats=9, inner=20)
            for spec in pipelines:
                rows.append([width, batch, spec, round(ms[spec], 3),
                             round(ms[spec] / ms["fp32"], 2), round(build[spec], 2)])  # fmt: skip
    return rows


def candidate_rows(root: Path) -> list[list[Any]]:
    """Acting share (time the learner waits for data ÷ wall time) of each candidate workload."""
    rows = []
    for path in sorted(root.glob("*/accerl_impala_*/report.json")):
        report = read_report(path)
        s, arm = report["settings"], report["runs"][0]
        acting_ms = 1e3 * arm["actor_time"] / calls_per_worker(arm, s)
        network = "Nature CNN" if s["atari"] else f"MLP {s['width']} (critic {s['critic_width']})"
        rows.append([
            path.parent.parent.name, s["env"], network, s["envs_per_worker"], s["workers"],
            s["frames_per_batch"], arm["frames"], round(arm["wall"], 1),
            round(arm["actor_time"] / arm["wall"], 2), round(acting_ms, 2),
        ])  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder of the overlapped recipe runs")
    parser.add_argument("--candidates", type=Path, help="folder of the candidate runs")
    parser.add_argument("--threshold", type=float, help="return threshold (default: the runs')")
    parser.add_argument("--threshold-why", default="", help="why this threshold, for the page")
    parser.add_argument("--conditions", default="", help="what else ran on the machine")
    parser.add_argument(
        "--with-compile", action="store_true", help="also time torch.compile static graphs"
    )
    args = parser.parse_args(argv)
    found = [read_report(p) for p in sorted(args.root.glob("**/accerl_impala_*/report.json"))]

    def finished(report):  # both arms finished (a run writes its report along the way)
        total = report["config"]["collector"]["total_frames"]
        return len(report["runs"]) == 2 and all(a["frames"] == total for a in report["runs"])

    reports = [r for r in found if finished(r)]
    stopped = [r for r in found if not finished(r)]
    if not reports:
        raise SystemExit(f"no finished two-arm AcceRL IMPALA runs under {args.root}")
    reports.sort(key=lambda r: r["settings"]["seed"])
    s = reports[0]["settings"]
    for report in reports[1:]:
        other = {k: v for k, v in report["settings"].items() if k != "seed"}
        if other != {k: v for k, v in s.items() if k != "seed"}:
            raise SystemExit(f"{report['path']} used other settings than {reports[0]['path']}")
    threshold = args.threshold
    if threshold is None:
        threshold = float(json.loads(reports[0]["path"].read_text())["threshold"])
    pipeline = reports[0]["runs"][0]["final_pipeline"]
    start = reports[0]["runs"][0]["compression"]

    report = BenchmarkReport(
        "accerl_overlap",
        "AcceRL with overlapped acting: wall time to a return threshold, compressed ÷ fp32 "
        "actors (CPU)",
        description=(
            f"`examples/accerl_impala.py` on {s['env']} with `collector.overlap=true`: "
            f"{s['workers']} collector worker processes (TorchRL `MultiAsyncCollector`) keep "
            "acting while the learner (IMPALA-style `A2CLoss` + V-trace) learns; each learner "
            f"batch is {s['frames_per_batch']} frames of the worker that finished first. Policy: "
            f"a {s['width']}-wide 2-layer MLP, critic {s['critic_width']}-wide; "
            f"{s['envs_per_worker']} environment(s) per worker (actor batch "
            f"{s['envs_per_worker']}); weights compressed and shipped every {s['ship_every']} "
            f"updates. Compressed arm: `{start}`. Each seed trains the compressed arm, then the "
            "fp32 arm, back to back in one process, so both see the same load. Time to "
            "threshold = wall time at which the mean of the last 5 logged returns first "
            f"reaches {threshold:g}. {args.threshold_why} Target: compressed ÷ fp32 ≤ 0.7. "
            + args.conditions
        ).strip(),
        command="python -m seer_benchmarks.accerl_overlap <runs> --candidates <candidates>` "
        "after the recipe runs listed in that module's docstring (a long experiment, not part "
        "of `make bench",
    )

    if args.candidates is not None:
        rows = candidate_rows(args.candidates)
        report.add_table(
            "Candidate workloads: acting share with fp32 actors (synchronous collection, seed 0)",
            ["candidate", "env", "policy", "envs / worker", "workers", "frames / batch",
             "frames", "wall (s)", "acting ÷ wall", "acting per call (ms)"],
            rows,
        )  # fmt: skip
        report.raw["candidates"] = rows

    rows, ratios, wall_ratios = [], [], []
    for rep in reports:
        compressed, full = rep["runs"]
        times = [time_to_threshold(arm["curve"], threshold) for arm in (compressed, full)]
        frames = [
            next((f for t, f, _ in arm["curve"] if t == reached), None) if reached else None
            for arm, reached in zip((compressed, full), times, strict=True)
        ]
        ratio = times[0] / times[1] if None not in times else None  # type: ignore[operator]
        if ratio is not None:
            ratios.append(ratio)
        wall_ratios.append(compressed["wall"] / full["wall"])
        rows.append([
            rep["settings"]["seed"],
            *("not reached" if t is None else round(t, 1) for t in times),
            "—" if ratio is None else round(ratio, 2),
            " / ".join("—" if f is None else f"{f:,}" for f in frames),
            round(final_return(compressed), 1), round(final_return(full), 1),
            f"{compressed['wall']:.1f} / {full['wall']:.1f}",
            round(compressed["wall"] / full["wall"], 2),
            f"{compressed['actor_time']:.1f} / {full['actor_time']:.1f}",
            f"{compressed['learner_time']:.1f} / {full['learner_time']:.1f}",
            compressed["final_pipeline"],
        ])  # fmt: skip
    report.add_table(
        f"Wall time to return {threshold:g} (s), per seed",
        ["seed", "compressed", "fp32", "÷ fp32", "frames to threshold c / f",
         "final return compressed", "final return fp32",
         "wall (s) c / f", "same-frames wall ÷ fp32", "learner waiting for data (s) c / f",
         "learner (s) c / f", "final pipeline"],
        rows,
    )  # fmt: skip

    if stopped:
        report.add_table(
            "Runs stopped before both arms finished (not in the ratios)",
            ["seed", "arm", "frames", f"time to {threshold:g} (s)", "final return", "wall (s)"],
            [
                [rep["settings"]["seed"], arm["label"], arm["frames"],
                 "not reached" if (t := time_to_threshold(arm["curve"], threshold)) is None
                 else round(t, 1), round(final_return(arm), 1), round(arm["wall"], 1)]
                for rep in stopped for arm in rep["runs"]
            ],
        )  # fmt: skip

    timed = recipe_policy_ms(reports[0]["config"], ["fp32", pipeline])
    r = timed[pipeline] / timed["fp32"]
    # overlapped workers act for the whole run: their time per call is the run's wall time
    # over the calls each made (an upper bound: it includes start-up)
    per_call = {
        arm: statistics.median(
            1e3 * rep["runs"][i]["wall"] / calls_per_worker(rep["runs"][i], rep["settings"])
            for rep in reports
        )
        for i, arm in enumerate(("compressed", "fp32"))
    }
    share = timed["fp32"] / per_call["fp32"]
    wait_share = statistics.median(
        rep["runs"][1]["actor_time"] / rep["runs"][1]["wall"] for rep in reports
    )
    report.add_table(
        "Where the time goes (medians over seeds; inference timed here, single-threaded)",
        ["quantity", "value"],
        [
            ["fp32 policy inference per call (ms)", round(timed["fp32"], 3)],
            [f"{pipeline} policy inference per call (ms)", round(timed[pipeline], 3)],
            ["inference ratio r (compressed ÷ fp32)", round(r, 2)],
            ["worker wall time per call, fp32 arm (ms)", round(per_call["fp32"], 2)],
            ["worker wall time per call, compressed arm (ms)", round(per_call["compressed"], 2)],
            *(
                [["inference share s of an fp32 worker step", round(share, 3)],
                 ["best acting-time ratio 1 - s(1 - r) (Amdahl)", round(1 - share * (1 - r), 3)]]
                if share < 1.0 else []
            ),
            ["learner waiting for data ÷ wall, fp32 arm", round(wait_share, 2)],
        ],
    )  # fmt: skip
    if share >= 1.0:
        report.add_note(
            f"The fp32 policy alone took {timed['fp32']:.1f} ms per call when timed here, more "
            f"than a whole worker step took in the runs ({per_call['fp32']:.1f} ms): the timing "
            "process got far less CPU than the workers had had, so these timings cannot split "
            "the runs' acting time, and the Amdahl bound is left out."
        )
    report.add_table(
        "Static-graph stage: actor inference per call, CartPole-sized MLP (ms, medians)",
        ["width", "batch", "pipeline", "ms / call", "÷ fp32", "first call (s, builds graph)"],
        static_graph_rows(
            STATIC_GRAPH_PIPELINES + (COMPILE_PIPELINES if args.with_compile else ())
        ),
    )
    if ratios:
        median = statistics.median(ratios)
        verdict = (
            f"not established: {len(ratios)} seed(s), 3 needed"
            if len(ratios) < 3
            else ("met" if median <= 0.7 else f"missed by {median - 0.7:.2f}")
        )
        report.add_note(
            f"Median time-to-threshold ratio over {len(ratios)} seed(s): {median:.2f} (target "
            f"≤ 0.7: {verdict})."
        )
    report.add_note(
        f"Wall time for the same {reports[0]['runs'][1]['frames']:,} frames, compressed ÷ fp32, "
        f"median over {len(wall_ratios)} seed(s): {statistics.median(wall_ratios):.2f} (per "
        "seed: " + ", ".join(f"{w:.2f}" for w in wall_ratios) + ")."
    )

    figure = plot_return_vs_wall(
        [tuple(rep["runs"]) for rep in reports], threshold,
        title="overlapped acting, all seeds", path=DOCS_DIR / "accerl_overlap.png",
    )  # fmt: skip
    report.add_figure(figure, "return vs wall time, compressed and fp32 actors, overlapped")
    report.raw["runs"] = [{k: v for k, v in r.items() if k != "path"} for r in reports]
    report.raw["inference_ms"] = timed
    print(report.write())


if __name__ == "__main__":
    main()
