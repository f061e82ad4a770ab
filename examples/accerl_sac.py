"""AcceRL + SAC: compressed actors, Retrace(λ) Corrector, Monitor (off-policy, continuous control).

The whole algorithm in one file:

1. The **learner** trains SAC (full precision) from a replay buffer of *sequences* (TorchRL
   ``SliceSampler``), with critic targets from :class:`~torchrl_seer.objectives.RetraceSACLoss`:
   Retrace(λ) with c = λ·min(1, π/μ), μ = the compressed actor that collected the data.
2. **Actors** are TorchRL collector workers acting with a compressed copy of the learner's actor
   (``accerl.compression``: ``none``, ``auto`` or a pipeline such as ``int8``); every transition
   stores the compressed actor's log-prob (``action_log_prob``) and the policy version.
3. Every ``accerl.ship_every`` learner updates the actor is compressed and shipped through
   :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme`.
4. The **Monitor** steps compression down/up on KL(π‖μ) (our rules; see ``docs/accerl.md``).

Run (configuration: ``examples/configs/accerl_sac.yaml``): ``python examples/accerl_sac.py``
(Pendulum-v1, CPU) or ``env.name=HalfCheetah-v5``.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs import Compose, DoubleToFloat, GymEnv, RewardSum, StepCounter, TransformedEnv
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SoftUpdate

from torchrl_seer.collectors import (
    CompressedPolicy,
    CompressedWeightSyncScheme,
    CompressionMonitor,
    fallback_ladder,
)
from torchrl_seer.objectives import RetraceSACLoss
from torchrl_seer.trainers.helpers import RecipeRun, check_config, seed_everything
from torchrl_seer.trainers.helpers.accerl import (
    AcceRLArm,
    RunLog,
    check_accerl_config,
    run_accerl,
    ship_weights,
)


def check(cfg: DictConfig) -> None:
    """Refuses a bad configuration before anything is created."""
    check_accerl_config(cfg)
    check_config(
        cfg,
        positive=["optim.batch_size", "optim.updates_per_batch", "loss.sequence"],
        non_negative=["optim.learn_start", "loss.lmbda", "loss.tau"],
    )  # fmt: skip
    if cfg.replay_buffer.size is not None:
        check_config(cfg, positive=["replay_buffer.size"])


def env_maker(name: str):
    """Returns ``make_env(seed)``: the gymnasium task, seeded before the collector's reset."""

    def make(seed: int):
        env = TransformedEnv(GymEnv(name), Compose(DoubleToFloat(), RewardSum(), StepCounter()))
        env.set_seed(seed)
        return env

    return make


def make_networks(env, width):
    n_obs = env.observation_spec["observation"].shape[-1]
    n_act = env.action_spec.shape[-1]
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(
                MLP(in_features=n_obs, out_features=2 * n_act, num_cells=[width, width]),
                NormalParamExtractor(),
            ),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        distribution_kwargs={"low": env.action_spec.space.low, "high": env.action_spec.space.high},
        return_log_prob=True,  # behaviour log mu(a|x), computed by the compressed actor
    )
    qvalue = ValueOperator(
        MLP(in_features=n_obs + n_act, out_features=1, num_cells=[width, width]),
        in_keys=["observation", "action"],
    )
    return actor, qvalue


def train_arm(cfg: DictConfig, run: RecipeRun, arm: AcceRLArm, compression: str):
    """Trains one arm (compressed or full-precision actors); returns its record."""
    seed_everything(cfg.seed)
    make_env = env_maker(cfg.env.name)
    probe_env = make_env(cfg.seed)
    actor, qvalue = make_networks(probe_env, cfg.network.width)
    # single-environment workers: the actors act at batch 1
    example = probe_env.reset().reshape(-1)
    kl_bound = cfg.accerl.kl_bound
    compressor, why = arm.starting_compressor(compression, actor, example, kl_bound=kl_bound)
    print(f"[{arm.label}] compression: {why}")

    scheme = CompressedWeightSyncScheme(compressor)
    policy = CompressedPolicy(actor, compressor)
    workers = cfg.collector.workers
    total_frames = cfg.collector.total_frames

    # replay of sequences: Retrace needs consecutive transitions of one trajectory
    batch_size, sequence = cfg.optim.batch_size, cfg.loss.sequence
    traj_key = ("collector", "traj_ids")
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(cfg.replay_buffer.size or total_frames),
        sampler=SliceSampler(slice_len=sequence, traj_key=traj_key),
        batch_size=batch_size * sequence,
    )
    loss = RetraceSACLoss(
        actor, qvalue, lmbda=cfg.loss.lmbda, gamma=cfg.loss.gamma,
        action_spec=probe_env.action_spec,
    )  # fmt: skip
    target_updater = SoftUpdate(loss, tau=cfg.loss.tau)
    optim = torch.optim.Adam(loss.parameters(), lr=cfg.optim.lr)
    monitor = CompressionMonitor(
        actor, ladder=fallback_ladder(compressor), kl_bound=kl_bound, logger=run.logger
    )
    run_log = RunLog(arm.label, total_frames=total_frames, log_scalar=run.log_scalar)
    state = {"loss": loss, "optimizer": optim, "monitor": monitor, "run_log": run_log}
    start = arm.restore(
        state=state, replay_buffers={"replay": buffer}, policy=policy, scheme=scheme,
        monitor=monitor,
    )  # fmt: skip

    collectors = arm.collectors(
        make_env, start=start, total_frames=total_frames, workers=workers,
        frames_per_batch=cfg.collector.frames_per_batch, overlap=cfg.collector.overlap,
    )  # fmt: skip
    for segment, collector in collectors:
        for batch in collector:
            monitor.record_actor(batch.numel(), run_log.collected(batch))
            # each interval's collector numbers its trajectories from 0: keep them apart
            batch[traj_key] += segment.start
            buffer.extend(batch.reshape(-1))

            t0 = time.perf_counter()
            if run_log.frames >= cfg.optim.learn_start:
                for _ in range(cfg.optim.updates_per_batch):
                    sample = buffer.sample().reshape(batch_size, sequence)
                    losses = loss(sample)
                    total = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
                    optim.zero_grad()
                    total.backward()
                    optim.step()
                    target_updater.step()
                    run_log.updates += 1
                    if run_log.updates % cfg.accerl.ship_every == 0:
                        ship_weights(collector, actor, policy, scheme, workers=workers)
                level = monitor.level
                monitor.record_learner(
                    cfg.optim.updates_per_batch, time.perf_counter() - t0, version=scheme.version
                )
                monitor.check(batch.reshape(-1), step=run_log.frames)
                if monitor.level != level:
                    scheme.compressor = monitor.compressor
                    print(f"[{arm.label}] monitor: {monitor.events[-1]}")
            run_log.learned(time.perf_counter() - t0)
            run_log.end_of_batch(batch, pipeline=monitor.compressor.spec())
            arm.report_due(run_log, monitor=monitor)
    return run_log.summary(compression=why, monitor=monitor)


def train(cfg: DictConfig) -> Path:
    """Runs the compressed arm (and the full-precision one) and returns the report path."""
    check(cfg)
    run = RecipeRun(cfg, "accerl_sac", tag=cfg.env.name)
    cfg = run.cfg
    torch.set_num_threads(cfg.threads)  # int8/bf16 CPU kernels contend badly for cores
    report = run_accerl(
        run,
        lambda arm, compression: train_arm(cfg, run, arm, compression),
        title="AcceRL SAC + Retrace run",
    )
    print(f"report: {report}")
    return report


@hydra.main(config_path="configs", config_name="accerl_sac", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point: hydra composes the configuration."""
    train(cfg)


if __name__ == "__main__":
    main()
