"""Real DeepMind Control frames for the 100k-transition benchmark, captured in resumable shards.

Each shard is one trajectory stream of ``SHARD_STEPS`` agent steps of one task under one
behaviour policy, rendered as the recipes see it (:func:`torchrl_seer.envs.make_dmc_env`:
84x84 RGB from camera 0, PlaNet's action repeat, one frame per agent step). Episodes
(1,000 physics steps) auto-reset inside a shard. The shard format is the Atari one
(:mod:`seer_benchmarks.atari_shards`): each frame once (``frames``, ``[N, 3, 84, 84]`` uint8),
per step the id of its observation frame, the action, the reward and the episode-end flags, so
:func:`~seer_benchmarks.atari_shards.stacked_transitions` builds the ``CatFrames(3, dim=-3)``
stacks (``[9, 84, 84]``) a collector writes. Actions are zero-padded to
:data:`ACTION_WIDTH` (the widest of the tasks) so that transitions of every task fit one buffer.

Policies (all seeded):

* ``random``: a uniform action in ``[-1, 1]`` each step;
* ``smooth``: an AR(1) process ``a_t = 0.9 a_{t-1} + 0.44 e_t`` clipped to ``[-1, 1]``
  (slowly varying actions, as a trained policy acts).

Rendering runs at about 16 frames/s per process on one CPU core here (Mesa EGL), so the
100k frames take about 100 minutes of one core; run several processes on disjoint shards
(``--only``). Shards live under ``seer_benchmarks/.cache/dmc_100k`` (git-ignored), written by
write-then-rename: an interrupted capture resumes at the first missing shard.

Run: ``OMP_NUM_THREADS=1 python -m seer_benchmarks.dmc_shards --transitions 100000``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from seer_benchmarks.atari_shards import capture_missing_shards, cycled_specs
from seer_benchmarks.datasets import CACHE_DIR, DMC_TASKS

__all__ = [
    "ACTION_WIDTH",
    "POLICIES",
    "SHARD_DIR",
    "SHARD_STEPS",
    "capture_shards",
    "shard_path",
    "shard_specs",
]

SHARD_DIR = CACHE_DIR / "dmc_100k"
SHARD_STEPS = 12_500
POLICIES = ("random", "smooth")
#: Actions of every task are zero-padded to this width (walker and cheetah have 6).
ACTION_WIDTH = 6


def shard_specs(num_shards: int) -> list[tuple[str, str, int]]:
    """The ``(task, policy, seed)`` of each shard, cycling through tasks then policies."""
    return cycled_specs(DMC_TASKS, POLICIES, num_shards)


def shard_path(index: int, task: str, policy: str) -> Path:
    """Where shard ``index`` is cached."""
    return SHARD_DIR / f"{index:04d}-{task}-{policy}-{SHARD_STEPS}.npz.zst"


def _policy(name: str, width: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    if name == "random":
        while True:
            yield rng.uniform(-1.0, 1.0, width).astype(np.float32)
    elif name == "smooth":
        action = np.zeros(width)
        while True:
            action = np.clip(0.9 * action + 0.44 * rng.standard_normal(width), -1.0, 1.0)
            yield action.astype(np.float32)
    else:
        raise ValueError(f"unknown policy {name!r}; expected one of {POLICIES}")


def capture_shard(task: str, policy: str, seed: int, steps: int = SHARD_STEPS) -> dict:
    """Runs ``steps`` agent steps of ``task`` under ``policy``; returns the shard arrays."""
    from torchrl_seer.envs import make_dmc_env, split_dmc_task

    env = make_dmc_env(*split_dmc_task(task), frame_stack=1, seed=seed)
    width = env.action_spec.shape[-1]
    rng = np.random.default_rng(seed)
    actions_iter = _policy(policy, width, rng)
    td = env.reset()
    frames = [td["pixels"].numpy()]
    obs_id = np.empty(steps, np.int32)
    action = np.zeros((steps, ACTION_WIDTH), np.float32)
    reward = np.empty(steps, np.float32)
    terminated = np.empty(steps, bool)
    truncated = np.empty(steps, bool)
    for t in range(steps):
        obs_id[t] = len(frames) - 1
        action[t, :width] = next(actions_iter)
        td["action"] = torch.from_numpy(action[t, :width])
        td = env.step(td)["next"]
        frames.append(td["pixels"].numpy())
        reward[t] = float(td["reward"])
        terminated[t], truncated[t] = bool(td["terminated"]), bool(td["truncated"])
        if terminated[t] or truncated[t]:
            td = env.reset()
            frames.append(td["pixels"].numpy())
        else:
            td = td.exclude("reward", "done", "terminated", "truncated")
    env.close()
    return {
        "frames": np.stack(frames),
        "obs_id": obs_id,
        "action": action,
        "reward": reward,
        "terminated": terminated,
        "truncated": truncated,
    }


def capture_shards(
    num_shards: int, *, only: list[int] | None = None, log: Path | None = None
) -> list[Path]:
    """Captures the missing shards of the first ``num_shards``; returns all their paths.

    Args:
        num_shards: how many shards the benchmark needs.

    Keyword Args:
        only: capture only these shard indices (to split the work between processes).
        log: a file to append one progress line per captured shard to.
    """
    return capture_missing_shards(
        shard_specs(num_shards), shard_path, capture_shard, only=only, log=log
    )


def main(argv: list[str] | None = None) -> None:
    """Captures the shards for ``--transitions`` transitions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=100_000)
    parser.add_argument(
        "--only", type=int, nargs="*", default=None, help="shard indices to capture (default all)"
    )
    parser.add_argument("--log", type=Path, default=SHARD_DIR / "capture.log")
    args = parser.parse_args(argv)
    capture_shards(-(-args.transitions // SHARD_STEPS), only=args.only, log=args.log)


if __name__ == "__main__":
    main()
