"""AcceRL + SAC: compressed actors, Retrace(λ) Corrector, Monitor (off-policy, continuous control).

The whole algorithm in one file:

1. The **learner** trains SAC (full precision) from a replay buffer of *sequences* (TorchRL
   ``SliceSampler``), with critic targets from :class:`~torchrl_seer.objectives.RetraceSACLoss`:
   Retrace(λ) with c = λ·min(1, π/μ), μ = the compressed actor that collected the data.
2. **Actors** are TorchRL collector workers acting with a compressed copy of the learner's actor
   (``--compression``: ``none``, ``auto`` or a pipeline such as ``int8``); every transition stores
   the compressed actor's log-prob (``action_log_prob``) and the policy version.
3. Every ``--ship-every`` learner updates the actor is compressed and shipped through
   :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme`.
4. The **Monitor** steps compression down/up on KL(π‖μ) (our rules; see ``docs/accerl.md``).

Run: ``python examples/accerl_sac.py`` (Pendulum-v1, CPU) or ``--env HalfCheetah-v5``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.data import LazyTensorStorage, SliceSampler, TensorDictReplayBuffer
from torchrl.envs import Compose, DoubleToFloat, GymEnv, RewardSum, StepCounter, TransformedEnv
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.objectives import SoftUpdate
from torchrl.record.loggers import get_logger

from torchrl_seer.collectors import (
    CompressedPolicy,
    CompressedWeightSyncScheme,
    CompressionMonitor,
    fallback_ladder,
)
from torchrl_seer.objectives import RetraceSACLoss

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accerl_common import (
    RunLog,
    choose_compressor,
    make_actor_collector,
    ship_weights,
    write_accerl_report,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="AcceRL SAC with Retrace")
    parser.add_argument("--env", default="Pendulum-v1", help="gymnasium continuous task")
    parser.add_argument("--compression", default="auto", help="none | auto | pipeline string")
    parser.add_argument("--workers", type=int, default=1, help="collector worker processes")
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--frames-per-batch", type=int, default=200)
    parser.add_argument("--init-frames", type=int, default=1_000, help="frames before updates")
    parser.add_argument("--updates-per-batch", type=int, default=50)
    parser.add_argument("--sequence", type=int, default=8, help="Retrace sequence length T")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per update")
    parser.add_argument("--lmbda", type=float, default=0.95, help="Retrace trace decay")
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--ship-every", type=int, default=50, help="learner updates per ship")
    parser.add_argument("--kl-bound", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threshold", type=float, default=None, help="return threshold for time-to-threshold"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (learner)")
    parser.add_argument("--logger", default="csv", help="csv | tensorboard | wandb")
    parser.add_argument("--no-compare", action="store_true", help="skip the full-actor run")
    parser.add_argument("--out", default="runs")
    return parser.parse_args(argv)


def env_maker(name):
    def make():
        return TransformedEnv(GymEnv(name), Compose(DoubleToFloat(), RewardSum(), StepCounter()))

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


def run(args, compression, logger, label):
    torch.manual_seed(args.seed)
    make_env = env_maker(args.env)
    probe_env = make_env()
    actor, qvalue = make_networks(probe_env, args.width)
    # single-environment workers: the actors act at batch 1
    example = probe_env.reset().reshape(-1)
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

    # replay of sequences: Retrace needs consecutive transitions of one trajectory
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(args.frames),
        sampler=SliceSampler(slice_len=args.sequence, traj_key=("collector", "traj_ids")),
        batch_size=args.batch_size * args.sequence,
    )
    loss = RetraceSACLoss(
        actor, qvalue, lmbda=args.lmbda, gamma=args.gamma, action_spec=probe_env.action_spec
    )
    target_updater = SoftUpdate(loss, tau=0.005)
    optim = torch.optim.Adam(loss.parameters(), lr=args.lr)
    monitor = CompressionMonitor(
        actor, ladder=fallback_ladder(compressor), kl_bound=args.kl_bound, logger=logger
    )

    run_log = RunLog(label, total_frames=args.frames, logger=logger)
    updates = 0
    for batch in collector:
        monitor.record_actor(batch.numel(), run_log.collected(batch))
        buffer.extend(batch.reshape(-1))

        t0 = time.perf_counter()
        if run_log.frames >= args.init_frames:
            for _ in range(args.updates_per_batch):
                sample = buffer.sample().reshape(args.batch_size, args.sequence)
                losses = loss(sample)
                total = losses["loss_actor"] + losses["loss_qvalue"] + losses["loss_alpha"]
                optim.zero_grad()
                total.backward()
                optim.step()
                target_updater.step()
                updates += 1
                if updates % args.ship_every == 0:
                    ship_weights(collector, actor, policy, scheme, workers=args.workers)
            level = monitor.level
            monitor.record_learner(
                args.updates_per_batch, time.perf_counter() - t0, version=scheme.version
            )
            monitor.check(batch.reshape(-1), step=run_log.frames)
            if monitor.level != level:
                scheme.compressor = monitor.compressor
                print(f"[{label}] monitor: {monitor.events[-1]}")
        run_log.learned(time.perf_counter() - t0)
        run_log.end_of_batch(batch, pipeline=monitor.compressor.spec())
    collector.shutdown()
    return run_log.summary(compression=why, monitor=monitor)


def main(argv=None):
    args = parse_args(argv)
    config = dict(vars(args))  # the settings, saved with the results
    torch.set_num_threads(args.threads)  # int8/bf16 CPU kernels contend badly for cores
    run_dir = Path(args.out) / f"accerl_sac_{time.strftime('%Y%m%d_%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = get_logger(args.logger, logger_name=str(run_dir), experiment_name="accerl_sac")
    results = [run(args, args.compression, logger, label=f"compressed ({args.compression})")]
    if not args.no_compare and args.compression != "none":
        results.append(run(args, "none", logger, label="full-precision actors"))
    report = write_accerl_report(
        results, run_dir, title="AcceRL SAC + Retrace run", threshold=args.threshold, config=config
    )
    print(f"report: {report}")
    return report


if __name__ == "__main__":
    main()
