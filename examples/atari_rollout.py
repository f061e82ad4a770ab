"""Collect an Atari rollout through torchrl_seer's env factory and look at what it holds.

A first look at the data every other recipe stores: a TorchRL ``Collector`` drives
``make_atari_env`` (DQN preprocessing, 4-frame stacks) with a random policy, the batches go
into a TorchRL replay buffer, and a small report shows the frames and what they cost in
memory.

Run::

    python examples/atari_rollout.py --game Pong --frames 2000
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.envs.utils import RandomPolicy

from torchrl_seer.envs import make_atari_env


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--game", default="Pong", help="ALE game name")
    parser.add_argument("--frames", type=int, default=2000, help="environment steps to collect")
    parser.add_argument("--frames-per-batch", type=int, default=500)
    parser.add_argument("--frame-stack", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="report folder")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = args.out or Path("runs") / f"atari_rollout-{args.game}-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    # 1. The environment: 84x84 grayscale frames, frame skip 4, no-op reset, 4-frame stacks.
    env = make_atari_env(args.game, frame_stack=args.frame_stack, seed=args.seed)
    policy = RandomPolicy(env.action_spec)

    # 2. A TorchRL collector drives it and hands over batches of transitions.
    collector = Collector(
        env,
        policy,
        frames_per_batch=args.frames_per_batch,
        total_frames=args.frames,
    )
    buffer = ReplayBuffer(storage=LazyTensorStorage(args.frames))
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
    stored = buffer.storage._storage
    bytes_per_transition = sum(t.nbytes for t in stored.values(True, True)) / len(buffer)
    pixel_bytes = data["pixels"][0].nbytes + data["next", "pixels"][0].nbytes
    print(f"{len(buffer)} transitions in {seconds:.1f} s ({len(buffer) / seconds:.0f} steps/s)")
    print(f"{bytes_per_transition:,.0f} B per transition, {pixel_bytes:,} B of them pixels")
    print(f"episodes finished: {len(episode_returns)}, returns: {episode_returns}")

    # 4. A report: the frame stacks of a few transitions and the byte budget.
    steps = [0, len(buffer) // 3, 2 * len(buffer) // 3]
    fig, axes = plt.subplots(len(steps), args.frame_stack, figsize=(2 * args.frame_stack, 6))
    axes = axes.reshape(len(steps), args.frame_stack)
    for row, step in enumerate(steps):
        for col in range(args.frame_stack):
            axes[row, col].imshow(data["pixels"][step, col], cmap="gray")
            axes[row, col].set_title(f"t={step} frame {col}", fontsize=8)
            axes[row, col].axis("off")
    fig.tight_layout()
    fig.savefig(out / "frames.png", dpi=80)
    (out / "report.md").write_text(
        f"# Atari rollout: {args.game}\n\n"
        f"- transitions: {len(buffer)} in {seconds:.1f} s ({len(buffer) / seconds:.0f} steps/s)\n"
        f"- pixels per transition: `{tuple(data['pixels'].shape[1:])}` uint8, obs and next obs\n"
        f"- bytes per transition in `LazyTensorStorage`: {bytes_per_transition:,.0f} "
        f"({pixel_bytes:,} of them pixels)\n"
        f"- finished episodes: {len(episode_returns)}; returns {episode_returns}\n\n"
        "![frame stacks](frames.png)\n"
    )
    print(f"report written to {out.resolve()}")


if __name__ == "__main__":
    main()
