"""DeltaFrameStorage reads with and without the device cache of decoded chunks.

For Atari games (4-frame gray stacks) and DMC tasks (3-frame RGB stacks) of the harness
datasets, the same stacked transitions are written to a
:class:`~torchrl.data.LazyTensorStorage` and to :class:`~torchrl_seer.data.DeltaFrameStorage`
without a device cache (the CPU LRU cache of decoded chunks at its default 4 MiB), with a
device cache holding every chunk of the buffer, and with a device cache holding a quarter of
them. Reported: the median time of a batch-256 ``get`` (uniform indices, and 32 slices of 8
consecutive transitions), the bytes held, and the device cache's size after the reads. The
timings interleave the storages so that load drift hits each alike; the decoding runs on the
calling thread. All storages are on ``device`` (``--device``, default ``cpu``).

Run: ``.venv/bin/python -m seer_benchmarks.bench_delta_device [--quick] [--tasks Pong ...]``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from collections.abc import Callable
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage

from seer_benchmarks.datasets import ATARI_GAMES, DMC_TASKS, load_rollout, stack_frames
from seer_benchmarks.harness import BenchmarkReport, interleaved_timings
from torchrl_seer.data import DeltaFrameStorage

__all__ = ["main"]

BATCH = 256
SLICES, SLICE_LEN = 32, 8
EXTEND_BATCH = 1000
NUM_BATCHES = 16


def _fill(storage: Any, data: TensorDictBase) -> None:
    """Writes ``data`` in collector-sized batches."""
    for begin in range(0, len(data), EXTEND_BATCH):
        stop = min(len(data), begin + EXTEND_BATCH)
        storage.set(torch.arange(begin, stop), data[begin:stop])


def _batches(n: int, pattern: str) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    if pattern == "uniform":
        return [torch.randint(0, n, (BATCH,), generator=gen) for _ in range(NUM_BATCHES)]
    starts = [torch.randint(0, n - SLICE_LEN, (SLICES, 1), generator=gen) for _ in range(16)]
    return [(s + torch.arange(SLICE_LEN)).reshape(-1) for s in starts]


def _reader(storage: Any, batches: list[torch.Tensor]) -> Callable[[], Any]:
    """A call that reads the next batch of ``batches`` (cycling) from ``storage``."""
    cycle = itertools.cycle(batches)
    return lambda: storage.get(next(cycle))


def measure_task(
    name: str, frame_stack: int, num_steps: int, repeats: int, device: str
) -> list[dict[str, Any]]:
    """Batch get times and bytes of one game or task, per storage configuration."""
    data = stack_frames(load_rollout(name)[:num_steps], frame_stack).contiguous()
    n = len(data)
    lazy = LazyTensorStorage(n, device=device)
    _fill(lazy, data)
    probe = DeltaFrameStorage(n, frame_stack=frame_stack, num_threads=0, device=device)
    _fill(probe, data)
    probe.flush()
    pool = probe._indices["pixels"].pool
    chunk_bytes = pool.chunk_len * pool.frame_numel
    all_chunks = pool.num_chunks() * chunk_bytes
    configs = {
        "no device cache": 0,
        "device cache: all chunks": all_chunks,
        "device cache: 1/4 of the chunks": all_chunks // 4,
    }
    storages = {}
    for label, device_cache_bytes in configs.items():
        storage = DeltaFrameStorage(
            n,
            frame_stack=frame_stack,
            num_threads=0,
            device=device,
            device_cache_bytes=device_cache_bytes,
        )
        _fill(storage, data)
        storage.flush()
        storages[label] = storage
    rows = []
    for pattern in ("uniform", "slices"):
        batches = _batches(n, pattern)
        fns = {"lazy": _reader(lazy, batches)}
        fns |= {label: _reader(storage, batches) for label, storage in storages.items()}
        for storage in storages.values():
            storage.clear_cache()
        # the warm-up reads every batch once: the caches hold what steady sampling keeps
        timings = interleaved_timings(fns, repeats=repeats, warmup=len(batches))
        for label, storage in storages.items():
            rows.append(
                {
                    "task": name,
                    "pattern": pattern,
                    "storage": label,
                    "transitions": n,
                    "device_cache_bytes": configs[label],
                    "get_ms": timings[label].median * 1e3,
                    "get_iqr_ms": timings[label].iqr * 1e3,
                    "lazy_get_ms": timings["lazy"].median * 1e3,
                    "device_cached_bytes": storage.device_cached_bytes(),
                    "held_bytes_per_transition": storage.bytes() / n,
                }
            )
    return rows


def main(argv: list[str] | None = None) -> None:
    """Runs the benchmark and writes ``docs/benchmarks/delta_device.{md,json}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one game, one task, fewer steps")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="device of every storage")
    parser.add_argument(
        "--tasks", nargs="+", default=None, help="games and tasks to run (default: 3 + 1)"
    )
    args = parser.parse_args(argv)
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    if args.quick:
        atari, dmc, atari_steps, dmc_steps = ["Pong"], ["cartpole_swingup"], 1000, 500
    else:
        atari, dmc = ["Pong", "Breakout", "MsPacman"], ["cartpole_swingup"]
        atari_steps, dmc_steps = 4000, 1500
    if args.tasks:
        unknown = sorted(set(args.tasks) - set(ATARI_GAMES) - set(DMC_TASKS))
        if unknown:
            parser.error(f"unknown tasks {unknown}; expected some of {ATARI_GAMES + DMC_TASKS}")
        atari = [t for t in args.tasks if t in ATARI_GAMES]
        dmc = [t for t in args.tasks if t in DMC_TASKS]
    repeats = args.repeats or (5 if args.quick else 11)

    rows = [r for g in atari for r in measure_task(g, 4, atari_steps, repeats, args.device)]
    rows += [r for t in dmc for r in measure_task(t, 3, dmc_steps, repeats, args.device)]

    report = BenchmarkReport(
        "delta_device",
        "DeltaFrameStorage: frame stacks gathered through a device cache",
        description=(
            f"Batch `get` time of DeltaFrameStorage on `{args.device}` without a device cache "
            "(decoded chunks in the CPU LRU cache, 4 MiB) and with a device cache holding all "
            "or a quarter of the buffer's chunks, beside LazyTensorStorage on the same device, "
            f"on random-policy frames of the harness datasets (Atari 4x84x84 gray stacks, DMC "
            f"9x84x84 RGB = 3 frames). Batches: {BATCH} uniform indices, or {SLICES} slices of "
            f"{SLICE_LEN} consecutive transitions. Medians of interleaved repeats after every "
            "batch was read once; decoding on the calling thread, torch uses one intra-op "
            "thread."
        ),
        command=f"python -m seer_benchmarks.bench_delta_device --device {args.device}",
    )
    report.add_table(
        "Batch get time",
        [
            "task",
            "transitions",
            "batch",
            "DeltaFrameStorage",
            "get (ms)",
            "IQR (ms)",
            "LazyTensorStorage get (ms)",
            "device cache held (MB)",
            "held B / transition",
        ],
        [
            [
                r["task"],
                r["transitions"],
                r["pattern"],
                r["storage"],
                round(r["get_ms"], 2),
                round(r["get_iqr_ms"], 2),
                round(r["lazy_get_ms"], 2),
                round(r["device_cached_bytes"] / 1e6, 2),
                round(r["held_bytes_per_transition"]),
            ]
            for r in rows
        ],
    )
    report.add_note(
        "`held B / transition` is `bytes()`: it counts the device cache (decoded chunks, "
        "allocated as whole chunks). A device cache smaller than the chunks one batch "
        "touches is bypassed: such reads are gathered on the CPU and moved in one copy, as "
        "without a cache, and the cache stays empty (0 MB held)."
    )
    if torch.device(args.device).type == "cpu":
        report.add_note(
            "On the CPU the device cache saves the decoding of the chunks it holds; on a GPU "
            "it also saves the host-to-device copy of the batch. GPU figures are not "
            "measured on this page."
        )
    report.raw["rows"] = rows
    page = report.write()
    print(f"wrote {page}")


if __name__ == "__main__":
    main()
