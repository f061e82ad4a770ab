"""Collect an Atari rollout through torchrl_seer's env factory and look at what it holds.

A first look at the data every other recipe stores: a TorchRL ``Collector`` drives
``make_atari_env`` (DQN preprocessing, 4-frame stacks) with a random policy, the batches go
into a TorchRL replay buffer, and a small report shows the frames and what they cost in
memory.

Run (configuration: ``examples/configs/atari_rollout.yaml``)::

    python examples/atari_rollout.py env.name=Breakout collector.total_frames=2000
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import matplotlib
from omegaconf import DictConfig, OmegaConf

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs.utils import RandomPolicy

from torchrl_seer.envs import make_atari_env
from torchrl_seer.trainers.helpers import (
    RecipeRun,
    ReportTable,
    check_atari_game,
    check_config,
    seed_everything,
    write_report,
)


def check(cfg: DictConfig) -> None:
    """Refuses a bad configuration before anything is created."""
    check_config(
        cfg, positive=["collector.total_frames", "collector.frames_per_batch", "env.frame_stack"]
    )
    check_atari_game(cfg.env.name)


def train(cfg: DictConfig) -> Path:
    """Collects the rollout, writes the report and returns its path."""
    check(cfg)
    run = RecipeRun(cfg, "atari_rollout", tag=cfg.env.name)
    seeds = seed_everything(cfg.seed)
    frame_stack = cfg.env.frame_stack

    # 1. The environment: 84x84 grayscale frames, frame skip 4, no-op reset, 4-frame stacks.
    env = make_atari_env(cfg.env.name, frame_stack=frame_stack, seed=cfg.seed)
    policy = RandomPolicy(env.action_spec)

    # 2. A TorchRL collector drives it and hands over batches of transitions.
    collector = Collector(
        env,
        policy,
        frames_per_batch=cfg.collector.frames_per_batch,
        total_frames=cfg.collector.total_frames,
    )
    buffer = ReplayBuffer(storage=LazyTensorStorage(cfg.collector.total_frames))
    start = time.perf_counter()
    episode_returns: list[float] = []
    for batch in collector:
        buffer.extend(batch)
        finished = batch["next", "done"].squeeze(-1)
        episode_returns += batch["next", "episode_reward"][finished].flatten().tolist()
    seconds = time.perf_counter() - start
    collector.shutdown()

    # 3. What the buffer holds.
    data = buffer[:]
    print(data)
    bytes_per_transition = sum(t.element_size() * t[0].numel() for t in data.values(True, True))
    pixel_bytes = data["pixels"][0].nbytes + data["next", "pixels"][0].nbytes
    print(f"{len(buffer)} transitions in {seconds:.1f} s ({len(buffer) / seconds:.0f} steps/s)")
    print(f"{bytes_per_transition:,.0f} B per transition, {pixel_bytes:,} B of them pixels")
    print(f"episodes finished: {len(episode_returns)}, returns: {episode_returns}")

    # 4. A report: the frame stacks of a few transitions and the byte budget.
    steps = [0, len(buffer) // 3, 2 * len(buffer) // 3]
    fig, axes = plt.subplots(len(steps), frame_stack, figsize=(2 * frame_stack, 6))
    axes = axes.reshape(len(steps), frame_stack)
    for row, step in enumerate(steps):
        for col in range(frame_stack):
            axes[row, col].imshow(data["pixels"][step, col], cmap="gray")
            axes[row, col].set_title(f"t={step} frame {col}", fontsize=8)
            axes[row, col].axis("off")
    fig.tight_layout()
    fig.savefig(run.dir / "frames.png", dpi=80)
    plt.close(fig)
    rows = [
        ["transitions", f"{len(buffer)} in {seconds:.1f} s ({len(buffer) / seconds:.0f} steps/s)"],
        ["pixels per transition", f"`{tuple(data['pixels'].shape[1:])}` uint8, obs and next obs"],
        ["bytes per transition in `LazyTensorStorage`",
         f"{bytes_per_transition:,.0f} ({pixel_bytes:,} of them pixels)"],
        ["finished episodes", f"{len(episode_returns)}; returns {episode_returns}"],
    ]  # fmt: skip
    report = write_report(
        run.dir,
        title=f"Atari rollout: {cfg.env.name}",
        tables=[ReportTable(["metric", "value"], rows)],
        notes=["![frame stacks](frames.png)"],
        config=OmegaConf.to_container(cfg, resolve=True),
        seeds={**seeds, "environment": cfg.seed},
    )
    print(f"report written to {run.dir.resolve()}")
    return report


@hydra.main(config_path="configs", config_name="atari_rollout", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point: hydra composes the configuration."""
    train(cfg)


if __name__ == "__main__":
    main()
