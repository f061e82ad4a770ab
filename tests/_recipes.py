"""Runs a recipe of ``examples/`` in-process with hydra overrides, as its command line would."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import torch
from tensordict import TensorDict, TensorDictBase

from torchrl_seer.collectors import PolicyCompressor
from torchrl_seer.trainers.helpers import load_recipe_config

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_recipe(name: str) -> ModuleType:
    # as `python examples/<name>.py` does: the recipe's folder first on the path
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


def recipe_config(name: str, *overrides: str, config_name: str | None = None):
    return load_recipe_config(EXAMPLES / "configs", config_name or name, overrides)


def run_recipe(name: str, *overrides: str, config_name: str | None = None):
    return load_recipe(name).train(recipe_config(name, *overrides, config_name=config_name))


class StopAfterCheckpoint(Exception):
    """Stands for a run killed right after one of its checkpoints."""


def run_stopped_after_checkpoint(monkeypatch, stop_after: int, name: str, *overrides: str):
    """Runs a recipe until its ``stop_after``-th checkpoint is written, then stops it.

    ``RecipeRun.save`` stays patched for the rest of the test, counting checkpoints.

    Returns:
        The collector frames of every checkpoint written from now on (a list that grows).
    """
    from torchrl_seer.trainers.helpers import RecipeRun

    save, saves = RecipeRun.save, []

    def save_then_stop(self, frames, **kwargs):
        save(self, frames, **kwargs)
        saves.append(frames)
        if len(saves) == stop_after:
            raise StopAfterCheckpoint

    monkeypatch.setattr(RecipeRun, "save", save_then_stop)
    try:
        run_recipe(name, *overrides)
    except StopAfterCheckpoint:
        return saves
    raise AssertionError(f"{name} ended before its checkpoint {stop_after}.")


def assert_same_checkpoints(dir_a: Path, dir_b: Path, make_buffer=None) -> None:
    """Model/optimizer/hook state and replay buffers of two checkpoints are identical.

    Buffers are compared file by file (the filled slots of a ``TensorStorage``), or, given
    ``make_buffer`` (an empty buffer of the recipe's kind), loaded and compared by content.
    """
    a = torch.load(dir_a / "state.pt", weights_only=False)
    b = torch.load(dir_b / "state.pt", weights_only=False)
    assert a["frames"] == b["frames"]
    assert_equal_state(a["state"], b["state"], "state")
    assert_equal_state(a["rng"]["torch"], b["rng"]["torch"], "rng")
    files_a = sorted(p.relative_to(dir_a) for p in dir_a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(dir_b) for p in dir_b.rglob("*") if p.is_file())
    assert files_a == files_b
    for buffer in sorted(p for p in dir_a.iterdir() if p.name.startswith("replay_buffer_")):
        if make_buffer is None:
            _assert_same_buffer(buffer, dir_b / buffer.name)
            continue
        rb_a, rb_b = make_buffer(), make_buffer()
        rb_a.loads(buffer)
        rb_b.loads(dir_b / buffer.name)
        assert len(rb_a) == len(rb_b)
        assert (rb_a[:] == rb_b[:]).all()
        assert rb_a.writer.state_dict() == rb_b.writer.state_dict()


def _assert_same_buffer(dir_a: Path, dir_b: Path) -> None:
    """The filled part of two dumped replay buffers, their writer and sampler are identical."""
    for name in ("writer/metadata.json", "storage/storage_metadata.json"):
        assert (dir_a / name).read_text() == (dir_b / name).read_text(), name
    length = json.loads((dir_a / "storage/storage_metadata.json").read_text())["len"]
    if (dir_a / "storage" / "meta.json").exists():  # a TensorStorage: compare the filled slots
        a = TensorDict.load_memmap(dir_a / "storage")[:length]
        b = TensorDict.load_memmap(dir_b / "storage")[:length]
        assert (a == b).all(), dir_a.name
    for path in sorted(p for p in dir_a.rglob("*") if p.is_file()):
        rel = path.relative_to(dir_a)
        if rel.parts[0] != "storage" or not (dir_a / "storage" / "meta.json").exists():
            assert path.read_bytes() == (dir_b / rel).read_bytes(), rel


# wall times, throughputs and memory: they differ between two runs of the same seed (bytes
# held include caches and codec contexts, which a checkpoint does not hold)
MEASUREMENTS = ("seconds", "rss_before_bytes", "rss_after_bytes", "actor_seconds",
                "learner_seconds", "wall_seconds", "curve_seconds", "monitor/actor_steps_per_s",
                "monitor/learner_updates_per_s", "update_seconds", "step_ms", "replay_bytes",
                "budget_bytes", "pixel_storage_bytes", "pixel_bytes_per_transition")  # fmt: skip


def assert_equal_state(a, b, where: str) -> None:
    """Two nested states (dicts, lists, tensors, plain values) are equal, tensors bit for bit
    with the same dtype and shape; measurements (:data:`MEASUREMENTS`) are not compared."""
    if where.rsplit(".", 1)[-1] in MEASUREMENTS:
        return
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, TensorDictBase):  # e.g. a weight packet
        assert_equal_state(a.to_dict(), b.to_dict(), where)
    elif isinstance(a, PolicyCompressor):  # a compression pipeline is what its spec says
        assert a.spec() == b.spec(), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_state(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_equal_state(x, y, f"{where}[{i}]")
    elif not (isinstance(a, float) and a != a):
        assert a == b, where
