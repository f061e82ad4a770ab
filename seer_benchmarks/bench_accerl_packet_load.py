"""AcceRL worker cost per shipped policy: rebuilding the compressed network vs refilling it.

Every weight packet a worker receives (every ``accerl.ship_every`` learner updates) replaces
its compressed policy. :meth:`~torchrl_seer.collectors.PolicyCompressor.rebuild` compresses the
worker's full-precision template again and loads the packet into the result;
:meth:`~torchrl_seer.collectors.PolicyCompressor.refill`, which
:class:`~torchrl_seer.collectors.CompressedPolicy` uses whenever the packet has the structure
of the network it ran before, loads the packet into that network. Both are timed with the first
acting step after them (a ``trace`` pipeline rebuilds its graph there), interleaved,
single-threaded, for the CartPole MLPs of ``accerl_layouts.md`` (two hidden layers of 2,048 and
4,096 units; 1,024 with ``--quick``), batch 1.

Run: ``python -m seer_benchmarks.bench_accerl_packet_load [--quick]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.modules import ProbabilisticActor

from seer_benchmarks.bench_accerl import categorical_mlp
from seer_benchmarks.harness import BenchmarkReport, interleaved_timings
from torchrl_seer.collectors import PolicyCompressor

__all__ = ["main"]

PIPELINES = ("int8", "int8+trace")


def cartpole_actor(width: int, seed: int) -> ProbabilisticActor:
    """The AcceRL IMPALA recipe's CartPole policy with two hidden layers of ``width`` units."""
    torch.manual_seed(seed)
    return categorical_mlp(4, 2, width).eval()


def load_and_act(
    width: int, spec: str, observation: TensorDictBase
) -> dict[str, Callable[[], None]]:
    """The two ways a worker takes a packet, each followed by one acting step."""
    compressor = PolicyCompressor.from_spec(spec)
    template = cartpole_actor(width, seed=1)  # the worker's copy: architecture only
    learner = cartpole_actor(width, seed=0)
    running_packet = compressor.pack(learner, version=0)
    shipped = compressor.pack(learner, version=1)
    running = PolicyCompressor.rebuild(template, running_packet)

    def rebuild() -> None:
        with torch.no_grad():
            PolicyCompressor.rebuild(template, shipped)(observation.clone())

    def refill() -> None:
        if not PolicyCompressor.refill(running, running_packet, shipped):
            raise RuntimeError(f"{spec}: the shipped packet should refill the running network")
        with torch.no_grad():
            running(observation.clone())

    return {"rebuild": rebuild, "refill": refill}


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one narrower policy, few repeats")
    args = parser.parse_args(argv)
    widths, repeats = ((1024,), 3) if args.quick else ((2048, 4096), 11)
    torch.set_num_threads(1)  # one actor per core: collector workers act single-threaded
    report = BenchmarkReport(
        "accerl_packet_load",
        "AcceRL workers: loading a shipped policy, rebuild vs refill",
        description=(
            "Median time for a worker to take one weight packet and act once with it (batch 1, "
            "single-threaded): `PolicyCompressor.rebuild` (compress the worker's template "
            "again, then load the packet) against `PolicyCompressor.refill` (load the packet "
            "into the network the worker ran before, as `CompressedPolicy.load_packet` does "
            "when the structure is unchanged), timed interleaved in the same run "
            f"({repeats} repeats). Policies: the CartPole MLP of the AcceRL layouts page."
        ),
    )
    observation = TensorDict(observation=torch.randn(1, 4), batch_size=[1])
    rows, raw = [], {}
    for width in widths:
        for spec in PIPELINES:
            timings = interleaved_timings(
                load_and_act(width, spec, observation), repeats=repeats, warmup=1
            )
            rebuilt, refilled = timings["rebuild"].median, timings["refill"].median
            raw[f"width {width}, {spec}"] = {"rebuild_s": rebuilt, "refill_s": refilled}
            rows.append([
                f"4-{width}-{width}-2", spec, f"{rebuilt * 1e3:.1f}", f"{refilled * 1e3:.1f}",
                f"{refilled / rebuilt:.2f}",
            ])  # fmt: skip
            print(f"width {width} {spec}: rebuild {rebuilt:.3f} s, refill {refilled:.3f} s")
    report.add_table(
        "Packet load plus first acting step (ms, median)",
        ["CartPole MLP", "pipeline", "rebuild", "refill", "refill ÷ rebuild"],
        rows,
    )
    report.raw.update(raw)
    print(f"wrote {report.write()}")


if __name__ == "__main__":
    main()
