"""The scale benchmark of DeltaFrameStorage: its DMC suite on tiny synthetic shards, and the
Atari page reproduced from its published raw figures by the report writer both suites share."""

import argparse
import dataclasses
import json

import numpy as np
import pytest

from seer_benchmarks import bench_delta_1m, dmc_shards
from seer_benchmarks.atari_shards import write_shard
from seer_benchmarks.harness import DOCS_DIR

STEPS = 40


def _dmc_like_shard(seed: int) -> dict[str, np.ndarray]:
    """A shard in the capture's layout: 3x8x8 RGB frames, two episode ends, 6-float actions."""
    rng = np.random.default_rng(seed)
    ends = {STEPS // 3: "terminated", 2 * STEPS // 3: "truncated"}
    frames = [rng.integers(0, 256, (3, 8, 8), dtype=np.uint8)]
    shard = {
        "obs_id": np.empty(STEPS, np.int32),
        "action": np.zeros((STEPS, dmc_shards.ACTION_WIDTH), np.float32),
        "reward": rng.standard_normal(STEPS).astype(np.float32),
        "terminated": np.zeros(STEPS, bool),
        "truncated": np.zeros(STEPS, bool),
    }
    for t in range(STEPS):
        shard["obs_id"][t] = len(frames) - 1
        shard["action"][t, :4] = rng.uniform(-1, 1, 4)
        frames.append(rng.integers(0, 256, (3, 8, 8), dtype=np.uint8))
        if t in ends:
            shard[ends[t]][t] = True
            frames.append(rng.integers(0, 256, (3, 8, 8), dtype=np.uint8))  # the reset frame
    return {"frames": np.stack(frames), **shard}


@pytest.fixture
def tiny_dmc(tmp_path, monkeypatch):
    """The DMC suite at 3x8x8 frames and 40-step shards, its shards and results in tmp_path."""
    monkeypatch.setattr(dmc_shards, "SHARD_DIR", tmp_path / "shards")
    monkeypatch.setattr(bench_delta_1m, "RESULTS_DIR", tmp_path / "raw")
    (tmp_path / "shards").mkdir()
    (tmp_path / "raw").mkdir()
    return dataclasses.replace(
        bench_delta_1m.SUITES["dmc"], shard_steps=STEPS, growth_every=STEPS, frame_shape=(3, 8, 8)
    )


def _args(**overrides) -> argparse.Namespace:
    args = {
        "transitions": 2 * STEPS,
        "chunk_len": 16,
        "wait_for_capture": False,
        "repeats": 1,
        "recompress_level": 9,
        "verify": 20,
        "compare_chunk_lens": [],
        "small": 30,
        "subset": 16,
        "peers": [*bench_delta_1m.CLS_CONFIGS, "lazy"],
        "checkpoint_subset": 4,
        "previous": None,
        "note": "",
        "previous_label": "",
    }
    return argparse.Namespace(**{**args, **overrides})


def test_dmc_suite_refuses_missing_shards_naming_the_capture(tiny_dmc):
    with pytest.raises(SystemExit, match=r"2 of the 2 DMC shards are missing.*dmc_shards"):
        bench_delta_1m.run_delta(_args(), tiny_dmc)


def test_dmc_suite_measures_its_shards_and_writes_its_own_page(tiny_dmc, tmp_path):
    for index, (task, policy, _) in enumerate(tiny_dmc.shard_specs(2)):
        write_shard(tiny_dmc.shard_path(index, task, policy), _dmc_like_shard(index))
    args = _args(compare_chunk_lens=[8])
    delta = bench_delta_1m.run_delta(args, tiny_dmc)
    # every sampled slot of the restored checkpoint was compared with the shards' stacks
    assert delta["verified_slots"] == 20 and delta["transitions"] == 2 * STEPS
    assert [g["transitions"] for g in delta["growth"]] == [STEPS, 2 * STEPS]  # one per shard
    bench_delta_1m.save_part(tiny_dmc, "delta", delta)
    small = bench_delta_1m.run_small(args, tiny_dmc)
    assert [(r["task"], r["policy"]) for r in small] == [
        ("cartpole_swingup", "random"),
        ("walker_walk", "random"),
    ]
    # LazyTensorStorage's bytes of 30 stacked transitions: two 9x8x8 stacks and the raw keys
    assert small[0]["lazy_bytes"] == 30 * (2 * 9 * 64 + 6 * 4 + 4 + 3)
    bench_delta_1m.save_part(tiny_dmc, "small", {"rows": small})
    bench_delta_1m.save_part(tiny_dmc, "peers", bench_delta_1m.run_peers(args, tiny_dmc))
    assert sorted(p.name for p in (tmp_path / "raw").glob("*.json")) == [
        "delta_dmc_100k_delta.json",
        "delta_dmc_100k_peers.json",
        "delta_dmc_100k_small.json",
    ]

    page = bench_delta_1m.write_report(args, tiny_dmc, out_dir=tmp_path / "docs")
    assert page.name == "delta_storage_dmc_100k.md"
    record = json.loads(page.with_suffix(".json").read_text())
    tables = {t["title"].split(" (")[0]: t for t in record["tables"]}
    marginal = dict(tables["Marginal bytes per added transition"]["rows"])
    parts, n = delta["held_parts"], delta["transitions"]
    # the whole fill: payload and bookkeeping held per transition, then the preallocated rows
    expected = (parts["payload"] + parts["bookkeeping"]) / n
    label = "payload and bookkeeping held / transitions (whole fill, 2 task and policy shards)"
    assert marginal[label] == pytest.approx(expected, abs=0.05)
    by_task = tables["Marginal bytes per transition by task and policy"]["rows"]
    assert [row[:2] for row in by_task] == [
        ["cartpole_swingup", "random"],
        ["walker_walk", "random"],
    ]
    targets = {row[0]: row[2] for row in tables["Targets"]["rows"]}
    assert targets["Lazy / marginal bytes per transition (2 task and policy shards)"] == ">= 130x"
    assert targets[f"bytes held, {n:,} DMC transitions"] == "-"  # no target set for DMC
    chunk_lens = tables["Chunk length: bytes held against sample time"]["rows"]
    assert [row[0] for row in chunk_lens] == [8, 16]  # the other fill, then the main one
    assert "frame_stack=3" in page.read_text()


def test_atari_page_is_reproduced_from_its_raw_figures(tmp_path, monkeypatch):
    published = json.loads((DOCS_DIR / "delta_storage_1m.json").read_text())
    monkeypatch.setattr(bench_delta_1m, "RESULTS_DIR", tmp_path)
    atari = bench_delta_1m.SUITES["atari"]
    for part in ("delta", "peers", "small"):
        atari.results_path(part).write_text(json.dumps(published["raw"][part]))
    page = bench_delta_1m.write_report(_args(repeats=11), atari, out_dir=tmp_path / "docs")
    record = json.loads(page.with_suffix(".json").read_text())
    # the earlier-run table needs that run's raw results, the zstd variants the directions part
    left_out = ("DeltaFrameStorage: an earlier run", "Payload bytes per frame")
    published_tables = [t for t in published["tables"] if not t["title"].startswith(left_out)]
    assert record["tables"] == published_tables
    assert record["notes"] == published["notes"][: len(record["notes"])]  # then the run's note
