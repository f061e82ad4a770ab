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
6. the loop: collect -> write -> ``hook.step`` -> sample -> loss -> backward -> step, with a
   checkpoint every ``checkpoint.interval`` agent steps (``resume=<run dir>`` continues a run);
7. a report (markdown + PNG) in the run folder, rewritten every ``logger.report_every`` steps
   (with ``seer.record_trajectory=true`` also the CNN's parameters at every criterion check, in
   ``encoder_trajectory.pt``, to calibrate ``freeze_at=auto``).

Configuration: ``examples/configs/seer_atari.yaml``; override any setting on the command line::

    python examples/seer_atari.py env.name=Breakout seer.freeze_at=auto
    python examples/seer_atari.py --config-name seer_atari_demo   # the demo, a few minutes
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
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
from tqdm import tqdm

from torchrl_seer.data import LatentReplayOptions, QuantizedStorage, reference_capacity_atari
from torchrl_seer.envs import make_atari_env
from torchrl_seer.modules import DataEfficientAtariEncoder, LatentOrPixelFeatures
from torchrl_seer.trainers import CONVERGENCE_STATISTICS, FreezeEncoderHook
from torchrl_seer.trainers.helpers import (
    EpisodeReturns,
    RecipeRun,
    check_atari_game,
    check_config,
    check_freeze_at,
    freeze_criterion,
    resolve_device,
    save_encoder_trajectory,
    seed_everything,
    write_seer_report,
)

FRAME_SKIP = 4  # environment frames per agent step: the logger's step unit is env frames
STORED_KEYS = [
    "pixels",
    "action",
    "steps_to_next_obs",
    ("next", "pixels"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
]


def check(cfg: DictConfig) -> None:
    """Refuses a bad configuration before anything is created."""
    check_config(
        cfg,
        positive=[
            "collector.total_frames", "collector.frames_per_batch", "replay_buffer.size",
            "optim.lr", "optim.batch_size", "optim.updates_per_batch", "loss.n_steps",
            "loss.target_update", "network.hidden", "exploration.eps_decay_frames",
            "logger.report_every",
        ],
        non_negative=["optim.learn_start", "seer.auto_min_step"],
        choices={"seer.capacity_rule": ["measured", "reference"],
                 "seer.latent_dtype": ["fp32", "bf16", "int8"],
                 "seer.auto_statistic": list(CONVERGENCE_STATISTICS)},
    )  # fmt: skip
    check_freeze_at(cfg.seer.freeze_at)
    if cfg.seer.load_encoder is not None and not Path(cfg.seer.load_encoder).is_file():
        raise ValueError(f"seer.load_encoder={cfg.seer.load_encoder!r} is not a file.")
    check_atari_game(cfg.env.name)


def train(cfg: DictConfig) -> Path:
    """Trains DQN + SEER and returns the report path."""
    check(cfg)
    run = RecipeRun(cfg, "seer_atari", tag=cfg.env.name)
    cfg = run.cfg
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    seeds = seed_everything(cfg.seed)

    # 1. environment (one per checkpoint interval, seeded by the collector)
    def make_env(seed: int | None = None):
        return make_atari_env(cfg.env.name, seed=seed)

    action_spec = make_env().action_spec

    # 2. Q-network: frozen-able CNN + trainable head
    encoder = DataEfficientAtariEncoder(4)
    if cfg.seer.load_encoder is not None:  # transfer: the CNN comes from another task
        encoder.load_frozen_part(cfg.seer.load_encoder)
    head = TensorDictModule(
        MLP(in_features=576, out_features=action_spec.space.n, num_cells=[cfg.network.hidden]),
        in_keys=["features"],
        out_keys=["action_value"],
    )
    qnet = TensorDictSequential(
        LatentOrPixelFeatures(encoder), head, QValueModule(spec=action_spec)
    ).to(device)
    explore = EGreedyModule(
        action_spec, eps_init=1.0, eps_end=0.01,
        annealing_num_steps=cfg.exploration.eps_decay_frames,
    ).to(device)  # fmt: skip
    policy = TensorDictSequential(qnet, explore)

    # 3. loss, optimizer, target updates
    loss = DQNLoss(qnet, action_space=action_spec, delay_value=True, double_dqn=True)
    loss.make_value_estimator(gamma=cfg.loss.gamma)
    optimizer = torch.optim.Adam(loss.parameters(), lr=cfg.optim.lr, eps=cfg.optim.eps, fused=True)
    target_updater = HardUpdate(loss, value_network_update_interval=cfg.loss.target_update)

    # 4. replay buffer of pixel transitions (the n-step return is computed once, at collection,
    #    so the same rule holds before and after the freeze)
    sampler = (
        PrioritizedSampler(cfg.replay_buffer.size, alpha=0.5, beta=0.4)
        if cfg.replay_buffer.prioritized
        else RandomSampler()
    )
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(cfg.replay_buffer.size, device=device),
        sampler=sampler,
        batch_size=cfg.optim.batch_size,
    )

    # 5. the SEER freeze
    latent_keys = ["latent", ("next", "latent")]
    latent_storage = (
        functools.partial(QuantizedStorage, keys=latent_keys, dtype=cfg.seer.latent_dtype)
        if cfg.seer.latent_dtype != "fp32"
        else functools.partial(LazyTensorStorage, device=device)
    )
    hook = FreezeEncoderHook(
        encoder,
        freeze_at=cfg.seer.freeze_at,
        modules=[loss],
        optimizers=[optimizer],
        replay_buffer=rb,
        target_sync="encoder",  # target CNN = online CNN; target head keeps its hard updates
        replay_options=LatentReplayOptions(
            max_capacity=cfg.seer.max_capacity,
            capacity=(
                functools.partial(reference_capacity_atari, t_max=cfg.collector.total_frames)
                if cfg.seer.capacity_rule == "reference"
                else cfg.seer.latent_capacity
            ),
            storage_factory=latent_storage,
        ),
        convergence=freeze_criterion(
            cfg.seer, encoder.frozen_part.parameters(), learn_start=cfg.optim.learn_start
        ),
    )

    # 6. training loop, one collector per checkpoint interval
    episodes = EpisodeReturns(run.log_scalar)
    # restore order: the hook first (it edits the optimizer and installs the latent storage)
    state = {
        "hook": hook,
        "policy": policy,
        "loss": loss,
        "optimizer": optimizer,
        "episodes": episodes,
    }
    steps, record = run.restore(state=state, replay_buffers={"replay": rb})
    record = record or {"update_seconds": [], "target_updates": 0}
    target_updater.counter = record["target_updates"]

    def report() -> Path:
        save_encoder_trajectory(hook.convergence, run.dir)
        return write_seer_report(
            run.dir,
            title=f"SEER + DQN on {cfg.env.name}",
            episode_returns=episodes.history,
            update_seconds=record["update_seconds"],
            freeze=hook.freeze_report,
            config=OmegaConf.to_container(cfg, resolve=True),
            seeds={**seeds, "environment": f"{cfg.seed} + 10000 x checkpoint interval"},
        )

    def freeze_step(steps: int) -> None:
        if hook.step(steps):
            hook.freeze_report["freeze_frame"] = FRAME_SKIP * steps
            for key, value in hook.freeze_report.items():
                if isinstance(value, (int, float)):
                    run.log_scalar(f"seer/{key}", value, step=FRAME_SKIP * steps)

    freeze_step(steps)  # with seer.freeze_at=0 (transfer) the buffer stores latents from the start
    total = cfg.collector.total_frames
    pbar = tqdm(total=total, initial=steps, desc="SEER Atari", unit="step")
    for segment in run.segments(cfg.collector.total_frames, start=steps):
        collector = Collector(
            make_env(segment.seed),  # seeded before the collector's first reset
            policy,
            frames_per_batch=cfg.collector.frames_per_batch,
            total_frames=segment.stop - segment.start,
            postproc=MultiStep(gamma=cfg.loss.gamma, n_steps=cfg.loss.n_steps)
            if cfg.loss.n_steps > 1
            else None,
            policy_device=device,
            storing_device=device,
        )
        for data in collector:
            data = data.reshape(-1)
            rb.extend(data.select(*STORED_KEYS))
            steps += data.numel()
            pbar.update(data.numel())
            explore.step(data.numel())
            episodes.record(data, frames=FRAME_SKIP * steps)
            freeze_step(steps)
            if hook.convergence is not None and hook.convergence.history:
                step, change = hook.convergence.history[-1]
                if step == steps:
                    name = f"seer/encoder_{hook.convergence.statistic}"
                    run.log_scalar(name, change, FRAME_SKIP * steps)
            every = cfg.logger.report_every
            if steps // every > (steps - data.numel()) // every and steps < total:
                report()
            if len(rb) < cfg.optim.learn_start:
                continue
            for _ in range(cfg.optim.updates_per_batch):
                start = time.perf_counter()
                batch = rb.sample()
                losses = loss(batch)
                optimizer.zero_grad()
                losses["loss"].backward()
                torch.nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]],
                    cfg.optim.max_grad_norm,
                )
                optimizer.step()
                if cfg.replay_buffer.prioritized:
                    rb.update_tensordict_priority(batch)
                record["update_seconds"].append((hook.frozen, time.perf_counter() - start))
                target_updater.step()
            if steps % 1000 < cfg.collector.frames_per_batch:
                run.log_scalar("loss", losses["loss"].item(), step=FRAME_SKIP * steps)
                run.log_scalar(
                    "update_ms", 1e3 * record["update_seconds"][-1][1], FRAME_SKIP * steps
                )
                pbar.set_postfix(eps=f"{explore.eps.item():.2f}", frozen=hook.frozen, rb=len(rb))
        collector.shutdown()
        record["target_updates"] = target_updater.counter
        run.save(steps, state=state, replay_buffers={"replay": rb}, extra=record)
    pbar.close()
    if cfg.seer.save_encoder is not None:
        encoder.save_frozen_part(cfg.seer.save_encoder)

    # 7. report
    path = report()
    print(f"report written to {path.parent}")
    return path


@hydra.main(config_path="configs", config_name="seer_atari", version_base="1.3")
def main(cfg: DictConfig) -> None:
    train(cfg)


if __name__ == "__main__":
    main()
