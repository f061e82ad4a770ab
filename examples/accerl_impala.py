"""AcceRL + IMPALA-style actor-critic: compressed actors, V-trace Corrector, Monitor.

The whole algorithm in one file:

1. The **learner** trains a full-precision actor-critic (TorchRL ``A2CLoss``).
2. **Actors** are TorchRL collector workers that act with a *compressed* copy of the learner's
   policy (``accerl.compression``: ``none``, ``auto`` or a pipeline such as ``prune0.5+int8``), and
   record the behaviour log-prob log μ(a|x) of the compressed network and the policy version.
3. Every ``accerl.ship_every`` learner updates the learner's policy is compressed and shipped to the
   workers through :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme` (pipes).
4. The **Corrector** is V-trace (``TakenActionVTrace``: TorchRL's ``VTrace`` evaluated at
   the taken action) with μ = the compressed actor.
5. The **Monitor** measures KL(π‖μ), ratios, policy lag and throughput and steps the compression
   down (int8 → bf16 → fp32) when the compressed actor diverges, back up when it is safe.

With ``accerl.compare=true`` (default) the same run is repeated with uncompressed actors, and
the report plots return against wall time for both.

Run (configuration: ``examples/configs/accerl_impala.yaml``): ``python
examples/accerl_impala.py`` (CartPole, CPU, a few minutes), or ``env.name=Pong env.atari=true``
for the pixel task where actor inference is heavy.
"""

from __future__ import annotations

import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs import Compose, GymEnv, RewardSum, SerialEnv, StepCounter, TransformedEnv
from torchrl.modules import MLP, ProbabilisticActor, ValueOperator
from torchrl.objectives import A2CLoss

from torchrl_seer.collectors import (
    AsyncDistiller,
    CompressedPolicy,
    CompressedWeightSyncScheme,
    CompressionMonitor,
    PolicyCompressor,
    fallback_ladder,
)
from torchrl_seer.envs import make_atari_env
from torchrl_seer.objectives.value import TakenActionVTrace
from torchrl_seer.trainers.helpers import (
    RecipeRun,
    check_atari_game,
    check_config,
    check_positive,
    seed_everything,
)
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
        positive=["env.envs_per_worker", "optim.max_grad_norm", "accerl.monitor_every"],
        non_negative=["loss.entropy_coef"],
    )  # fmt: skip
    if cfg.env.atari:
        check_atari_game(cfg.env.name)
    if cfg.accerl.distill_width is not None:
        check_positive(cfg, "accerl.distill_width")
        if cfg.accerl.distill_updates_per_batch is not None:
            check_positive(cfg, "accerl.distill_updates_per_batch")
        if cfg.checkpoint.interval > 0:
            raise ValueError(
                "accerl.distill_width cannot be combined with checkpoint.interval > 0: the "
                "student trains in a background thread at the pace the machine allows, so a "
                "resumed run could not reproduce it."
            )


# ----------------------------------------------------------------------------- environment
def env_maker(cfg: DictConfig):
    """Returns ``make_env(seed)``, which builds one worker's environment.

    ``env.envs_per_worker`` copies are stepped together (the actor batch); the environment is
    seeded before the collector's first reset.
    """

    def make_one():
        if cfg.env.atari:
            return make_atari_env(cfg.env.name)
        env = GymEnv(cfg.env.name, categorical_action_encoding=True)
        return TransformedEnv(env, Compose(RewardSum(), StepCounter()))

    def make(seed: int):
        env = (
            make_one()
            if cfg.env.envs_per_worker == 1
            else SerialEnv(cfg.env.envs_per_worker, make_one)
        )
        env.set_seed(seed)  # a SerialEnv gives each sub-environment its own seed from it
        return env

    return make


# ----------------------------------------------------------------------------- networks
def make_networks(env, width, critic_width=None):
    """The actor (``width``-wide torso) and the critic (``critic_width``, default ``width``)."""
    n_actions = int(env.action_spec.space.n)
    if "pixels" in env.observation_spec.keys():
        key = "pixels"

        def body(out_features, width=None):
            return NatureCNN(out_features)

    else:
        key = "observation"
        n_obs = env.observation_spec[key].shape[-1]

        def body(out_features, width=width):
            return MLP(in_features=n_obs, out_features=out_features, num_cells=[width, width])

    actor = ProbabilisticActor(
        TensorDictModule(body(n_actions), in_keys=[key], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,  # the actor's log mu(a|x): recorded by the compressed network
    )
    critic = ValueOperator(body(1, critic_width or width), in_keys=[key])
    return actor, critic


class NatureCNN(nn.Module):
    """Nature-DQN torso on uint8 frames ``[*B, 4, 84, 84]``; any number of batch dims."""

    def __init__(self, out_features):
        super().__init__()
        self.net = nn.Sequential(  # a plain Sequential: prunable and int8-quantizable
            nn.Conv2d(4, 32, 8, 4), nn.ReLU(), nn.Conv2d(32, 64, 4, 2), nn.ReLU(),
            nn.Conv2d(64, 64, 3, 1), nn.ReLU(), nn.Flatten(), nn.Linear(3136, 512), nn.ReLU(),
            nn.Linear(512, out_features),
        )  # fmt: skip

    def forward(self, pixels):
        """Scales the frames to [0, 1] and runs the torso over flattened batch dims."""
        batch = pixels.shape[:-3]
        out = self.net(pixels.reshape(-1, *pixels.shape[-3:]).float() / 255.0)
        return out.reshape(*batch, -1)


# ----------------------------------------------------------------------------- one run
def train_arm(cfg: DictConfig, run: RecipeRun, arm: AcceRLArm, compression: str):
    """Trains one arm (compressed or full-precision actors); returns its record."""
    seed_everything(cfg.seed)
    make_env = env_maker(cfg)
    probe_env = make_env(cfg.seed)
    actor, critic = make_networks(probe_env, cfg.network.width, cfg.network.critic_width)
    with torch.no_grad():  # materialise shapes
        td = probe_env.reset()
        actor(td.unsqueeze(0))
        critic(td.unsqueeze(0))
    # timed at the actors' batch: one worker's environments (batch 1 by default)
    example = td.reshape(-1)
    kl_bound = cfg.accerl.kl_bound
    compressor, why = arm.starting_compressor(compression, actor, example, kl_bound=kl_bound)
    print(f"[{arm.label}] compression: {why}")

    scheme = CompressedWeightSyncScheme(compressor)
    policy = CompressedPolicy(actor, compressor)
    workers = cfg.collector.workers
    loss = A2CLoss(actor, critic, entropy_coeff=cfg.loss.entropy_coef)
    vtrace = TakenActionVTrace(gamma=cfg.loss.gamma, value_network=critic, actor_network=actor)
    vtrace.set_keys(sample_log_prob="action_log_prob")
    loss.value_estimator = vtrace  # the Corrector: V-trace with mu = compressed actor
    optim = torch.optim.Adam(loss.parameters(), lr=cfg.optim.lr)
    ladder = fallback_ladder(compressor)
    distiller = None
    if cfg.accerl.distill_width is not None and compression != "none":
        # a smaller student, distilled in the background; the Monitor ships it (compressed
        # like the starting pipeline) once it stays within its recovery bound
        student, _ = make_networks(probe_env, cfg.accerl.distill_width)
        with torch.no_grad():
            student(td.unsqueeze(0))
        distiller = AsyncDistiller(
            actor, student, kl_bound=kl_bound, seed=cfg.seed,
            updates_per_batch=cfg.accerl.distill_updates_per_batch,
        )  # fmt: skip
        ladder = [PolicyCompressor([distiller.step, *compressor.steps]), *ladder]
    monitor = CompressionMonitor(actor, ladder=ladder, kl_bound=kl_bound, logger=run.logger)
    if distiller is not None:
        monitor.level = 1  # the actors start with the starting pipeline, not the student
    total_frames = cfg.collector.total_frames
    run_log = RunLog(arm.label, total_frames=total_frames, log_scalar=run.log_scalar)
    # the networks (their parameters are the loss's), not the loss: its V-trace estimator
    # registers its buffers at the first update
    state = {"actor": actor, "critic": critic, "optimizer": optim, "monitor": monitor,
             "run_log": run_log}  # fmt: skip
    start = arm.restore(state=state, policy=policy, scheme=scheme, monitor=monitor)

    collectors = arm.collectors(
        make_env, start=start, total_frames=total_frames, workers=workers,
        frames_per_batch=cfg.collector.frames_per_batch, overlap=cfg.collector.overlap,
    )  # fmt: skip
    if distiller is not None:
        distiller.start()
    try:
        for _, collector in collectors:
            for batch in collector:
                monitor.record_actor(batch.numel(), run_log.collected(batch))
                batch = batch.reshape(-1, batch.shape[-1])  # [workers * envs, T]

                # learner: one V-trace-corrected actor-critic update per batch
                t0 = time.perf_counter()
                losses = loss(batch)
                total = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
                optim.zero_grad()
                total.backward()
                torch.nn.utils.clip_grad_norm_(loss.parameters(), cfg.optim.max_grad_norm)
                optim.step()
                if distiller is not None:  # hands over the states and weights; never waits
                    distiller.observe(batch, actor)
                if run_log.batches % cfg.accerl.ship_every == 0:
                    ship_weights(collector, actor, policy, scheme, workers=workers)
                learner_seconds = time.perf_counter() - t0
                run_log.learned(learner_seconds, updates=1)
                monitor.record_learner(1, learner_seconds, version=scheme.version)

                if (run_log.batches - 1) % cfg.accerl.monitor_every == 0:
                    level = monitor.level
                    monitor.check(batch, step=run_log.frames)
                    if monitor.level != level:  # the Monitor moved: ship the new pipeline next time
                        scheme.compressor = monitor.compressor
                        print(f"[{arm.label}] monitor: {monitor.events[-1]}")
                run_log.end_of_batch(batch, pipeline=monitor.compressor.spec())
                arm.report_due(run_log, monitor=monitor)
    finally:
        if distiller is not None:
            distiller.stop()
            print(f"[{arm.label}] distillation: {distiller.stats()}")
    record = run_log.summary(compression=why, monitor=monitor)
    if distiller is not None:
        record["distillation"] = distiller.stats()
    return record


def train(cfg: DictConfig) -> Path:
    """Runs the compressed arm (and the full-precision one) and returns the report path."""
    check(cfg)
    run = RecipeRun(cfg, "accerl_impala", tag=cfg.env.name)
    cfg = run.cfg
    # int8/bf16 CPU kernels contend badly for cores with other processes: one thread per process
    torch.set_num_threads(cfg.threads)
    report = run_accerl(
        run,
        lambda arm, compression: train_arm(cfg, run, arm, compression),
        title="AcceRL IMPALA run",
    )
    print(f"report: {report}")
    return report


@hydra.main(config_path="configs", config_name="accerl_impala", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point: hydra composes the configuration."""
    train(cfg)


if __name__ == "__main__":
    main()
