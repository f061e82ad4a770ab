"""A replay buffer of real frame-stacked transitions at scale: DeltaFrameStorage against TorchRL's.

Two suites of transitions, as a TorchRL collector of a ``CatFrames`` environment writes them
(observation and next observation stacks, action, reward and done flags):

* ``atari`` (default): a million transitions of stacked 4x84x84 grayscale observations from
  ten games under three behaviour policies (:mod:`seer_benchmarks.atari_shards`);
* ``dmc``: 100,000 transitions of 9x84x84 observations (three 3x84x84 RGB frames
  concatenated along the channels) from four DeepMind Control tasks under two behaviour
  policies (:mod:`seer_benchmarks.dmc_shards`, whose capture runs on its own: rendering is
  slow).

The benchmark runs in parts, each its own process, so that it fits a small machine:

* ``capture``: emulates the Atari games and caches the frames in resumable shards on disk
  (the DMC frames are captured by ``python -m seer_benchmarks.dmc_shards``);
* ``delta``: fills a :class:`~torchrl_seer.data.DeltaFrameStorage` of ``--transitions``
  transitions through a ``ReplayBuffer`` (batches of 1,000, as a collector writes), then
  measures bytes held, process RSS, extend rate, batch-32 and batch-256 sample time (one
  decoding thread and the decoding pool), checkpoint size and save/load time, and checks
  sampled transitions bit-exactly against the source frames;
* ``small``: a 5,000-transition buffer per game or task as held, against LazyTensorStorage;
* ``peers``: :class:`~torchrl.data.CompressedListStorage` in its best configurations and
  :class:`~torchrl.data.LazyTensorStorage` on an evenly spread subset (neither holds the
  full buffer in this machine's memory), with per-transition figures that the report
  extrapolates to ``--transitions``, labelled so;
* ``directions``: payload bytes per frame of zstd variants on a few chunks per shard;
* ``report``: writes the suite's page (``docs/benchmarks/delta_storage_1m.md`` for Atari,
  ``docs/benchmarks/delta_storage_dmc_100k.md`` for DMC) from the parts' results.

Run: ``python -m seer_benchmarks.bench_delta_1m {capture,delta,small,peers,directions,report}
[--suite {atari,dmc}]``.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import gc
import itertools
import json
import logging
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from tensordict import TensorDictBase
from torchrl.data import LazyTensorStorage, ReplayBuffer

from seer_benchmarks import atari_shards, dmc_shards
from seer_benchmarks.atari_shards import load_shard, stacked_transitions
from seer_benchmarks.harness import (
    DOCS_DIR,
    REPO_ROOT,
    BenchmarkReport,
    interleaved_timings,
    machine_info,
    rss_bytes,
)
from seer_benchmarks.peer_storages import flat_transitions, make_compressed_list
from torchrl_seer.data import DeltaFrameStorage
from torchrl_seer.data.chunked_frame_pool import ChunkedFramePool

__all__ = ["SUITES", "Suite", "main"]

RESULTS_DIR = REPO_ROOT / "seer_benchmarks" / "results" / "raw"
EXTEND_BATCH = 1000
BATCHES = (32, 256)
CLS_CONFIGS = ("flat, zstd-3", "flat, zstd-10")


@dataclasses.dataclass(frozen=True)
class Suite:
    """What differs between the transitions of the benchmark's suites.

    Shards are the cached frame streams of one game or task under one behaviour policy,
    ``shard_steps`` transitions each, read with
    :func:`~seer_benchmarks.atari_shards.load_shard`.
    """

    name: str
    label: str  # how the page names the transitions ("Atari", "DMC")
    unit: str  # what a shard plays ("game", "task")
    page: str  # docs/benchmarks/<page>.md
    results_prefix: str  # results/raw/<results_prefix>_<part>.json
    title: str
    description: str  # formatted with n (transitions) and shards (shards used)
    frame_stack: int
    frame_shape: tuple[int, ...]  # one frame, as stacked along dim -3
    shard_steps: int
    default_transitions: int
    peer_subset: int  # peers: transitions held by default
    small_shards: int  # small, directions: the first shards measured
    shard_specs: Callable[[int], list[tuple[str, str, int]]]
    shard_path: Callable[[int, str, str], Path]
    capture: Callable[[int], list[Path]] | None  # None: shards come from capture_command
    capture_command: str
    growth_every: int  # transitions between growth records
    marginal_span: str  # "second half" (of the growth records) or "whole fill"
    marginal_target: float
    held_target: int | None
    small_target: float | None
    mix: str  # the transitions' mix, as the targets table names it
    published_ratio: float  # the differential-encoding paper's best Lazy / held
    raw_keys: str  # the raw keys, as the bytes note describes them
    payload_comment: str = ""  # after the payload per transition (measured elsewhere)
    exception_comment: str = ""  # after the index's exception rows
    recompress_comment: str = ""  # after the recompression figures
    sample_caveat: str = ""  # after the note on separate processes
    see_also: str = ""  # the last note's closing sentence

    def lazy_row_bytes(self) -> int:
        """LazyTensorStorage's bytes for the two pixel stacks of one transition."""
        return 2 * self.frame_stack * _numel(self.frame_shape)

    def results_path(self, part: str, folder: Path | None = None) -> Path:
        """Where the raw results of ``part`` are kept."""
        return (folder or RESULTS_DIR) / f"{self.results_prefix}_{part}.json"


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


SUITES = {
    "atari": Suite(
        name="atari",
        label="Atari",
        unit="game",
        page="delta_storage_1m",
        results_prefix="delta_1m",
        title="DeltaFrameStorage at one million Atari transitions",
        description=(
            "A replay buffer of {n:,} real Atari transitions (stacked 4x84x84 uint8 "
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
        frame_stack=4,
        frame_shape=(1, 84, 84),
        shard_steps=atari_shards.SHARD_STEPS,
        default_transitions=1_000_000,
        peer_subset=20_000,
        small_shards=10,
        shard_specs=atari_shards.shard_specs,
        shard_path=atari_shards.shard_path,
        capture=atari_shards.capture_shards,
        capture_command="python -m seer_benchmarks.bench_delta_1m capture",
        growth_every=100_000,
        marginal_span="second half",
        marginal_target=450,
        held_target=150 * 10**6,
        small_target=100,
        mix="ten-game mix",
        published_ratio=14.2,
        raw_keys="int64 action, float reward, three bool flags",
        payload_comment=(
            "; these ten games average about 115 B per frame at zstd-3, Enduro and "
            "Asteroids near 200"
        ),
        exception_comment=(
            ", nearly all of them stacks that straddle two chunks whose slots are not adjacent"
        ),
        recompress_comment=(
            " Level 19 would save about 20% (zstd variants table below) but cost 0.2-0.6 s "
            "per 64-frame chunk in a spot check of 12 chunks (level 3: 0.6 ms), hours of CPU "
            "for a million transitions. Not done: the previous chunk as a zstd prefix (about "
            "-9%)."
        ),
        sample_caveat="; CompressedListStorage was measured under heavy load (its times are "
        "inflated)",
        see_also=(
            "DMC at 100,000 transitions: "
            "[DeltaFrameStorage at 100,000 DMC transitions](delta_storage_dmc_100k.md)."
        ),
    ),
    "dmc": Suite(
        name="dmc",
        label="DMC",
        unit="task",
        page="delta_storage_dmc_100k",
        results_prefix="delta_dmc_100k",
        title="DeltaFrameStorage at 100,000 DMC transitions",
        description=(
            "A replay buffer of {n:,} real DeepMind Control transitions (stacked 9x84x84 "
            "uint8 observation and next observation: three 3x84x84 RGB frames concatenated "
            "along the channels, as a TorchRL collector of a CatFrames(3, dim=-3) environment "
            "writes them, with a 6-float action zero-padded for the narrower tasks, reward and "
            "done flags) from four tasks (cartpole_swingup, walker_walk, cheetah_run, "
            "reacher_easy) under two behaviour policies (uniform random actions; smooth "
            "actions a_t = 0.9 a_(t-1) + 0.44 e_t, clipped to [-1, 1]): {shards} of the 8 "
            "shards of 12,500 consecutive agent steps (one per task and policy: the four tasks "
            "under the random policy, then under the smooth one), camera-0 renders with "
            "PlaNet's action repeat. DeltaFrameStorage is filled through a ReplayBuffer in "
            "batches of 1,000 and measured whole; LazyTensorStorage and CompressedListStorage "
            "are measured on an evenly spread subset and their per-transition figures "
            "extrapolated (labelled)."
        ),
        frame_stack=3,
        frame_shape=(3, 84, 84),
        shard_steps=dmc_shards.SHARD_STEPS,
        default_transitions=100_000,
        peer_subset=8_000,
        small_shards=8,
        shard_specs=dmc_shards.shard_specs,
        shard_path=dmc_shards.shard_path,
        capture=None,
        capture_command="python -m seer_benchmarks.dmc_shards --transitions <transitions>",
        growth_every=dmc_shards.SHARD_STEPS,
        marginal_span="whole fill",
        marginal_target=130,
        held_target=None,
        small_target=None,
        mix="{shards} task and policy shards",
        published_ratio=16.7,
        raw_keys="six float32 action values, float reward, three bool flags",
        see_also=(
            "Atari at a million transitions: "
            "[DeltaFrameStorage at one million Atari transitions](delta_storage_1m.md)."
        ),
    ),
}


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


def _num_shards(suite: Suite, transitions: int) -> int:
    return -(-transitions // suite.shard_steps)


def _shard_paths(suite: Suite, num_shards: int, *, wait: bool = False) -> list[Path]:
    """The paths of the first ``num_shards`` shards.

    Missing Atari shards are captured here; missing DMC shards raise ``SystemExit``
    naming the capture command. With ``wait``, missing shards are returned as they are
    (a capture running in another process writes them, and readers wait for them).
    """
    specs = suite.shard_specs(num_shards)
    paths = [suite.shard_path(i, name, policy) for i, (name, policy, _) in enumerate(specs)]
    if wait:
        return paths
    if suite.capture is not None:
        return suite.capture(num_shards)
    missing = [path for path in paths if not path.exists()]
    if missing:
        raise SystemExit(
            f"{len(missing)} of the {num_shards} {suite.label} shards are missing "
            f"(first: {missing[0]}); capture them with `{suite.capture_command}`, or pass "
            "--wait-for-capture to wait for a capture that is running"
        )
    return paths


def _load_when_written(path: Path) -> dict[str, Any]:
    """Loads a shard, first waiting for a capture running in another process to write it."""
    while not path.exists():
        time.sleep(5)
    return load_shard(path)


def _batches(
    suite: Suite, num_shards: int, take: int | None = None, *, wait: bool = False
) -> Iterator[TensorDictBase]:
    """Yields stacked batches of the first ``take`` steps of each shard, in buffer order.

    With ``wait``, shards missing on disk are waited for (a capture running in another
    process writes them) instead of being captured here.
    """
    take = suite.shard_steps if take is None else take
    for path in _shard_paths(suite, num_shards, wait=wait):
        shard = _load_when_written(path)
        for begin in range(0, take, EXTEND_BATCH):
            stop = min(take, begin + EXTEND_BATCH)
            yield stacked_transitions(shard, suite.frame_stack, slice(begin, stop))
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
    folder = Path(tempfile.mkdtemp(prefix="delta-ckpt-", dir=RESULTS_DIR))
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


def _verify(rb: ReplayBuffer, suite: Suite, num_shards: int, count: int) -> int:
    """Checks ``count`` random slots of a sequentially filled buffer against the shards."""
    gen = torch.Generator().manual_seed(7)
    shards = torch.randperm(num_shards, generator=gen)[: min(8, num_shards)]
    checked = 0
    paths = _shard_paths(suite, num_shards)
    for shard in shards.tolist():
        rows = torch.randint(0, suite.shard_steps, (count // len(shards),), generator=gen)
        source = stacked_transitions(load_shard(paths[shard]), suite.frame_stack, rows)
        got = rb.storage.get(rows + shard * suite.shard_steps)
        for key in ("pixels", ("next", "pixels"), "action", ("next", "done")):
            if not torch.equal(got[key], source[key]):
                raise AssertionError(f"slot mismatch on {key} in shard {shard}")
        checked += rows.numel()
    return checked


def _make_delta(suite: Suite, transitions: int, chunk_len: int) -> ReplayBuffer:
    return ReplayBuffer(
        storage=DeltaFrameStorage(transitions, frame_stack=suite.frame_stack, chunk_len=chunk_len),
        batch_size=256,
    )


def _fill(
    rb: ReplayBuffer, suite: Suite, transitions: int, *, wait: bool, base_rss: int
) -> dict[str, Any]:
    """Extends ``rb`` with the suite's first ``transitions`` transitions, in buffer order.

    Returns the extend rate, the fill's wall time and the growth records.
    """
    storage: DeltaFrameStorage = rb.storage  # type: ignore[assignment]
    extend_seconds = 0.0
    growth: list[dict[str, int]] = []
    filled = 0
    start_all = time.perf_counter()
    batches = _batches(suite, _num_shards(suite, transitions), wait=wait)
    for batch in batches:
        start = time.perf_counter()
        rb.extend(batch)
        extend_seconds += time.perf_counter() - start
        filled += len(batch)
        if filled % suite.growth_every == 0 or filled == transitions:
            growth.append(
                {
                    "transitions": filled,
                    "bytes": storage.bytes(),
                    "payload": storage._indices["pixels"].pool.payload_bytes(),
                    "frames": storage.num_frames(),
                    "rss_growth": rss_bytes() - base_rss,
                }
            )
            logging.info("filled %d transitions, %d B held", filled, storage.bytes())
        del batch
        if filled >= transitions:
            break
    batches.close()  # drops the source shard it holds
    return {
        "transitions": filled,
        "extend_transitions_per_s": filled / extend_seconds,
        "fill_wall_s": time.perf_counter() - start_all,
        "growth": growth,
    }


def _held_parts(storage: DeltaFrameStorage) -> dict[str, int]:
    """The bytes held, by part (what is not in a named part is bookkeeping)."""
    index = storage._indices["pixels"]
    parts = {
        "payload": index.pool.payload_bytes(),
        "index_table": index.table.nbytes(),
        "raw_keys": _tensor_bytes(storage._storage),
        "codec_contexts": storage.codec.memory_bytes(),
        "decoded_cache": index.pool.cached_bytes(),
    }
    parts["bookkeeping"] = storage.bytes() - sum(parts.values())
    return parts


def _delta_sample_timings(rb: ReplayBuffer, repeats: int) -> dict[int, dict[str, Any]]:
    """Batch-32 and batch-256 sample times, decoding on the calling thread and on the pool."""
    storage: DeltaFrameStorage = rb.storage  # type: ignore[assignment]
    single = ReplayBuffer(storage=storage, batch_size=256)
    timings = {}
    for batch_size in BATCHES:
        storage.num_threads = storage._indices["pixels"].pool.num_threads = 0
        one = _sample_timings({"delta_1_thread": single}, batch_size, repeats)
        pool_threads = ChunkedFramePool.default_num_threads()
        storage._indices["pixels"].pool.num_threads = pool_threads
        pooled = _sample_timings({f"delta_{pool_threads}_threads": rb}, batch_size, repeats)
        timings[batch_size] = {**one, **pooled}
    return timings


def run_delta(args: argparse.Namespace, suite: Suite) -> dict[str, Any]:
    """Fills a DeltaFrameStorage with ``args.transitions`` transitions and measures it.

    Then, for each of ``args.compare_chunk_lens``, fills another one with that chunk length
    and measures its bytes and sample times.
    """
    num_shards = _num_shards(suite, args.transitions)
    base_rss = _settled_rss()
    rb = _make_delta(suite, args.transitions, args.chunk_len)
    fill = _fill(rb, suite, args.transitions, wait=args.wait_for_capture, base_rss=base_rss)
    storage: DeltaFrameStorage = rb.storage  # type: ignore[assignment]
    held = storage.bytes()
    rss_growth = _settled_rss() - base_rss
    index = storage._indices["pixels"]
    parts = _held_parts(storage)
    timings = _delta_sample_timings(rb, args.repeats)
    recompressed = None
    if args.recompress_level:
        # the sample timings filled the decoded-chunk cache: emptied, as after the fill
        cached = index.pool.cached_bytes()
        storage.clear_cache()
        start = time.perf_counter()
        saved = storage.recompress(args.recompress_level)
        recompressed = {
            "level": args.recompress_level,
            "seconds": time.perf_counter() - start,
            "saved_bytes": saved,
            "held_bytes": storage.bytes(),
            "payload": index.pool.payload_bytes(),
            "chunks": index.pool.num_chunks(),
            "cache_emptied_bytes": cached,
        }
        logging.info("recompressed: %s", recompressed)
    checkpoint, restored = _checkpoint(
        rb, lambda: _make_delta(suite, args.transitions, args.chunk_len)
    )
    checked = _verify(restored, suite, num_shards, args.verify)
    record = {
        "suite": suite.name,
        "shards": num_shards,
        "chunk_len": args.chunk_len,
        **fill,
        "held_bytes": held,
        "held_parts": parts,
        "index_exception_rows": index.table.num_exceptions(),
        "recompressed": recompressed,
        "frames": storage.num_frames(),
        "rss_growth": rss_growth,
        "sample": timings,
        "checkpoint": checkpoint,
        "verified_slots": checked,
    }
    del rb, storage, index, restored
    variants = []
    for chunk_len in args.compare_chunk_lens:
        other = _make_delta(suite, args.transitions, chunk_len)
        other_fill = _fill(other, suite, args.transitions, wait=False, base_rss=base_rss)
        variants.append(
            {
                "chunk_len": chunk_len,
                **other_fill,
                "held_bytes": other.storage.bytes(),
                "held_parts": _held_parts(other.storage),  # type: ignore[arg-type]
                "sample": _delta_sample_timings(other, args.repeats),
            }
        )
        logging.info("chunk_len %d: %d B held", chunk_len, variants[-1]["held_bytes"])
        del other
    if variants:
        record["chunk_len_variants"] = variants
    return record


def run_small(args: argparse.Namespace, suite: Suite) -> list[dict[str, Any]]:
    """A ``args.small``-transition buffer per game or task as held (fixed costs included)."""
    rows = []
    num_shards = min(suite.small_shards, _num_shards(suite, args.transitions))
    paths = _shard_paths(suite, num_shards, wait=args.wait_for_capture)
    for (name, policy, _), path in zip(suite.shard_specs(num_shards), paths, strict=True):
        shard = _load_when_written(path)
        data = stacked_transitions(shard, suite.frame_stack, slice(0, args.small)).contiguous()
        del shard
        rb = ReplayBuffer(storage=DeltaFrameStorage(args.small, frame_stack=suite.frame_stack))
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
                suite.unit: name,
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


def run_directions(args: argparse.Namespace, suite: Suite) -> dict[str, Any]:
    """Payload bytes per frame of zstd variants on 8 consecutive 64-frame chunks per shard.

    Level 3 (the default), levels 9 and 19 (a recompression of sealed chunks off the hot
    path), and level 3 with the previous chunk's last 8 frames as a raw-content prefix.
    """
    import zstandard

    out: dict[str, Any] = {}
    for index, (name, policy, _) in enumerate(suite.shard_specs(suite.small_shards)):
        frames = load_shard(suite.shard_path(index, name, policy))["frames"][2000 : 2000 + 64 * 9]
        frame_bytes = frames[0].nbytes
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
        # one shard per Atari game; DMC shards of one task differ by policy
        out[name if suite.name == "atari" else f"{name}/{policy}"] = row
    return out


def run_peers(args: argparse.Namespace, suite: Suite) -> dict[str, Any]:
    """CompressedListStorage and LazyTensorStorage on an evenly spread subset."""
    num_shards = _num_shards(suite, args.transitions)
    per_shard = args.subset // num_shards
    results: dict[str, Any] = {"subset": per_shard * num_shards, "per_shard": per_shard}
    subset = list(_batches(suite, num_shards, per_shard, wait=args.wait_for_capture))
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


def load_part(suite: Suite, part: str, folder: Path | None = None) -> dict[str, Any] | None:
    """The raw results of one part of ``suite`` (``None`` if that part has not run)."""
    path = suite.results_path(part, folder)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def save_part(suite: Suite, part: str, record: dict[str, Any]) -> None:
    """Keeps the raw results of one part of ``suite``, with the machine record."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    record["machine"] = machine_info()
    suite.results_path(part).write_text(json.dumps(record, indent=2))


def _mb(value: float) -> str:
    return f"{value / 1e6:,.1f} MB"


def _count(n: int) -> str:
    return "a million" if n == 1_000_000 else f"{n:,}"


def _short(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else f"{n:,}"


def _marginal(delta: dict[str, Any], span: str) -> tuple[float, float, float] | None:
    """Payload and bookkeeping growth, preallocated row bytes and their sum, per transition.

    ``span="second half"``: the growth of the held bytes over the second half of the growth
    records. ``span="whole fill"``: the payload and bookkeeping held at the end over the
    transitions (every shard of the mix counts alike; the fixed codec contexts and decoded
    cache are left out). The index row and raw-keys row are the preallocated tables (and the
    index's exception rows) divided by the capacity.
    """
    growth, parts, n = delta["growth"], delta["held_parts"], delta["transitions"]
    if span == "whole fill":
        payload = (parts["payload"] + parts["bookkeeping"]) / n
    elif len(growth) < 2:
        return None
    else:
        first, last = growth[len(growth) // 2], growth[-1]
        payload = (last["bytes"] - first["bytes"]) / (last["transitions"] - first["transitions"])
    rows = parts["index_table"] / n + parts["raw_keys"] / n
    return payload, rows, payload + rows


def _per_shard_payload(delta: dict[str, Any], suite: Suite) -> list[tuple[str, str, float]]:
    """Sealed-payload growth per transition of each shard, from one growth record per shard.

    Empty unless the growth records fall on the shard boundaries.
    """
    growth = delta["growth"]
    if suite.growth_every != suite.shard_steps or any("payload" not in g for g in growth):
        return []
    specs = suite.shard_specs(len(growth))
    out, payload, transitions = [], 0, 0
    for (name, policy, _), record in zip(specs, growth, strict=True):
        steps = record["transitions"] - transitions
        out.append((name, policy, (record["payload"] - payload) / steps))
        payload, transitions = record["payload"], record["transitions"]
    return out


def _comparison_rows(
    folder: Path,
    suite: Suite,
    delta: dict[str, Any],
    small: dict[str, Any] | None,
    lazy_per: float,
) -> list[list[Any]]:
    """Headline figures of an earlier run (raw results in ``folder``) beside this run's."""
    previous = load_part(suite, "delta", folder)
    if previous is None:
        raise SystemExit(f"no delta part results in {folder}")
    earlier_small = load_part(suite, "small", folder)
    rows: list[list[Any]] = []
    for label, part in (("bytes held", None), ("index table", "index_table")):
        before = previous["held_bytes"] if part is None else previous["held_parts"][part]
        after = delta["held_bytes"] if part is None else delta["held_parts"][part]
        rows.append([label, _mb(before), _mb(after)])
    if delta.get("recompressed"):
        level, after = delta["recompressed"]["level"], delta["recompressed"]["held_bytes"]
        rows.append([f"bytes held after recompress({level})", "-", _mb(after)])
    before_m = _marginal(previous, suite.marginal_span)
    after_m = _marginal(delta, suite.marginal_span)
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


def _target_row(figure: str, measured: str, target: str, met: str | bool | None) -> list[str]:
    """One row of the targets table; ``met=None``: no target set, reported only."""
    if met is None:
        return [figure, measured, "-", "-"]
    return [figure, measured, target, ("yes" if met else "no") if isinstance(met, bool) else met]


def write_report(args: argparse.Namespace, suite: Suite, *, out_dir: Path = DOCS_DIR) -> Path:
    """Writes the suite's page from the parts' results."""
    delta = load_part(suite, "delta")
    peers = load_part(suite, "peers")
    small = load_part(suite, "small")
    if delta is None:
        raise SystemExit(f"run the 'delta' part of the {suite.name} suite first")
    n = delta["transitions"]
    lazy_row = suite.lazy_row_bytes()
    lazy_other = None
    report = BenchmarkReport(
        suite.page,
        suite.title,
        description=suite.description.format(
            n=n, shards=delta.get("shards", _num_shards(suite, n))
        ),
        command=(
            "python -m seer_benchmarks.bench_delta_1m {capture,delta,small,peers,directions,report}"
            + ("" if suite.name == "atari" else f" --suite {suite.name}")
        ),
        out_dir=out_dir,
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
            _comparison_rows(args.previous, suite, delta, small, lazy_per),
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
    figures = _marginal(delta, suite.marginal_span)
    if figures is not None:
        payload_marginal, row_bytes, marginal = figures
        report.add_table(
            "Marginal bytes per added transition",
            ["figure", "value"],
            [
                [
                    "payload and bookkeeping growth (second half of the fill)"
                    if suite.marginal_span == "second half"
                    else "payload and bookkeeping held / transitions (whole fill, "
                    f"{_mix(suite, delta)})",
                    round(payload_marginal, 1),
                ],
                ["index row + raw keys row (preallocated)", round(row_bytes, 1)],
                ["marginal bytes / transition", round(marginal, 1)],
                ["LazyTensorStorage bytes / transition", round(lazy_per)],
                ["Lazy / marginal", f"{lazy_per / marginal:.0f}x"],
            ],
        )
    per_shard = _per_shard_payload(delta, suite)
    if figures is not None and per_shard:
        report.add_table(
            f"Marginal bytes per transition by {suite.unit} and policy (sealed payload growth "
            "while the shard was written, plus the index and raw-keys rows)",
            [
                suite.unit,
                "policy",
                "payload B / transition",
                "marginal B / transition",
                "Lazy / marginal",
            ],
            [
                [
                    name,
                    policy,
                    round(payload, 1),
                    round(payload + row_bytes, 1),
                    f"{lazy_per / (payload + row_bytes):.0f}x",
                ]
                for name, policy, payload in per_shard
            ],
        )
    variants = delta.get("chunk_len_variants")
    if variants:
        report.add_table(
            f"Chunk length: bytes held against sample time ({n:,} transitions, one fill each)",
            [
                "chunk_len",
                "bytes held",
                "marginal bytes / transition",
                "Lazy / marginal",
                "batch-256 sample ms (1 thread / pool)",
                "batch-256 sample / Lazy (1 thread / pool)",
            ],
            [
                _chunk_len_row(record, suite, lazy_per, peers)
                for record in sorted([delta, *variants], key=lambda r: r["chunk_len"])
            ],
        )
    if len(growth) >= 2:
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
                suite.unit,
                "policy",
                "held after writing",
                "held after 4 batch-256 samples",
                "LazyTensorStorage",
                "Lazy / held (after samples)",
            ],
            [
                [
                    r[suite.unit],
                    r["policy"],
                    _mb(r["held_bytes"]),
                    _mb(r["held_after_reads"]),
                    _mb(r["lazy_bytes"]),
                    f"{r['ratio']:.0f}x ({r['ratio_after_reads']:.0f}x)",
                ]
                for r in small["rows"]
            ],
        )
    report.add_table(
        "Targets",
        ["figure", "measured", "target", "met"],
        _targets(suite, delta, peers, small, lazy_per, figures),
    )
    directions = load_part(suite, "directions")
    text = (
        f"Where the bytes go. Of the {_mb(held)} held after the fill, the frame payload is "
        f"{_mb(parts['payload'])} ({parts['payload'] / n:.0f} B per transition"
        f"{suite.payload_comment or _per_shard_comment(per_shard)}), the "
        f"frame-id index {_mb(parts['index_table'])} (6 B per row: the newest frame id, the "
        "step to the newest next frame and both padding counts; "
        f"{delta['index_exception_rows']:,} rows, "
        f"{100 * delta['index_exception_rows'] / n:.1f}%, keep their "
        f"{2 * suite.frame_stack} ids verbatim in the exception table"
        f"{suite.exception_comment}) and the raw keys {_mb(parts['raw_keys'])} "
        f"({suite.raw_keys}, as LazyTensorStorage holds them)."
    )
    recompressed = delta.get("recompressed")
    if recompressed:
        text += (
            f" After the fill and the sample timings, recompress({recompressed['level']}) "
            f"re-encoded the {recompressed['chunks']:,} sealed chunks in "
            f"{recompressed['seconds']:.0f} s of one core "
            f"({1e3 * recompressed['seconds'] / recompressed['chunks']:.1f} ms per chunk) and "
            f"saved {_mb(recompressed['saved_bytes'])} "
            f"({100 * recompressed['saved_bytes'] / parts['payload']:.1f}% of the payload), "
            f"leaving {_mb(recompressed['held_bytes'])} held"
            + (
                f" (the {_mb(recompressed['cache_emptied_bytes'])} of decoded chunks that the "
                "sample timings had cached emptied first, as after the fill)"
                if "cache_emptied_bytes" in recompressed
                else ""
            )
            + f"; the checkpoint was written after it.{suite.recompress_comment}"
        )
    report.add_note(text)
    if peers is not None:
        lazy_256 = peers["lazy"]["sample"]["256"]["lazy"]["median_s"]
        one_256 = delta_sample["256"]["delta_1_thread"]["median_s"]
        pool_256 = delta_sample["256"][pool_key]["median_s"]
        if one_256 > lazy_256:
            report.add_note(
                "Why sampling is slower than LazyTensorStorage here. A uniform batch of 256 "
                f"from {_count(n)} transitions touches about 256-512 distinct "
                f"{delta['chunk_len']}-frame chunks "
                "(observation and next stacks can straddle two), almost none of them in the "
                "4 MiB decoded-chunk cache, so each batch decodes on average half a chunk per "
                f"touched chunk: {one_256 * 1e3:.0f} ms against LazyTensorStorage's "
                f"{lazy_256 * 1e3:.0f} ms copy of the same {256 * lazy_row / 1e6:.0f} MB. On "
                "small buffers (the delta_storage page) most chunks are cached and reads were "
                "faster than LazyTensorStorage's. "
                + (
                    "The decoding pool did not help on this 2-core machine shared with other jobs. "
                    if pool_256 >= one_256
                    else f"The decoding pool took {pool_256 * 1e3:.0f} ms on this 2-core "
                    "machine shared with other jobs. "
                )
                + (
                    "Shorter chunks decode fewer frames per sampled row, at some payload cost "
                    "(chunk-length table). Not done yet: a decoded hot tier."
                    if variants
                    else "Not done yet: shorter chunks for large buffers "
                    "(fewer frames decoded per sampled row, at some payload cost) and a decoded "
                    "hot tier."
                )
            )
    if directions:
        directions.pop("machine", None)
        labels = [k for k in next(iter(directions.values())) if "ms" not in k]
        means = {k: statistics.mean(row[k] for row in directions.values()) for k in labels}
        report.add_table(
            f"Payload bytes per frame of zstd variants (8 chunks of 64 frames per {suite.unit})",
            [suite.unit, *labels],
            [[name, *(round(row[k], 1) for k in labels)] for name, row in directions.items()]
            + [["mean", *(round(means[k], 1) for k in labels)]],
        )
    report.add_note(
        "Configurations. LazyTensorStorage: TorchRL's default tensor storage, stacked uint8 "
        f"pixels and next pixels plus the scalar keys, preallocated; at {_count(n)} "
        "transitions it needs the computed size above, "
        + (
            "which this machine (23 GB, shared) cannot hold"
            if lazy_per * n > 10**10
            else "not allocated on this machine (23 GB, shared with other jobs)"
        )
        + ", so its sample times come from the subset. CompressedListStorage: "
        "TorchRL 0.14.1, given "
        "flat transitions (every nested key moved to the top level, so both pixel stacks are "
        "compressed; nested entries would be stored raw), python-zstandard at levels 3 and 10 "
        "through compression_fn/decompression_fn (the smallest configurations of the sweep in "
        "the delta_storage page; its default zlib is larger and slower); bytes held is its own "
        "bytes() (compressed payloads only), the RSS figure adds its per-item Python objects. "
        "DeltaFrameStorage: defaults (zstd-3, chunks of "
        f"{delta['chunk_len']} frames, 4 MiB decoded-chunk cache, decoding pool of "
        f"{pool_key.split('_')[1]} threads), frame_stack={suite.frame_stack}."
    )
    if peers is not None:
        best_cls = min(CLS_CONFIGS, key=lambda c: peers[c]["bytes"] / peers[c]["transitions"])
        cls_per = peers[best_cls]["bytes"] / peers[best_cls]["transitions"]
        cls_ckpt = peers[best_cls]["checkpoint"]
        save_ms = statistics.mean(
            1e3 * peers[c]["checkpoint"]["save_s"] / peers[c]["checkpoint"]["transitions"]
            for c in CLS_CONFIGS
        )
        report.add_note(
            f"Ratios. LazyTensorStorage / DeltaFrameStorage as held: {lazy_per * n / held:.0f}x; "
            f"LazyTensorStorage / CompressedListStorage ({best_cls}, its own bytes()): "
            f"{lazy_per / cls_per:.1f}x; the published figure of the differential-encoding "
            f"paper (Grossman & Plancher, ICRA 2024) is {suite.published_ratio}x on "
            f"{suite.label} at best. The peers' subset is {peers['subset']:,} transitions, the "
            f"first {peers['per_shard']:,} of each of the first "
            f"{peers['subset'] // peers['per_shard']} shards "
            f"({_coverage(suite, peers['subset'] // peers['per_shard'])}); "
            "CompressedListStorage checkpoints were measured on its first "
            f"{cls_ckpt['transitions']:,} transitions (TorchRL's checkpointer for it spends "
            f"about {round(save_ms, -1):.0f} ms per "
            "item here) and scaled linearly."
        )
    report.add_note(
        "Sample time is ReplayBuffer.sample with the default RandomSampler (uniform over the "
        f"whole buffer), median of {args.repeats} repeats. DeltaFrameStorage ({_short(n)}) and "
        "the peers (subset) ran in separate processes at different times, so their ratio is "
        "not an interleaved measurement (the raw results record when and at which commit each "
        f"part ran){suite.sample_caveat}. Checkpoints use each "
        "storage's own checkpointer (ReplayBuffer.dumps/loads); subset checkpoint figures are "
        "scaled linearly. "
        f"{delta['verified_slots']:,} random slots of the restored DeltaFrameStorage were "
        "checked bit-exactly against the source frames."
    )
    report.add_note(
        "The machine's 2 CPU cores were shared with other work while these figures were "
        "measured; times are medians but carry that noise. No GPU was used. "
        f"{suite.see_also}"
    )
    if args.note:
        report.add_note(args.note)
    report.raw.update({"delta": delta, "peers": peers, "small": small, "lazy_other": lazy_other})
    return report.write()


def _chunk_len_row(
    record: dict[str, Any], suite: Suite, lazy_per: float, peers: dict[str, Any] | None
) -> list[Any]:
    """One row of the chunk-length table, from a fill's record."""
    marginal = _marginal(record, suite.marginal_span)
    one, pool = (
        record["sample"]["256"][key]["median_s"]
        for key in ("delta_1_thread", next(k for k in record["sample"]["256"] if "threads" in k))
    )
    lazy_256 = peers["lazy"]["sample"]["256"]["lazy"]["median_s"] if peers else None
    return [
        record["chunk_len"],
        _mb(record["held_bytes"]),
        round(marginal[2], 1) if marginal else "-",
        f"{lazy_per / marginal[2]:.0f}x" if marginal else "-",
        f"{one * 1e3:.0f} / {pool * 1e3:.0f}",
        f"{one / lazy_256:.2f} / {pool / lazy_256:.2f}" if lazy_256 else "-",
    ]


def _mix(suite: Suite, delta: dict[str, Any]) -> str:
    """The transitions' mix, as the targets table names it."""
    return suite.mix.format(shards=delta.get("shards", _num_shards(suite, delta["transitions"])))


def _coverage(suite: Suite, num_shards: int) -> str:
    """Which games or tasks and policies the first ``num_shards`` shards cover."""
    policies = sorted({policy for _, policy, _ in suite.shard_specs(num_shards)})
    if len(policies) > 1:
        return f"every {suite.unit} and policy"
    return f"every {suite.unit}, {policies[0]} policy"


def _per_shard_comment(per_shard: list[tuple[str, str, float]]) -> str:
    """The range of the payload per transition over shards, for the bytes note."""
    if not per_shard:
        return ""
    low = min(per_shard, key=lambda row: row[2])
    high = max(per_shard, key=lambda row: row[2])
    return (
        f"; from {low[2]:.0f} B ({low[0]}, {low[1]}) to {high[2]:.0f} B ({high[0]}, "
        f"{high[1]}) by shard"
    )


def _targets(
    suite: Suite,
    delta: dict[str, Any],
    peers: dict[str, Any] | None,
    small: dict[str, Any] | None,
    lazy_per: float,
    marginal_figures: tuple[float, float, float] | None,
) -> list[list[str]]:
    """The targets table: each target the suite sets, measured (figures without one: ``-``)."""
    n, held, parts = delta["transitions"], delta["held_bytes"], delta["held_parts"]
    cap = suite.held_target
    targets = [
        _target_row(
            f"bytes held, {n:,} {suite.label} transitions",
            _mb(held),
            f"<= {cap // 10**6} MB" if cap else "",
            None if cap is None else ("yes" if held <= cap else f"no, by {_mb(held - cap)}"),
        )
    ]
    recompressed = delta.get("recompressed")
    if recompressed:
        after = recompressed["held_bytes"]
        targets.append(
            _target_row(
                f"bytes held after recompress({recompressed['level']})",
                _mb(after),
                f"<= {cap // 10**6} MB" if cap else "",
                None if cap is None else ("yes" if after <= cap else f"no, by {_mb(after - cap)}"),
            )
        )
    goal = suite.marginal_target
    if marginal_figures is not None:
        payload_marginal, row_bytes, marginal = marginal_figures
        ratio = lazy_per / marginal
        targets.append(
            _target_row(
                f"Lazy / marginal bytes per transition ({_mix(suite, delta)})",
                f"{ratio:.0f}x",
                f">= {goal:.0f}x",
                "yes"
                if ratio >= goal
                else f"no ({marginal:.0f} B; {goal:.0f}x needs {lazy_per / goal:.0f} B)",
            )
        )
        if recompressed:
            # the fill's payload growth scaled by what recompression kept of the payload
            kept = recompressed["payload"] / parts["payload"]
            estimate = payload_marginal * kept + row_bytes
            targets.append(
                _target_row(
                    "Lazy / marginal bytes per transition after recompress("
                    f"{recompressed['level']}) (estimated: payload growth x recompressed / "
                    "original payload)",
                    f"{lazy_per / estimate:.0f}x",
                    f">= {goal:.0f}x",
                    "yes"
                    if lazy_per / estimate >= goal
                    else f"no ({estimate:.0f} B; {goal:.0f}x needs {lazy_per / goal:.0f} B)",
                )
            )
    if small:
        small_median = statistics.median(r["ratio_after_reads"] for r in small["rows"])
        targets.append(
            _target_row(
                f"{small['rows'][0]['transitions']:,}-transition buffer as held after samples, "
                f"Lazy / held (median over {suite.unit}s)",
                f"{small_median:.0f}x",
                f">= {suite.small_target:.0f}x" if suite.small_target else "",
                None if suite.small_target is None else small_median >= suite.small_target,
            )
        )
    if peers is not None:
        lazy_256 = peers["lazy"]["sample"]["256"]["lazy"]["median_s"]
        pool_key = next(k for k in delta["sample"]["256"] if k != "delta_1_thread")
        for label, key in (("pool", pool_key), ("1 thread", "delta_1_thread")):
            ratio = delta["sample"]["256"][key]["median_s"] / lazy_256
            targets.append(
                _target_row(
                    f"batch-256 sample / Lazy ({label}; Lazy on the subset, another process)",
                    f"{ratio:.2f}",
                    "<= 1.0",
                    (ratio <= 1.0) if label == "pool" else None,
                )
            )
    return targets


def main(argv: list[str] | None = None) -> None:
    """Runs one part of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "part", choices=["capture", "delta", "small", "peers", "directions", "report"]
    )
    parser.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="atari",
        help="atari: 1M transitions of 4x84x84 gray stacks; dmc: 100k of 9x84x84 RGB stacks",
    )
    parser.add_argument(
        "--transitions", type=int, default=None, help="default: 1,000,000 (atari), 100,000 (dmc)"
    )
    parser.add_argument("--chunk-len", type=int, default=64)
    parser.add_argument(
        "--subset",
        type=int,
        default=None,
        help="peers: transitions held (default: 20,000 (atari), 8,000 (dmc))",
    )
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
        help="delta, small, peers: wait for shards that a capture running elsewhere writes",
    )
    parser.add_argument("--verify", type=int, default=2_000, help="delta: slots checked")
    parser.add_argument(
        "--compare-chunk-lens",
        type=int,
        nargs="*",
        default=[],
        help="delta: also fill a storage with each of these chunk lengths (bytes, sample times)",
    )
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
    suite = SUITES[args.suite]
    if args.transitions is None:
        args.transitions = suite.default_transitions
    if args.subset is None:
        args.subset = suite.peer_subset
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("torchrl").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    if args.part == "capture":
        if suite.capture is None:
            parser.error(f"the {suite.name} frames are captured by `{suite.capture_command}`")
        suite.capture(_num_shards(suite, args.transitions))
    elif args.part == "delta":
        save_part(suite, "delta", run_delta(args, suite))
    elif args.part == "small":
        save_part(suite, "small", {"rows": run_small(args, suite)})
    elif args.part == "peers":
        # a run of some peers keeps the others' earlier figures
        save_part(suite, "peers", {**(load_part(suite, "peers") or {}), **run_peers(args, suite)})
    elif args.part == "directions":
        save_part(suite, "directions", run_directions(args, suite))
    else:
        print(f"wrote {write_report(args, suite)}")


if __name__ == "__main__":
    main()
