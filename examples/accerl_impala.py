"""AcceRL + IMPALA-style actor-critic: compressed actors, V-trace Corrector, Monitor.

The whole algorithm in one file:

1. The **learner** trains a full-precision actor-critic (TorchRL ``A2CLoss``).
2. **Actors** are TorchRL collector workers that act with a *compressed* copy of the learner's
   policy (``--compression``: ``none``, ``auto`` or a pipeline such as ``prune0.5+int8``), and
   record the behaviour log-prob log μ(a|x) of the compressed network and the policy version.
3. Every ``--ship-every`` learner updates the learner's policy is compressed and shipped to the
   workers through :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme` (pipes).
4. The **Corrector** is V-trace (``TakenActionVTrace``: TorchRL's ``VTrace`` evaluated at
   the taken action) with μ = the compressed actor.
5. The **Monitor** measures KL(π‖μ), ratios, policy lag and throughput and steps the compression
   down (int8 → bf16 → fp32) when the compressed actor diverges, back up when it is safe.

With ``--compare`` (default) the same run is repeated with uncompressed actors, and the report
plots return against wall time for both.

Run: ``python examples/accerl_impala.py --frames 20000`` (CartPole, CPU, a few minutes), or
``--atari Pong`` for the pixel task where actor inference is heavy.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tensordict.nn import TensorDictModule
from torch import nn
from torchrl.envs import Compose, GymEnv, RewardSum, SerialEnv, StepCounter, TransformedEnv
from torchrl.modules import MLP, ProbabilisticActor, ValueOperator
from torchrl.objectives import A2CLoss
from torchrl.record.loggers import get_logger

from torchrl_seer.collectors import (
    CompressedPolicy,
    CompressedWeightSyncScheme,
    CompressionMonitor,
    fallback_ladder,
)
from torchrl_seer.objectives.value import TakenActionVTrace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accerl_common import (
    RunLog,
    choose_compressor,
    make_actor_collector,
    ship_weights,
    write_accerl_report,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="AcceRL IMPALA-style actor-critic")
    parser.add_argument("--env", default="CartPole-v1", help="gymnasium task (classic control)")
    parser.add_argument("--atari", default=None, help="Atari game (e.g. Pong): pixel policy")
    parser.add_argument("--compression", default="auto", help="none | auto | pipeline string")
    parser.add_argument("--workers", type=int, default=2, help="collector worker processes")
    parser.add_argument(
        "--envs-per-worker", type=int, default=1, help="environments per worker (actor batch)"
    )
    parser.add_argument("--width", type=int, default=64, help="hidden width of the MLP policy")
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--frames-per-batch", type=int, default=256)
    parser.add_argument("--ship-every", type=int, default=1, help="learner updates per ship")
    parser.add_argument("--monitor-every", type=int, default=5, help="batches per Monitor check")
    parser.add_argument("--kl-bound", type=float, default=0.02)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--max-grad-norm", type=float, default=0.5, help="gradient clipping")
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--entropy-coef", type=float, default=0.01)
    parser.add_argument(
        "--threshold", type=float, default=None, help="return threshold for time-to-threshold"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of this process (learner)"
    )
    parser.add_argument("--logger", default="csv", help="csv | tensorboard | wandb")
    parser.add_argument("--no-compare", action="store_true", help="skip the full-actor run")
    parser.add_argument("--out", default="runs")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- environment
def env_maker(args):
    """One worker's environment: ``--envs-per-worker`` copies stepped together (actor batch)."""
    if args.atari:
        from torchrl_seer.envs import make_atari_env

        def make_one():
            return make_atari_env(args.atari, seed=args.seed)

    else:

        def make_one():
            env = GymEnv(args.env, categorical_action_encoding=True)
            return TransformedEnv(env, Compose(RewardSum(), StepCounter()))

    if args.envs_per_worker == 1:
        return make_one

    def make():
        return SerialEnv(args.envs_per_worker, make_one)

    return make


# ----------------------------------------------------------------------------- networks
def make_networks(env, width):
    n_actions = int(env.action_spec.space.n)
    if "pixels" in env.observation_spec.keys():
        key = "pixels"

        def body(out_features):
            return NatureCNN(out_features)

    else:
        key = "observation"
        n_obs = env.observation_spec[key].shape[-1]

        def body(out_features):
            return MLP(in_features=n_obs, out_features=out_features, num_cells=[width, width])

    actor = ProbabilisticActor(
        TensorDictModule(body(n_actions), in_keys=[key], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,  # the actor's log mu(a|x): recorded by the compressed network
    )
    critic = ValueOperator(body(1), in_keys=[key])
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
def run(args, compression: str, logger, label: str):
    torch.manual_seed(args.seed)
    make_env = env_maker(args)
    probe_env = make_env()
    actor, critic = make_networks(probe_env, args.width)
    with torch.no_grad():  # materialise shapes
        td = probe_env.reset()
        actor(td.unsqueeze(0))
        critic(td.unsqueeze(0))
    # timed at the actors' batch: one worker's environments (batch 1 by default)
    example = td.reshape(-1)
    compressor, why = choose_compressor(compression, actor, example, kl_bound=args.kl_bound)
    print(f"[{label}] compression: {why}")

    scheme = CompressedWeightSyncScheme(compressor)
    policy = CompressedPolicy(actor, compressor)
    collector = make_actor_collector(
        make_env,
        policy,
        scheme,
        workers=args.workers,
        frames_per_batch=args.frames_per_batch,
        total_frames=args.frames,
    )

    loss = A2CLoss(actor, critic, entropy_coeff=args.entropy_coef)
    vtrace = TakenActionVTrace(gamma=args.gamma, value_network=critic, actor_network=actor)
    vtrace.set_keys(sample_log_prob="action_log_prob")
    loss.value_estimator = vtrace  # the Corrector: V-trace with mu = compressed actor
    optim = torch.optim.Adam(loss.parameters(), lr=args.lr)
    monitor = CompressionMonitor(
        actor, ladder=fallback_ladder(compressor), kl_bound=args.kl_bound, logger=logger
    )

    run_log = RunLog(label, total_frames=args.frames, logger=logger)
    for i, batch in enumerate(collector):
        monitor.record_actor(batch.numel(), run_log.collected(batch))
        batch = batch.reshape(-1, batch.shape[-1])  # [workers * envs, T]

        # learner: one V-trace-corrected actor-critic update per batch
        t0 = time.perf_counter()
        losses = loss(batch)
        total = losses["loss_objective"] + losses["loss_critic"] + losses["loss_entropy"]
        optim.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_(loss.parameters(), args.max_grad_norm)
        optim.step()
        if (i + 1) % args.ship_every == 0:
            ship_weights(collector, actor, policy, scheme, workers=args.workers)
        learner_seconds = time.perf_counter() - t0
        run_log.learned(learner_seconds)
        monitor.record_learner(1, learner_seconds, version=scheme.version)

        if i % args.monitor_every == 0:
            level = monitor.level
            monitor.check(batch, step=run_log.frames)
            if monitor.level != level:  # the Monitor moved: ship the new pipeline next time
                scheme.compressor = monitor.compressor
                print(f"[{label}] monitor: {monitor.events[-1]}")
        run_log.end_of_batch(batch, pipeline=monitor.compressor.spec())
    collector.shutdown()
    return run_log.summary(compression=why, monitor=monitor)


def main(argv=None):
    args = parse_args(argv)
    config = dict(vars(args))  # the settings, saved with the results
    # int8/bf16 CPU kernels contend badly for cores with other processes: one thread per process
    torch.set_num_threads(args.threads)
    run_dir = Path(args.out) / f"accerl_impala_{time.strftime('%Y%m%d_%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = get_logger(args.logger, logger_name=str(run_dir), experiment_name="accerl_impala")
    compression = args.compression
    results = [run(args, compression, logger, label=f"compressed ({compression})")]
    if not args.no_compare and compression != "none":
        results.append(run(args, "none", logger, label="full-precision actors"))
    report = write_accerl_report(
        results, run_dir, title="AcceRL IMPALA run", threshold=args.threshold, config=config
    )
    print(f"report: {report}")
    return report


if __name__ == "__main__":
    main()
