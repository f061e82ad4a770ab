r"""AcceRL wall time to a return threshold, compressed ÷ full actors: aggregates recipe runs.

This is a long experiment, not part of ``make bench``. Each run of the IMPALA recipe trains once
with compressed actors and once with full-precision actors (same seed, same machine, one after
the other) and saves ``report.json``; run it once per seed (a hydra multirun), then aggregate::

    python examples/accerl_impala.py -m accerl.compression=int8 network.width=1024 \
        env.envs_per_worker=16 collector.workers=2 collector.total_frames=61440 \
        collector.frames_per_batch=1024 accerl.ship_every=4 accerl.threshold=195 seed=0,1,2 \
        logger.output_dir=runs/accerl_wall/int8
    python -m seer_benchmarks.accerl_wall_time runs/accerl_wall

The page ``docs/benchmarks/accerl_wall_time.md`` reports per seed the wall time each arm needed
to reach the threshold and their ratio, the final returns, and where the time went. To explain
the ratio it also times the policy alone here (fp32 and the run's compressed pipeline, at the
actors' batch, single-threaded as collector workers run) and compares it with the acting time
per actor call measured in the runs: if inference is a share ``s`` of an acting step and the
compressed network runs at ``r`` times the fp32 time, acting can at best shrink to
``1 - s (1 - r)`` (Amdahl's law).
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
import torch
from tensordict import TensorDict
from torchrl.envs import GymEnv

from seer_benchmarks.bench_accerl import categorical_mlp
from seer_benchmarks.harness import DOCS_DIR, BenchmarkReport, interleaved_timings
from torchrl_seer.collectors import CompressedPolicy, PolicyCompressor

#: Final return = mean of this many last logged returns (one per batch that ended episodes).
FINAL_WINDOW = 5


def read_run(path: Path) -> dict[str, Any]:
    """Reads one recipe invocation's ``report.json``: its settings and its two arms."""
    record = json.loads(path.read_text())
    compressed, full = record["runs"]
    cfg = record["config"]
    config = {
        "env": cfg["env"]["name"], "width": cfg["network"]["width"],
        "envs_per_worker": cfg["env"]["envs_per_worker"], "workers": cfg["collector"]["workers"],
        "frames_per_batch": cfg["collector"]["frames_per_batch"],
        "ship_every": cfg["accerl"]["ship_every"], "seed": cfg["seed"],
    }  # fmt: skip
    return {"path": path, "threshold": record["threshold"], "config": config,
            "compressed": compressed, "full": full}  # fmt: skip


def final_return(arm: dict[str, Any]) -> float:
    """Mean of the last :data:`FINAL_WINDOW` logged returns of one arm."""
    returns = [r for _, _, r in arm["curve"]][-FINAL_WINDOW:]
    return statistics.fmean(returns) if returns else float("nan")


def acting_ms_per_call(arm: dict[str, Any], config: dict[str, Any]) -> float:
    """Acting wall time per policy call of one worker (workers act in parallel), in ms."""
    calls = arm["frames"] / (config["workers"] * config["envs_per_worker"])
    return 1e3 * arm["actor_time"] / calls


def inference_ms(config: dict[str, Any], pipeline: str, *, repeats: int = 15, inner: int = 50):
    """Times the recipe's policy alone, fp32 and ``pipeline``, at the actors' batch (ms/call)."""
    torch.set_num_threads(1)  # as a collector worker runs
    torch.manual_seed(0)
    env = GymEnv(config["env"], categorical_action_encoding=True)
    n_obs = env.observation_spec["observation"].shape[-1]
    n_act = int(env.action_spec.space.n)
    env.close()
    policy = categorical_mlp(n_obs, n_act, config["width"]).eval()
    batch = config["envs_per_worker"]
    data = TensorDict(observation=torch.randn(batch, n_obs), batch_size=[batch])
    policies = {
        "fp32": CompressedPolicy(policy, PolicyCompressor()),
        pipeline: CompressedPolicy(policy, PolicyCompressor.from_spec(pipeline)),
    }

    def calls(p):
        def run():
            for _ in range(inner):
                p(data.clone(False))

        return run

    with torch.no_grad():
        timings = interleaved_timings(
            {name: calls(p) for name, p in policies.items()}, repeats=repeats
        )
    return {name: 1e3 * t.median / inner for name, t in timings.items()}


def plot_return_vs_wall(pairs, threshold: float, *, title: str, path: Path) -> Path:
    """Plots every seed's ``(compressed arm, fp32 arm)`` return curves against wall time."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for index, (compressed, full) in enumerate(pairs):
        for arm, color in ((compressed, "tab:red"), (full, "black")):
            if arm["curve"]:
                t, _, ret = zip(*arm["curve"], strict=True)
                label = f"{arm['final_pipeline']} actors" if arm is compressed else "fp32"
                ax.plot(t, ret, color=color, alpha=0.7, lw=1,
                        label=label if index == 0 else None)  # fmt: skip
    ax.axhline(threshold, color="grey", ls=":", label=f"threshold {threshold:g}")
    ax.set(xlabel="wall time (s)", ylabel="episode return", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path, help="folder holding one sub-folder per recipe run")
    parser.add_argument(
        "--conditions", default="", help="what else ran on the machine during the runs"
    )
    args = parser.parse_args(argv)
    runs = [read_run(p) for p in sorted(args.root.glob("*/accerl_impala_*/report.json"))]
    runs = [r for r in runs if r["threshold"] is not None]
    if not runs:
        raise SystemExit(f"no AcceRL IMPALA runs with accerl.threshold under {args.root}")
    runs.sort(key=lambda r: r["config"]["seed"])
    config = runs[0]["config"]
    for run in runs[1:]:
        same = {k: run["config"][k] for k in ("env", "width", "envs_per_worker", "workers")}
        if same != {k: config[k] for k in same}:
            raise SystemExit(f"{run['path']} used other settings than {runs[0]['path']}")
    threshold = runs[0]["threshold"]
    pipeline = runs[0]["compressed"]["final_pipeline"]

    report = BenchmarkReport(
        "accerl_wall_time",
        "AcceRL: wall time to a return threshold, compressed ÷ full-precision actors (CPU)",
        description=(
            f"`examples/accerl_impala.py` on {config['env']}: IMPALA-style `A2CLoss` + V-trace, "
            f"a {config['width']}-wide 2-layer MLP policy, {config['workers']} collector worker "
            f"processes with {config['envs_per_worker']} environments each (actor batch "
            f"{config['envs_per_worker']}), {config['frames_per_batch']} frames per update, "
            f"weights compressed and shipped every {config['ship_every']} updates. Each seed "
            "trains the compressed-actor arm, then the full-precision arm, in one process. "
            f"Time to threshold = wall time at which the mean of the last 5 logged returns first "
            f"reaches {threshold:g}. Target: compressed ÷ full ≤ 0.7 with final returns within "
            "seed noise. " + args.conditions
        ).strip(),
        command="python -m seer_benchmarks.accerl_wall_time <runs folder>` after the recipe runs "
        "listed in that module's docstring (a long experiment, not part of `make bench",
    )
    rows, ratios, wall_ratios = [], [], []
    for run in runs:
        c, f = run["compressed"], run["full"]
        tc, tf = c.get("time_to_threshold"), f.get("time_to_threshold")
        ratio = tc / tf if tc is not None and tf is not None else None
        if ratio is not None:
            ratios.append(ratio)
        wall_ratios.append(c["wall"] / f["wall"])
        rows.append(
            [
                run["config"]["seed"],
                "not reached" if tc is None else f"{tc:.1f}",
                "not reached" if tf is None else f"{tf:.1f}",
                "—" if ratio is None else f"{ratio:.2f}",
                f"{final_return(c):.1f}",
                f"{final_return(f):.1f}",
                f"{c['wall']:.1f} / {f['wall']:.1f}",
                f"{c['actor_time']:.1f} / {f['actor_time']:.1f}",
                f"{c['learner_time']:.1f} / {f['learner_time']:.1f}",
                c["final_pipeline"],
            ]
        )
    report.add_table(
        f"Wall time to return {threshold:g} (s), per seed",
        ["seed", "compressed", "full", "÷ full", "final return compressed", "final return full",
         "wall (s) c / f", "acting (s) c / f", "learner (s) c / f", "final pipeline"],
        rows,
    )  # fmt: skip

    timed = inference_ms(config, pipeline)
    r = timed[pipeline] / timed["fp32"]
    acting_full = statistics.median(acting_ms_per_call(run["full"], config) for run in runs)
    acting_comp = statistics.median(acting_ms_per_call(run["compressed"], config) for run in runs)
    share = timed["fp32"] / acting_full
    report.add_table(
        "Where acting time goes (medians over seeds; inference timed here, single-threaded)",
        ["quantity", "value"],
        [
            ["fp32 policy inference per call (ms)", f"{timed['fp32']:.3f}"],
            [f"{pipeline} policy inference per call (ms)", f"{timed[pipeline]:.3f}"],
            ["inference ratio r (compressed ÷ fp32)", f"{r:.2f}"],
            ["acting time per call, full arm (ms)", f"{acting_full:.2f}"],
            ["acting time per call, compressed arm (ms)", f"{acting_comp:.2f}"],
            ["inference share s of an fp32 acting step", f"{share:.3f}"],
            ["best acting-time ratio 1 - s(1 - r) (Amdahl)", f"{1 - share * (1 - r):.3f}"],
            ["measured acting-time ratio (compressed ÷ full)", f"{acting_comp / acting_full:.3f}"],
        ],
    )
    if ratios:
        report.add_note(
            f"Median time-to-threshold ratio over {len(ratios)} seed(s): "
            f"{statistics.median(ratios):.2f} (target ≤ 0.7: "
            f"{'met' if statistics.median(ratios) <= 0.7 else 'missed'}). Wall time for the "
            f"same {runs[0]['full']['frames']:,} frames, compressed ÷ full, median over "
            f"{len(wall_ratios)} seed(s): {statistics.median(wall_ratios):.2f} (per seed: "
            + ", ".join(f"{w:.2f}" for w in wall_ratios)
            + ")."
        )

    figure = plot_return_vs_wall(
        [(run["compressed"], run["full"]) for run in runs], threshold,
        title="return vs wall time, all seeds", path=DOCS_DIR / "accerl_wall_time.png",
    )  # fmt: skip
    report.add_figure(figure, "return vs wall time, compressed and full-precision actors")
    report.raw["runs"] = [{k: v for k, v in run.items() if k != "path"} for run in runs]
    report.raw["inference_ms"] = timed
    print(report.write())


if __name__ == "__main__":
    main()
