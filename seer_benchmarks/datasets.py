"""Real frames for benchmarks, captured once with a fixed seed and cached.

Frames come from the environment factories of :mod:`torchrl_seer.envs` driven by a uniform
random policy: 84x84 grayscale Atari frames (DQN preprocessing) and 84x84 RGB DMC frames. Each
dataset is a TorchRL rollout of **single frames** (``frame_stack=1``) with auto-reset, so it
holds ``pixels``, ``("next", "pixels")``, ``action`` and the ``("next", ...)`` reward and
done/terminated/truncated flags. :func:`stack_frames` rebuilds the stacked transitions that a
:class:`~torchrl.envs.CatFrames` environment would emit from the same frames.

The cache lives in ``seer_benchmarks/.cache/`` (git-ignored); delete it to capture again.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from tensordict import TensorDict, TensorDictBase

__all__ = [
    "ATARI_GAMES",
    "CACHE_DIR",
    "DMC_TASKS",
    "load_rollout",
    "stack_frames",
]

CACHE_DIR = Path(__file__).resolve().parent / ".cache"
ATARI_GAMES = ("Pong", "Breakout", "MsPacman", "Seaquest", "SpaceInvaders")
DMC_TASKS = ("cartpole_swingup", "walker_walk", "cheetah_run", "reacher_easy")
_DEFAULT_STEPS = {"atari": 4000, "dmc": 1500}


def _make_env(name: str, seed: int):
    from torchrl_seer.envs import make_atari_env, make_dmc_env

    if name in ATARI_GAMES:
        return make_atari_env(name, frame_stack=1, seed=seed)
    domain, task = name.split("_", 1)
    return make_dmc_env(domain, task, frame_stack=1, seed=seed)


def load_rollout(name: str, *, num_steps: int | None = None, seed: int = 0) -> TensorDictBase:
    """Returns a cached random-policy rollout of single 84x84 frames of one game or task.

    Args:
        name: an Atari game from :data:`ATARI_GAMES` or a DMC task from :data:`DMC_TASKS`.

    Keyword Args:
        num_steps: rollout length; defaults to 4,000 (Atari) or 1,500 (DMC).
        seed: seeds the environment and the random policy.

    Returns:
        A TensorDict of batch size ``[num_steps]`` with ``pixels`` of shape ``[1, 84, 84]``
        (Atari) or ``[3, 84, 84]`` (DMC), dtype ``uint8``.
    """
    if name not in ATARI_GAMES and name not in DMC_TASKS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {ATARI_GAMES + DMC_TASKS}")
    if num_steps is None:
        num_steps = _DEFAULT_STEPS["atari" if name in ATARI_GAMES else "dmc"]
    path = CACHE_DIR / f"{name}-seed{seed}-{num_steps}.pt"
    if path.exists():
        return TensorDict.load(str(path))
    from tqdm import tqdm

    torch.manual_seed(seed)
    env = _make_env(name, seed)
    frames = []
    td = env.reset()
    for _ in tqdm(range(num_steps), desc=f"capturing {name}", leave=False):
        td = env.rand_step(td)
        frames.append(td.exclude("episode_reward", ("next", "episode_reward")).clone())
        td = env.step_mdp(td)
        if td.get("done", torch.zeros(1, dtype=torch.bool)).any():
            td = env.reset()
    env.close()
    rollout = torch.stack(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    # write then rename, so a concurrent reader never sees a partial dataset
    partial = path.with_name(f"{path.name}.partial-{os.getpid()}")
    rollout.save(str(partial))
    os.replace(partial, path)
    return rollout


def stack_frames(
    rollout: TensorDictBase, frame_stack: int, *, key: str = "pixels"
) -> TensorDictBase:
    """Rebuilds the stacked transitions a ``CatFrames(frame_stack, dim=-3)`` env would emit.

    At an episode start CatFrames fills the stack with copies of the reset frame; ``next``
    stacks shift by one frame and end with the transition's own ``("next", key)``, which is
    the true final frame at terminations and truncations.

    Args:
        rollout: a single-frame rollout from :func:`load_rollout`.
        frame_stack: frames per stack.

    Keyword Args:
        key: the pixel key.

    Returns:
        A copy of ``rollout`` whose ``key`` and ``("next", key)`` have
        ``frame_stack`` times the channels.
    """
    frames = rollout[key]
    next_frames = rollout["next", key]
    num_steps = frames.shape[0]
    done = rollout["next", "done"].reshape(num_steps)
    episode_start = torch.ones(num_steps, dtype=torch.bool)
    episode_start[1:] = done[:-1]
    # index of the episode's first step, for each step
    first = torch.zeros(num_steps, dtype=torch.long)
    current = 0
    for t in range(num_steps):
        if episode_start[t]:
            current = t
        first[t] = current
    steps = torch.arange(num_steps)
    obs_parts, next_parts = [], []
    for lag in range(frame_stack - 1, -1, -1):
        src = torch.maximum(steps - lag, first)
        obs_parts.append(frames[src])
        # next stack: the frames of steps t-lag+1 .. t, then next_frames[t]
        if lag == 0:
            next_parts.append(next_frames)
        else:
            # a stack that reaches back before the reset frame is padded with it
            next_parts.append(frames[torch.maximum(steps - lag + 1, first)])
    out = rollout.clone()
    out.set(key, torch.cat(obs_parts, dim=-3))
    out.set(("next", key), torch.cat(next_parts, dim=-3))
    return out
