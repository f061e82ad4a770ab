"""DQN on Atari whose replay buffer keeps each frame once, compressed: ``DeltaFrameStorage``.

Read top to bottom:

1. an Atari env (84x84 grayscale, 4 stacked frames, frame skip 4): every transition carries a
   ``[4, 84, 84]`` observation and a ``[4, 84, 84]`` next observation, 56 KB together;
2. a Q-network: the Nature DQN CNN + MLP head, over pixels scaled to [0, 1];
3. TorchRL's ``DQNLoss`` (double DQN, TD(0)), Adam, and a periodic ``HardUpdate`` of the
   target network;
4. the replay buffer: a ``TensorDictReplayBuffer`` over a ``DeltaFrameStorage``. The stacks
   of consecutive steps share 3 of their 4 frames and the next observation is the following
   observation, so the storage keeps each distinct frame once (proven by exact comparison),
   in zstd-compressed chunks of consecutive frames. Sampling returns exactly the stacks a
   ``LazyTensorStorage`` would, terminal next observations included;
5. the loop: collect -> write -> sample -> loss -> backward -> step, printing the replay bytes
   per transition next to what a ``LazyTensorStorage`` would hold;
6. an end-of-run report (markdown + PNG) in the run folder, printed at the end.

``--demo`` runs the whole thing in a couple of minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import TensorDictReplayBuffer
from torchrl.modules import MLP, ConvNet, EGreedyModule, QValueActor
from torchrl.objectives import DQNLoss, HardUpdate
from torchrl.record.loggers import get_logger
from tqdm import tqdm

from torchrl_seer.data import DeltaFrameStorage
from torchrl_seer.envs import make_atari_env

DEMO = {
    "total_steps": 2_000,
    "buffer_size": 2_000,
    "learn_start": 500,
    "target_update": 200,
    "updates_per_batch": 1,
    "eps_decay_steps": 1_500,
}
STORED_KEYS = [
    "pixels",
    "action",
    ("next", "pixels"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; ``--demo`` shrinks the run."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--game", default="Pong")
    p.add_argument("--total-steps", type=int, default=100_000, help="agent steps")
    p.add_argument("--buffer-size", type=int, default=100_000, help="transitions")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--learn-start", type=int, default=5_000)
    p.add_argument("--target-update", type=int, default=2_000, help="updates between hard copies")
    p.add_argument("--frames-per-batch", type=int, default=16, help="agent steps per collection")
    p.add_argument("--updates-per-batch", type=int, default=4)
    p.add_argument("--eps-decay-steps", type=int, default=50_000)
    p.add_argument("--codec", choices=["zstd", "keyframe-sparse", "none"], default="zstd")
    p.add_argument("--chunk-len", type=int, default=64, help="frames per compressed chunk")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logger", default="csv")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--demo", action="store_true", help="short run (a couple of minutes)")
    args = p.parse_args(argv)
    if args.demo:
        for key, value in DEMO.items():
            setattr(args, key, value)
    return args


class ScaledPixels(nn.Module):
    """uint8 pixels -> float in [0, 1]."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scales a batch of uint8 frames."""
        return pixels.float().div(255.0)


def write_report(
    run_dir: Path,
    *,
    game: str,
    returns: list[tuple[int, float]],
    memory: list[tuple[int, float, float]],
    config: dict,
) -> Path:
    """Writes ``report.md`` and ``report.png`` (returns and replay bytes per transition)."""
    fig, (ax_ret, ax_mem) = plt.subplots(1, 2, figsize=(11, 4))
    if returns:
        ax_ret.plot(*zip(*returns, strict=True), ".", alpha=0.6)
    ax_ret.set(xlabel="agent step", ylabel="episode return", title=f"DQN on {game}")
    if memory:
        steps, delta, lazy = zip(*memory, strict=True)
        ax_mem.plot(steps, lazy, label="LazyTensorStorage")
        ax_mem.plot(steps, delta, label="DeltaFrameStorage")
        ax_mem.set_yscale("log")
        ax_mem.legend()
    ax_mem.set(xlabel="agent step", ylabel="replay bytes / transition", title="Replay memory")
    fig.tight_layout()
    fig.savefig(run_dir / "report.png", dpi=100)
    plt.close(fig)
    last = memory[-1] if memory else (0, float("nan"), float("nan"))
    lines = [
        f"# DQN on {game} with DeltaFrameStorage",
        "",
        f"- agent steps: {config['total_steps']}, buffer: {config['buffer_size']} transitions",
        f"- episodes finished: {len(returns)}",
        f"- mean return of the last 10 episodes: "
        f"{sum(r for _, r in returns[-10:]) / max(1, len(returns[-10:])):.1f}",
        f"- replay bytes / transition at the end: {last[1]:.0f} (DeltaFrameStorage) vs "
        f"{last[2]:.0f} (LazyTensorStorage), {last[2] / last[1]:.0f}x smaller",
        "",
        "![returns and replay memory](report.png)",
        "",
        "## Configuration",
        "",
        *[f"- `{k}`: {v}" for k, v in config.items()],
    ]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> Path:
    """Trains DQN with a delta-encoded replay buffer and returns the report path."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    run_dir = Path(args.out_dir) / f"dqn_atari_delta_{args.game}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = get_logger(args.logger, logger_name=str(run_dir), experiment_name="dqn_atari_delta")

    # 1. environment
    env = make_atari_env(args.game, frame_stack=4, seed=args.seed)
    num_actions = env.action_spec.space.n

    # 2. Q-network: Nature CNN + MLP head
    cnn = ConvNet(num_cells=[32, 64, 64], kernel_sizes=[8, 4, 3], strides=[4, 2, 1])
    head = MLP(out_features=num_actions, num_cells=[512])
    qnet = QValueActor(
        nn.Sequential(ScaledPixels(), cnn, head), in_keys=["pixels"], spec=env.action_spec
    )
    qnet(env.reset())  # initialise the lazy layers
    explore = EGreedyModule(
        env.action_spec, eps_init=1.0, eps_end=0.01, annealing_num_steps=args.eps_decay_steps
    )
    policy = TensorDictSequential(qnet, explore)

    # 3. loss, optimizer, target updates
    loss = DQNLoss(qnet, action_space=env.action_spec, delay_value=True, double_dqn=True)
    loss.make_value_estimator(gamma=args.gamma)
    optimizer = torch.optim.Adam(loss.parameters(), lr=args.lr)
    target_updater = HardUpdate(loss, value_network_update_interval=args.target_update)

    # 4. replay buffer: each distinct frame stored once, chunks of consecutive frames compressed
    storage = DeltaFrameStorage(
        args.buffer_size,
        pixel_keys=["pixels"],
        frame_stack=4,
        codec=args.codec,
        chunk_len=args.chunk_len,
        cache_bytes=0,  # uniform sampling rarely revisits a decoded chunk: no cache
    )
    rb = TensorDictReplayBuffer(storage=storage, batch_size=args.batch_size)

    # 5. training loop
    collector = Collector(
        env, policy, frames_per_batch=args.frames_per_batch, total_frames=args.total_steps
    )
    lazy_bytes_per_transition = None
    returns: list[tuple[int, float]] = []
    memory: list[tuple[int, float, float]] = []
    steps = 0
    pbar = tqdm(total=args.total_steps, desc=f"DQN {args.game}", unit="step")
    for data in collector:
        data = data.reshape(-1)
        stored = data.select(*STORED_KEYS)
        if lazy_bytes_per_transition is None:  # what a LazyTensorStorage holds per transition
            lazy_bytes_per_transition = sum(
                v[0].numel() * v.element_size() for v in stored.values(True, True)
            )
        rb.extend(stored)
        steps += data.numel()
        pbar.update(data.numel())
        explore.step(data.numel())
        done = data["next", "done"].squeeze(-1)
        for ret in data["next", "episode_reward"][done].flatten().tolist():
            returns.append((steps, ret))
            logger.log_scalar("episode_return", ret, step=steps)
        if steps % 1000 < args.frames_per_batch:
            delta_bytes = storage.bytes() / len(storage)
            memory.append((steps, delta_bytes, float(lazy_bytes_per_transition)))
            logger.log_scalar("replay_bytes_per_transition", delta_bytes, step=steps)
            pbar.set_postfix(
                replay_B_per_transition=f"{delta_bytes:.0f} vs {lazy_bytes_per_transition} lazy",
                eps=f"{explore.eps.item():.2f}",
            )
        if len(rb) < args.learn_start:
            continue
        for _ in range(args.updates_per_batch):
            batch = rb.sample()
            losses = loss(batch)
            optimizer.zero_grad()
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(loss.parameters(), 10.0)
            optimizer.step()
            target_updater.step()
        if steps % 1000 < args.frames_per_batch:
            logger.log_scalar("loss", losses["loss"].item(), step=steps)
    pbar.close()
    collector.shutdown()

    # 6. report
    delta_bytes = storage.bytes() / len(storage)
    print(
        f"replay memory: {delta_bytes:.0f} B/transition with DeltaFrameStorage vs "
        f"{lazy_bytes_per_transition} B/transition with LazyTensorStorage "
        f"({lazy_bytes_per_transition / delta_bytes:.0f}x smaller)"
    )
    memory.append((steps, delta_bytes, float(lazy_bytes_per_transition)))
    report = write_report(
        run_dir, game=args.game, returns=returns, memory=memory, config=vars(args)
    )
    print(f"report written to {report}")
    return report


if __name__ == "__main__":
    main()
