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
   per transition next to what a ``LazyTensorStorage`` would hold, with a checkpoint (the
   compressed buffer included) every ``checkpoint.interval`` steps (``resume=<run dir>``);
6. a report (markdown + PNG) in the run folder, rewritten every ``logger.report_every`` steps.

Configuration: ``examples/configs/dqn_atari_delta.yaml``; the demo, a couple of minutes on 2 CPU
cores: ``python examples/dqn_atari_delta.py --config-name dqn_atari_delta_demo``.
"""

from __future__ import annotations

from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import TensorDictReplayBuffer
from torchrl.modules import MLP, ConvNet, EGreedyModule, QValueActor
from torchrl.objectives import DQNLoss, HardUpdate
from tqdm import tqdm

from torchrl_seer.data import DeltaFrameStorage
from torchrl_seer.envs import make_atari_env
from torchrl_seer.trainers.helpers import (
    EpisodeReturns,
    RecipeRun,
    ReportPlot,
    ReportTable,
    check_atari_game,
    check_config,
    resolve_device,
    seed_everything,
    write_report,
)

FRAME_SKIP = 4  # environment frames per agent step: the logger's step unit is env frames
STORED_KEYS = [
    "pixels",
    "action",
    ("next", "pixels"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
]


class ScaledPixels(nn.Module):
    """uint8 pixels -> float in [0, 1]."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Scales a batch of uint8 frames."""
        return pixels.float().div(255.0)


def compare_sizes(delta_bytes: float, lazy_bytes: float) -> str:
    """``"9.7x smaller"`` / ``"1.6x larger"``: the storage against ``LazyTensorStorage``.

    Examples:
        >>> compare_sizes(1000.0, 1600.0), compare_sizes(1600.0, 1000.0)
        ('1.6x smaller', '1.6x larger')
    """
    if delta_bytes <= lazy_bytes:
        return f"{lazy_bytes / delta_bytes:.1f}x smaller"
    return f"{delta_bytes / lazy_bytes:.1f}x larger"


def check(cfg: DictConfig) -> None:
    """Refuses a bad configuration before anything is created."""
    check_config(
        cfg,
        positive=[
            "collector.total_frames", "collector.frames_per_batch", "replay_buffer.size",
            "replay_buffer.chunk_len", "optim.lr", "optim.batch_size", "optim.updates_per_batch",
            "loss.target_update", "exploration.eps_decay_frames", "logger.report_every",
        ],
        non_negative=["optim.learn_start"],
        choices={"replay_buffer.codec": ["zstd", "keyframe-sparse", "none"]},
    )  # fmt: skip
    check_atari_game(cfg.env.name)


def write_delta_report(run: RecipeRun, cfg: DictConfig, record: dict, episodes) -> Path:
    """The report: returns and replay bytes per transition against ``LazyTensorStorage``."""
    memory = record["memory"]
    last = memory[-1] if memory else (0, float("nan"), float("nan"))
    returns = episodes.history
    mean_last = sum(r for _, r in returns[-10:]) / max(1, len(returns[-10:]))
    rows = [
        ["agent steps", last[0]],
        ["buffer (transitions)", cfg.replay_buffer.size],
        ["episodes finished", len(returns)],
        ["mean return of the last 10 episodes", f"{mean_last:.1f}"],
        ["replay bytes / transition, DeltaFrameStorage", f"{last[1]:.0f}"],
        ["replay bytes / transition, LazyTensorStorage", f"{last[2]:.0f}"],
    ]
    if memory:
        rows.append(["DeltaFrameStorage vs LazyTensorStorage", compare_sizes(last[1], last[2])])
    return write_report(
        run.dir,
        title=f"DQN on {cfg.env.name} with DeltaFrameStorage",
        tables=[ReportTable(["metric", "value"], rows)],
        plots=[
            ReportPlot(
                f"DQN on {cfg.env.name}",
                "environment frames",
                "episode return",
                {"episode return": returns},
                kind="points",
            ),
            ReportPlot(
                "Replay memory",
                "agent steps",
                "replay bytes / transition",
                {
                    "LazyTensorStorage": [(s, lazy) for s, _, lazy in memory],
                    "DeltaFrameStorage": [(s, delta) for s, delta, _ in memory],
                },
                logy=True,
            ),
        ],
        config=OmegaConf.to_container(cfg, resolve=True),
        seeds={"python, numpy, torch": cfg.seed, "environment": f"{cfg.seed} + 10000 x interval"},
        data={"memory": memory},
    )


def train(cfg: DictConfig) -> Path:
    """Trains DQN with a delta-encoded replay buffer and returns the report path."""
    check(cfg)
    run = RecipeRun(cfg, "dqn_atari_delta", tag=cfg.env.name)
    cfg = run.cfg
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)

    # 1. environment (one per checkpoint interval)
    def make_env(seed: int | None = None):
        return make_atari_env(cfg.env.name, frame_stack=4, seed=seed)

    env = make_env()

    # 2. Q-network: Nature CNN + MLP head
    cnn = ConvNet(num_cells=[32, 64, 64], kernel_sizes=[8, 4, 3], strides=[4, 2, 1])
    head = MLP(out_features=env.action_spec.space.n, num_cells=[512])
    qnet = QValueActor(
        nn.Sequential(ScaledPixels(), cnn, head), in_keys=["pixels"], spec=env.action_spec
    )
    qnet(env.reset())  # initialise the lazy layers
    qnet.to(device)
    explore = EGreedyModule(
        env.action_spec, eps_init=1.0, eps_end=0.01,
        annealing_num_steps=cfg.exploration.eps_decay_frames,
    ).to(device)  # fmt: skip
    policy = TensorDictSequential(qnet, explore)

    # 3. loss, optimizer, target updates
    loss = DQNLoss(qnet, action_space=env.action_spec, delay_value=True, double_dqn=True)
    loss.make_value_estimator(gamma=cfg.loss.gamma)
    optimizer = torch.optim.Adam(loss.parameters(), lr=cfg.optim.lr)
    target_updater = HardUpdate(loss, value_network_update_interval=cfg.loss.target_update)

    # 4. replay buffer: each distinct frame stored once, chunks of consecutive frames compressed
    storage = DeltaFrameStorage(
        cfg.replay_buffer.size,
        pixel_keys=["pixels"],
        frame_stack=4,
        codec=cfg.replay_buffer.codec,
        chunk_len=cfg.replay_buffer.chunk_len,
        cache_bytes=0,  # uniform sampling rarely revisits a decoded chunk: no cache
        device=device,  # sampled batches arrive on the learner's device
    )
    rb = TensorDictReplayBuffer(storage=storage, batch_size=cfg.optim.batch_size)

    # 5. training loop, one collector per checkpoint interval
    episodes = EpisodeReturns(run.log_scalar)
    state = {"policy": policy, "loss": loss, "optimizer": optimizer, "episodes": episodes}
    steps, record = run.restore(state=state, replay_buffers={"replay": rb})
    record = record or {"memory": [], "lazy_bytes": None, "target_updates": 0}
    target_updater.counter = record["target_updates"]
    total = cfg.collector.total_frames
    pbar = tqdm(total=total, initial=steps, desc=f"DQN {cfg.env.name}", unit="step")
    for segment in run.segments(total, start=steps):
        collector = Collector(
            make_env(segment.seed),  # seeded before the collector's first reset
            policy,
            frames_per_batch=cfg.collector.frames_per_batch,
            total_frames=segment.stop - segment.start,
            policy_device=device,
        )
        for data in collector:
            data = data.reshape(-1)
            stored = data.select(*STORED_KEYS)
            if record["lazy_bytes"] is None:  # what a LazyTensorStorage holds per transition
                record["lazy_bytes"] = float(
                    sum(v[0].numel() * v.element_size() for v in stored.values(True, True))
                )
            rb.extend(stored)
            steps += data.numel()
            pbar.update(data.numel())
            explore.step(data.numel())
            episodes.record(data, frames=FRAME_SKIP * steps)
            every = cfg.logger.report_every
            if steps // every > (steps - data.numel()) // every:
                delta_bytes = storage.bytes() / len(storage)
                record["memory"].append((steps, delta_bytes, record["lazy_bytes"]))
                run.log_scalar("replay_bytes_per_transition", delta_bytes, FRAME_SKIP * steps)
                pbar.set_postfix(
                    replay_B_per_transition=f"{delta_bytes:.0f} vs {record['lazy_bytes']:.0f}",
                    eps=f"{explore.eps.item():.2f}",
                )
                if steps < total:
                    write_delta_report(run, cfg, record, episodes)
            if len(rb) < cfg.optim.learn_start:
                continue
            for _ in range(cfg.optim.updates_per_batch):
                batch = rb.sample()
                losses = loss(batch)
                optimizer.zero_grad()
                losses["loss"].backward()
                torch.nn.utils.clip_grad_norm_(loss.parameters(), cfg.optim.max_grad_norm)
                optimizer.step()
                target_updater.step()
            if steps % 1000 < cfg.collector.frames_per_batch:
                run.log_scalar("loss", losses["loss"].item(), step=FRAME_SKIP * steps)
        collector.shutdown()
        record["target_updates"] = target_updater.counter
        run.save(steps, state=state, replay_buffers={"replay": rb}, extra=record)
    pbar.close()

    # 6. report
    delta_bytes = storage.bytes() / len(storage)
    if not record["memory"] or record["memory"][-1][0] != steps:
        record["memory"].append((steps, delta_bytes, record["lazy_bytes"]))
    print(
        f"replay memory: {delta_bytes:.0f} B/transition with DeltaFrameStorage vs "
        f"{record['lazy_bytes']:.0f} B/transition with LazyTensorStorage "
        f"({compare_sizes(delta_bytes, record['lazy_bytes'])})"
    )
    report = write_delta_report(run, cfg, record, episodes)
    print(f"report written to {report}")
    return report


@hydra.main(config_path="configs", config_name="dqn_atari_delta", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point: hydra composes the configuration."""
    train(cfg)


if __name__ == "__main__":
    main()
