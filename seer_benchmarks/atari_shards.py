"""Real Atari frames for the million-transition benchmark, captured in resumable shards.

Each shard is one trajectory stream of ``SHARD_STEPS`` agent steps of one game under one
behaviour policy, run through the DQN preprocessing of :func:`torchrl_seer.envs.make_atari_env`
(gymnasium's ``AtariPreprocessing``: no-op starts, frame skip 4 with max-pooling, grayscale,
84x84 area resize). Episodes auto-reset inside a shard. A shard holds each emulator frame
once (``frames``: the reset frame of every episode, then each step's next frame) plus, per
step, the id of its observation frame in ``frames`` (its next frame is the following one),
the action, the reward and the terminated/truncated flags. :func:`stacked_transitions` turns
a shard into the stacked transitions (``pixels`` and ``("next", "pixels")`` of
``frame_stack`` frames each) that a TorchRL collector of a ``CatFrames`` environment writes.

Policies (all seeded):

* ``random``: a uniform random action each step;
* ``sticky``: repeats its previous action with probability 0.9, else a uniform one (long
  runs of one action, as an epsilon-greedy agent late in training acts);
* ``biased``: draws from a fixed Dirichlet(0.3) distribution over the actions (a few
  preferred actions, as a partly trained policy).

Shards are written as zstd-compressed ``.npz`` files under ``seer_benchmarks/.cache/atari_1m``
(git-ignored), each by write-then-rename, so an interrupted capture resumes at the first
missing shard. Progress is logged, one line per shard.

Run: ``OMP_NUM_THREADS=1 python -m seer_benchmarks.atari_shards --transitions 1000000``.
"""

from __future__ import annotations

import argparse
import io
import itertools
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import zstandard
from tensordict import TensorDict

from seer_benchmarks.datasets import CACHE_DIR

__all__ = [
    "GAMES",
    "POLICIES",
    "SHARD_DIR",
    "SHARD_STEPS",
    "capture_missing_shards",
    "capture_shards",
    "cycled_specs",
    "load_shard",
    "shard_specs",
    "stacked_transitions",
    "write_shard",
]

SHARD_DIR = CACHE_DIR / "atari_1m"
SHARD_STEPS = 10_000
GAMES = (
    "Pong",
    "Breakout",
    "MsPacman",
    "Seaquest",
    "SpaceInvaders",
    "Qbert",
    "BeamRider",
    "Enduro",
    "Asteroids",
    "RoadRunner",
)
POLICIES = ("random", "sticky", "biased")


def cycled_specs(
    names: tuple[str, ...], policies: tuple[str, ...], num_shards: int
) -> list[tuple[str, str, int]]:
    """The ``(name, policy, seed)`` of each shard, cycling through names then policies.

    The seed of a shard is its index. Shared by the Atari and the DMC shards.
    """
    combos = itertools.cycle(itertools.product(policies, names))
    return [
        (name, policy, index)
        for index, (policy, name) in zip(range(num_shards), combos, strict=False)
    ]


def shard_specs(num_shards: int) -> list[tuple[str, str, int]]:
    """The ``(game, policy, seed)`` of each shard, cycling through games then policies."""
    return cycled_specs(GAMES, POLICIES, num_shards)


def shard_path(index: int, game: str, policy: str) -> Path:
    """Where shard ``index`` is cached."""
    return SHARD_DIR / f"{index:04d}-{game}-{policy}-{SHARD_STEPS}.npz.zst"


def _make_gym_env(game: str, seed: int):
    import ale_py
    import gymnasium as gym
    from gymnasium.wrappers import AtariPreprocessing

    gym.register_envs(ale_py)
    env = gym.make(
        f"ALE/{game}-v5",
        frameskip=1,
        repeat_action_probability=0.0,
        max_episode_steps=None,
        full_action_space=False,
    )
    env = AtariPreprocessing(
        env,
        noop_max=30,
        frame_skip=4,
        screen_size=84,
        terminal_on_life_loss=False,
        grayscale_obs=True,
        grayscale_newaxis=False,
        scale_obs=False,
    )
    env = gym.wrappers.TimeLimit(env, max_episode_steps=108_000)
    env.reset(seed=seed)
    return env


def _policy(name: str, num_actions: int, rng: np.random.Generator) -> Iterator[int]:
    if name == "random":
        while True:
            yield int(rng.integers(num_actions))
    elif name == "sticky":
        action = int(rng.integers(num_actions))
        while True:
            if rng.random() >= 0.9:
                action = int(rng.integers(num_actions))
            yield action
    elif name == "biased":
        probs = rng.dirichlet(np.full(num_actions, 0.3))
        while True:
            yield int(rng.choice(num_actions, p=probs))
    else:
        raise ValueError(f"unknown policy {name!r}; expected one of {POLICIES}")


def capture_shard(game: str, policy: str, seed: int, steps: int = SHARD_STEPS) -> dict:
    """Runs ``steps`` agent steps of ``game`` under ``policy``; returns the shard arrays."""
    env = _make_gym_env(game, seed)
    rng = np.random.default_rng(seed)
    actions_iter = _policy(policy, env.action_space.n, rng)
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    obs_id = np.empty(steps, np.int32)
    action = np.empty(steps, np.int64)
    reward = np.empty(steps, np.float32)
    terminated = np.empty(steps, bool)
    truncated = np.empty(steps, bool)
    for t in range(steps):
        obs_id[t] = len(frames) - 1
        action[t] = next(actions_iter)
        obs, r, term, trunc, _ = env.step(action[t])
        frames.append(obs)
        reward[t], terminated[t], truncated[t] = r, term, trunc
        if term or trunc:
            obs, _ = env.reset()
            frames.append(obs)
    env.close()
    return {
        "frames": np.stack(frames),
        "obs_id": obs_id,
        "action": action,
        "reward": reward,
        "terminated": terminated,
        "truncated": truncated,
    }


def load_shard(path: Path) -> dict[str, np.ndarray]:
    """Reads one cached shard."""
    raw = zstandard.ZstdDecompressor().decompress(path.read_bytes())
    with np.load(io.BytesIO(raw)) as data:
        return {k: data[k] for k in data.files}


def write_shard(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Writes one shard (zstd-compressed ``.npz``) by write-then-rename."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    payload = zstandard.ZstdCompressor(level=3).compress(buffer.getvalue())
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    partial.write_bytes(payload)
    os.replace(partial, path)


def capture_missing_shards(
    specs: list[tuple[str, str, int]],
    path_of: Callable[[int, str, str], Path],
    capture: Callable[[str, str, int], dict],
    *,
    only: list[int] | None = None,
    log: Path | None = None,
) -> list[Path]:
    """Captures each ``(name, policy, seed)`` of ``specs`` whose shard is not on disk yet.

    Shared by the Atari and the DMC shards. One progress line per captured shard is printed
    (and appended to ``log``).

    Args:
        specs: the ``(game or task, policy, seed)`` of every shard, in shard order.
        path_of: ``(index, name, policy) -> path`` of a shard.
        capture: ``(name, policy, seed) -> arrays`` of one shard.

    Keyword Args:
        only: capture only these shard indices (to split the work between processes).
        log: a file to append the progress lines to.

    Returns:
        The paths of all the shards of ``specs``.
    """
    paths = []
    for index, (name, policy, seed) in enumerate(specs):
        path = path_of(index, name, policy)
        paths.append(path)
        if path.exists() or (only is not None and index not in only):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        arrays = capture(name, policy, seed)
        write_shard(path, arrays)
        line = (
            f"{time.strftime('%H:%M:%S')} shard {index + 1}/{len(specs)} {name}/{policy}: "
            f"{len(arrays['obs_id'])} steps, {len(arrays['frames'])} frames, "
            f"{int((arrays['terminated'] | arrays['truncated']).sum())} episode ends, "
            f"{time.perf_counter() - start:.1f} s, {path.stat().st_size} B on disk"
        )
        print(line, flush=True)
        if log is not None:
            with log.open("a") as f:
                f.write(line + "\n")
    return paths


def capture_shards(num_shards: int, log: Path | None = None) -> list[Path]:
    """Captures the missing shards of the first ``num_shards``; returns all their paths."""
    return capture_missing_shards(shard_specs(num_shards), shard_path, capture_shard, log=log)


def stacked_transitions(
    shard: dict[str, np.ndarray], frame_stack: int = 4, rows: slice | torch.Tensor | None = None
) -> TensorDict:
    """The stacked transitions a collector of a ``CatFrames(frame_stack)`` env writes.

    At an episode start the stack is filled with copies of the reset frame; the next stack
    ends with the step's own next frame, which is the true last frame at an episode end.

    Args:
        shard: the arrays of :func:`load_shard`.
        frame_stack: frames per stack.
        rows: the steps to build, a slice or a tensor of step indices (default: all).

    Returns:
        A TensorDict of batch size ``[steps]`` (or the ``rows`` taken) with ``pixels`` and
        ``("next", "pixels")`` of shape ``[frame_stack, 84, 84]`` for grayscale frames and
        ``[frame_stack * C, 84, 84]`` for ``C``-channel frames (uint8), ``action``, and
        ``("next", ...)`` reward, done, terminated and truncated.
    """
    frames = torch.from_numpy(shard["frames"])
    obs_id = torch.from_numpy(shard["obs_id"]).long()
    terminated = torch.from_numpy(shard["terminated"])
    truncated = torch.from_numpy(shard["truncated"])
    done = terminated | truncated
    steps = obs_id.shape[0]
    # the frame id of the reset frame of each step's episode
    start = torch.ones(steps, dtype=torch.bool)
    start[1:] = done[:-1]
    first = torch.where(start, obs_id, torch.zeros_like(obs_id))
    first = torch.cummax(first, dim=0).values
    lags = torch.arange(frame_stack - 1, -1, -1)
    obs_ids = torch.maximum(obs_id[:, None] - lags, first[:, None])
    next_ids = torch.maximum(obs_id[:, None] + 1 - lags, first[:, None])
    rows = slice(None) if rows is None else rows
    action = torch.from_numpy(shard["action"])[rows]
    obs_stacks, next_stacks = frames[obs_ids[rows]], frames[next_ids[rows]]
    if frames.dim() == 4:  # [N, C, H, W] frames stack along the channel dim, as CatFrames does
        obs_stacks, next_stacks = obs_stacks.flatten(1, 2), next_stacks.flatten(1, 2)
    return TensorDict(
        {
            "pixels": obs_stacks,
            "action": action,
            "next": {
                "pixels": next_stacks,
                "reward": torch.from_numpy(shard["reward"])[rows].unsqueeze(-1),
                "done": done[rows].unsqueeze(-1),
                "terminated": terminated[rows].unsqueeze(-1),
                "truncated": truncated[rows].unsqueeze(-1),
            },
        },
        batch_size=[action.shape[0]],
    )


def main(argv: list[str] | None = None) -> None:
    """Captures the shards for ``--transitions`` transitions."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transitions", type=int, default=1_000_000)
    parser.add_argument("--log", type=Path, default=SHARD_DIR / "capture.log")
    args = parser.parse_args(argv)
    num_shards = -(-args.transitions // SHARD_STEPS)
    capture_shards(num_shards, log=args.log)


if __name__ == "__main__":
    main()
