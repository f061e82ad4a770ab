"""SEER on Atari: DQN with the data-efficient Rainbow encoder, frozen at T_f, latent replay after.

Read top to bottom:

1. an Atari env (84x84 grayscale, 4 stacked frames, frame skip 4);
2. a Q-network = data-efficient CNN (two 5x5 stride-5 convs, 576 features) + MLP head. The CNN is a
   ``SplitEncoder``: ``frozen_part`` (the convs) and ``trainable_part`` (identity);
   ``LatentOrPixelFeatures`` runs the whole CNN on pixels (acting), or nothing but the
   trainable part on stored latents (learning after the freeze);
3. TorchRL's ``DQNLoss`` (double DQN, TD(0) on n-step returns from ``MultiStep``), Adam, and a
   periodic ``HardUpdate`` of the target network;
4. a pixel replay buffer (optionally prioritized);
5. ``FreezeEncoderHook``: at step T_f it stops the CNN's gradients, drops it from Adam, aligns the
   target CNN, encodes every stored transition into 576-float latents, frees the pixel storage,
   grows the buffer to the same memory budget, and encodes new transitions on write;
6. the loop: collect → write → ``hook.step`` → sample → loss → backward → step;
7. an end-of-run report (markdown + PNG) in the run folder, printed at the end.

``--demo`` runs the whole thing, freeze and migration included, in a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

import torch
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.collectors import Collector
from torchrl.data import (
    LazyTensorStorage,
    PrioritizedSampler,
    RandomSampler,
    TensorDictReplayBuffer,
)
from torchrl.data.postprocs import MultiStep
from torchrl.modules import MLP, EGreedyModule, QValueModule
from torchrl.objectives import DQNLoss, HardUpdate
from torchrl.record.loggers import get_logger
from tqdm import tqdm

from torchrl_seer.data import LatentReplayOptions, QuantizedStorage, reference_capacity_atari
from torchrl_seer.envs import make_atari_env
from torchrl_seer.modules import DataEfficientAtariEncoder, LatentOrPixelFeatures
from torchrl_seer.trainers import FreezeEncoderHook, ParameterConvergence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seer_report import write_seer_report

DEMO = {
    "total_steps": 6_000,
    "freeze_at": "2000",
    "buffer_size": 5_000,
    "learn_start": 500,
    "target_update": 500,
    "eps_decay_steps": 3_000,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (``--demo`` overrides the run length for a short showcase)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--game", default="Pong")
    p.add_argument("--total-steps", type=int, default=100_000, help="agent steps")
    p.add_argument(
        "--freeze-at", default="50000", help="T_f in agent steps, or 'auto' (parameter change)"
    )
    p.add_argument("--buffer-size", type=int, default=100_000, help="pixel capacity C")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--adam-eps", type=float, default=1.5e-4)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--n-steps", type=int, default=3, help="multi-step return length")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--learn-start", type=int, default=1_600)
    p.add_argument("--target-update", type=int, default=2_000, help="updates between hard copies")
    p.add_argument("--frames-per-batch", type=int, default=8, help="agent steps per collection")
    p.add_argument("--updates-per-batch", type=int, default=8)
    p.add_argument("--eps-decay-steps", type=int, default=20_000)
    p.add_argument("--prioritized", action="store_true", help="prioritized replay (alpha .5)")
    p.add_argument("--capacity-rule", choices=["measured", "reference"], default="measured")
    p.add_argument("--max-capacity", type=int, default=None, help="cap on the latent capacity")
    p.add_argument(
        "--latent-capacity",
        type=int,
        default=None,
        help="explicit latent capacity (else the measured rule; an empty buffer keeps its own)",
    )
    p.add_argument("--latent-dtype", choices=["fp32", "bf16", "int8"], default="fp32")
    p.add_argument("--auto-interval", type=int, default=1_000, help="auto: steps between checks")
    p.add_argument("--auto-threshold", type=float, default=0.01, help="auto: relative change")
    p.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is fastest on 2 cores)"
    )
    p.add_argument("--save-encoder", default=None, help="save the frozen CNN here at the end")
    p.add_argument(
        "--load-encoder", default=None, help="start from a saved frozen CNN (use --freeze-at 0)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logger", default="csv")
    p.add_argument("--out-dir", default="runs")
    p.add_argument("--demo", action="store_true", help="short run (a few minutes on 2 cores)")
    args = p.parse_args(argv)
    if args.demo:
        for key, value in DEMO.items():
            setattr(args, key, value)
    return args


def main(argv: list[str] | None = None) -> Path:
    """Trains DQN + SEER and returns the report path."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    run_dir = Path(args.out_dir) / f"seer_atari_{args.game}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = get_logger(args.logger, logger_name=str(run_dir), experiment_name="seer_atari")

    # 1. environment
    env = make_atari_env(args.game, seed=args.seed)
    num_actions = env.action_spec.space.n

    # 2. Q-network: frozen-able CNN + trainable head
    encoder = DataEfficientAtariEncoder(4)
    if args.load_encoder is not None:  # transfer: the CNN comes from another task
        encoder.load_frozen_part(args.load_encoder)
    head = TensorDictModule(
        MLP(in_features=576, out_features=num_actions, num_cells=[args.hidden]),
        in_keys=["features"],
        out_keys=["action_value"],
    )
    qnet = TensorDictSequential(
        LatentOrPixelFeatures(encoder), head, QValueModule(spec=env.action_spec)
    )
    explore = EGreedyModule(
        env.action_spec, eps_init=1.0, eps_end=0.01, annealing_num_steps=args.eps_decay_steps
    )
    policy = TensorDictSequential(qnet, explore)

    # 3. loss, optimizer, target updates
    loss = DQNLoss(qnet, action_space=env.action_spec, delay_value=True, double_dqn=True)
    loss.make_value_estimator(gamma=args.gamma)
    optimizer = torch.optim.Adam(loss.parameters(), lr=args.lr, eps=args.adam_eps, fused=True)
    target_updater = HardUpdate(loss, value_network_update_interval=args.target_update)

    # 4. replay buffer of pixel transitions (the n-step return is computed once, at collection,
    #    so the same rule holds before and after the freeze)
    sampler = (
        PrioritizedSampler(args.buffer_size, alpha=0.5, beta=0.4)
        if args.prioritized
        else RandomSampler()
    )
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(args.buffer_size), sampler=sampler, batch_size=args.batch_size
    )
    stored_keys = [
        "pixels",
        "action",
        "steps_to_next_obs",
        ("next", "pixels"),
        ("next", "reward"),
        ("next", "done"),
        ("next", "terminated"),
    ]

    # 5. the SEER freeze
    latent_keys = ["latent", ("next", "latent")]
    latent_storage = None
    if args.latent_dtype != "fp32":
        latent_storage = functools.partial(
            QuantizedStorage, keys=latent_keys, dtype=args.latent_dtype
        )
    freeze_at: int | str = "auto" if args.freeze_at == "auto" else int(args.freeze_at)
    hook = FreezeEncoderHook(
        encoder,
        freeze_at=freeze_at,
        modules=[loss],
        optimizers=[optimizer],
        replay_buffer=rb,
        target_sync="encoder",  # target CNN = online CNN; target head keeps its hard updates
        replay_options=LatentReplayOptions(
            max_capacity=args.max_capacity,
            capacity=(
                functools.partial(reference_capacity_atari, t_max=args.total_steps)
                if args.capacity_rule == "reference"
                else args.latent_capacity
            ),
            storage_factory=latent_storage,
        ),
        convergence=ParameterConvergence(
            encoder.frozen_part.parameters(),
            check_interval=args.auto_interval,
            threshold=args.auto_threshold,
            min_step=args.learn_start,
        )
        if freeze_at == "auto"
        else None,
        logger=logger,
    )

    # 6. training loop
    collector = Collector(
        env,
        policy,
        frames_per_batch=args.frames_per_batch,
        total_frames=args.total_steps,
        postproc=MultiStep(gamma=args.gamma, n_steps=args.n_steps) if args.n_steps > 1 else None,
    )
    episode_returns: list[tuple[int, float]] = []
    update_seconds: list[tuple[bool, float]] = []
    steps = 0
    hook.step(0)  # with --freeze-at 0 (transfer) the buffer stores latents from the start
    pbar = tqdm(total=args.total_steps, desc="SEER Atari", unit="step")
    for data in collector:
        data = data.reshape(-1)
        rb.extend(data.select(*stored_keys))
        steps += data.numel()
        pbar.update(data.numel())
        explore.step(data.numel())
        done = data["next", "done"].squeeze(-1)
        for ret in data["next", "episode_reward"][done].flatten().tolist():
            episode_returns.append((4 * steps, ret))
            logger.log_scalar("episode_return", ret, step=4 * steps)
        if hook.step(steps):
            hook.freeze_report["freeze_frame"] = 4 * steps
        if hook.convergence is not None and hook.convergence.history:
            step, change = hook.convergence.history[-1]
            if step == steps:
                logger.log_scalar("encoder_relative_change", change, step=step)
        if len(rb) < args.learn_start:
            continue
        for _ in range(args.updates_per_batch):
            start = time.perf_counter()
            batch = rb.sample()
            losses = loss(batch)
            optimizer.zero_grad()
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(
                [p for g in optimizer.param_groups for p in g["params"]], 10.0
            )
            optimizer.step()
            if args.prioritized:
                rb.update_tensordict_priority(batch)
            update_seconds.append((hook.frozen, time.perf_counter() - start))
            target_updater.step()
        if steps % 1000 < args.frames_per_batch:
            logger.log_scalar("loss", losses["loss"].item(), step=4 * steps)
            logger.log_scalar("update_ms", 1e3 * update_seconds[-1][1], step=4 * steps)
            pbar.set_postfix(eps=f"{explore.eps.item():.2f}", frozen=hook.frozen, rb=len(rb))
    pbar.close()
    collector.shutdown()
    if args.save_encoder is not None:
        encoder.save_frozen_part(args.save_encoder)

    # 7. report
    report = write_seer_report(
        run_dir,
        title=f"SEER + DQN on {args.game}",
        episode_returns=episode_returns,
        update_seconds=update_seconds,
        freeze=hook.freeze_report,
        config=vars(args),
    )
    print(f"report written to {report.parent}")
    return report


if __name__ == "__main__":
    main()
