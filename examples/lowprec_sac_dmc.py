"""Low-precision SAC on DeepMind Control from states: fp32 vs fp16 vs bf16 vs naive fp16.

Björck et al. (ICML 2021) run SAC entirely in fp16 — no fp32 master weights — with six
numerical fixes. This recipe trains the same SAC agent once per ``--precision`` and plots
their returns side by side. Read top to bottom:

1. a DMC task from states (``make_dmc_env(..., from_pixels=False)``, action repeat 1);
2. an actor (MLP -> tanh-squashed Gaussian, log-std in [-5, 2]) and a Q-network (MLP),
   built in fp32; the actor starts with a ``CastTo(dtype)`` layer so that the collector can
   feed it fp32 observations once its weights are cast;
3. ``LowPrecisionSACLoss`` configured by ``PRECISION_PRESETS[precision]``: it casts the
   networks, the stacked critic copies, their targets and log-alpha to the precision's dtype,
   and swaps in the stable tanh-normal (normal-fix, softplus-fix) when asked;
4. ``loss.make_optimization_stepper``: one optimizer per loss (hAdam with Kahan-compensated
   updates, or Adam) and one loss scaler per optimizer (compound scaling for fp16, the
   AMP-style unscaling scaler for naive fp16, none for fp32/bf16);
5. ``loss.make_target_updater``: ``KahanSoftUpdate`` (Kahan-momentum) or TorchRL's
   ``SoftUpdate``, stepped every ``--target-update-interval`` updates;
6. the loop: collect (random actions for ``--init-random-steps``) -> fp32 replay buffer ->
   sample -> loss (batch cast to low precision inside) -> stepper -> target update; the
   stepper never lets a parameter go non-finite (it skips and counts faulty steps), so a run
   is stopped and reported as failed when its critic skipped every update of a collected
   batch (or, as a safeguard, when a parameter is non-finite);
7. periodic deterministic evaluation, TorchRL CSV logging, and a report (markdown + PNG of
   the return curves of every precision) in the printed run folder.

fp16 is meant for GPUs: on a CPU it is a correctness run (CPU fp16 kernels are slow to very
slow depending on the CPU and PyTorch build), and bf16 is the low-precision path to use.
``bf16-lean`` / ``fp16-lean`` hold the learner state in 0.55 of fp32's (int8 Kahan
compensations, stochastically rounded actor and critic updates).
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from torchrl.record.loggers import get_logger
from tqdm import tqdm

from torchrl_seer.envs import make_dmc_env
from torchrl_seer.objectives import PRECISION_PRESETS, LowPrecisionSACLoss

PRECISIONS = ("fp32", "fp16", "bf16", "fp16-lean", "bf16-lean", "naive-fp16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="cartpole_swingup", help="DMC <domain>_<task>")
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=PRECISIONS,
        default=["fp32", "bf16"],
        help="one or more precisions, trained in sequence with the same seed",
    )
    parser.add_argument("--total-steps", type=int, default=20_000, help="env steps per run")
    parser.add_argument("--init-random-steps", type=int, default=1_000)
    parser.add_argument("--frames-per-batch", type=int, default=10, help="updates per batch too")
    parser.add_argument("--action-repeat", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256, help="width of the 2-layer MLPs")
    parser.add_argument("--lr", type=float, default=3e-4, help="reference: 1e-4 at batch 1024")
    parser.add_argument("--gamma", type=float, default=0.99)
    parser.add_argument("--tau", type=float, default=0.005)
    parser.add_argument("--target-update-interval", type=int, default=2)
    parser.add_argument("--alpha-init", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=2_000, help="env steps")
    parser.add_argument("--eval-episodes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logger", default="csv", help="TorchRL logger backend")
    parser.add_argument("--out-dir", default="runs")
    return parser.parse_args(argv)


class CastTo(torch.nn.Module):
    """Casts its input to a fixed dtype (no parameters): fp32 observations into a 16-bit actor."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``x`` in ``self.dtype``."""
        return x.to(self.dtype)


class GaussianParams(torch.nn.Module):
    """Splits the actor output into (loc, scale), log-std squashed into [low, high]."""

    def __init__(self, log_std_min: float = -5.0, log_std_max: float = 2.0) -> None:
        super().__init__()
        self.low, self.high = log_std_min, log_std_max

    def forward(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(loc, scale)`` with ``scale = exp(low + (high - low) (tanh(raw) + 1) / 2)``."""
        loc, raw_log_std = out.chunk(2, dim=-1)
        log_std = self.low + 0.5 * (self.high - self.low) * (raw_log_std.tanh() + 1)
        return loc, log_std.exp()


def make_agent(env, hidden: int, dtype: torch.dtype):
    obs_dim = env.observation_spec["observation"].shape[-1]
    act_dim = env.action_spec.shape[-1]
    trunk = MLP(
        in_features=obs_dim,
        out_features=2 * act_dim,
        num_cells=[hidden, hidden],
        activation_class=torch.nn.ReLU,
    )
    actor = ProbabilisticActor(
        TensorDictModule(
            torch.nn.Sequential(CastTo(dtype), trunk, GaussianParams()),
            in_keys=["observation"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        spec=env.action_spec,
        distribution_class=TanhNormal,
    )
    qnet = MLP(
        in_features=obs_dim + act_dim,
        out_features=1,
        num_cells=[hidden, hidden],
        activation_class=torch.nn.ReLU,
    )
    return actor, ValueOperator(qnet, in_keys=["observation", "action"])


def all_finite(loss: LowPrecisionSACLoss) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in loss.parameters())


def evaluate(env, policy, episodes: int) -> float:
    returns = []
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(episodes):
            rollout = env.rollout(10_000, policy, break_when_any_done=True)
            returns.append(rollout["next", "reward"].sum().item())
    return sum(returns) / len(returns)


def train(precision: str, args: argparse.Namespace, run_dir: Path) -> dict:
    torch.manual_seed(args.seed)
    domain, task = args.env.split("_", 1)
    make_env = lambda seed: make_dmc_env(  # noqa: E731
        domain, task, from_pixels=False, action_repeat=args.action_repeat, seed=seed
    )
    env, eval_env = make_env(args.seed), make_env(args.seed + 1000)

    # 2-3. networks in fp32, then the loss casts them and swaps in the fixed distribution
    actor, qvalue = make_agent(env, args.hidden, PRECISION_PRESETS[precision]["dtype"])
    loss = LowPrecisionSACLoss(
        actor,
        qvalue,
        **PRECISION_PRESETS[precision],
        alpha_init=args.alpha_init,
        loss_function="l2",  # pytorch_sac's critic loss
    )
    loss.make_value_estimator(gamma=args.gamma)
    # 4-5. optimizers + scalers, and the target updater, as the switches select
    stepper = loss.make_optimization_stepper(lr=args.lr)
    target_updater = loss.make_target_updater(tau=args.tau)

    # the collector's policy: fp32 observations in (CastTo), fp32 actions out
    policy = TensorDictSequential(
        actor,
        TensorDictModule(lambda a: a.float(), in_keys=["action"], out_keys=["action"]),
        selected_out_keys=["action"],
    )
    collector = Collector(
        env,
        policy,
        frames_per_batch=args.frames_per_batch,
        total_frames=args.total_steps,
        init_random_frames=args.init_random_steps,
    )
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(args.total_steps), batch_size=args.batch_size
    )
    logger = get_logger(args.logger, logger_name=str(run_dir), experiment_name=precision)

    curve: list[tuple[int, float]] = []
    result = {"precision": precision, "diverged_at": None, "skipped_steps": 0, "updates": 0}
    start = time.perf_counter()
    pbar = tqdm(total=args.total_steps, desc=precision, unit="step")
    steps = 0
    for batch in collector:
        batch: TensorDictBase
        buffer.extend(batch.reshape(-1))
        steps += batch.numel()
        pbar.update(batch.numel())
        done = batch["next", "done"].squeeze(-1)
        for episode_return in batch["next", "episode_reward"][done].flatten().tolist():
            logger.log_scalar("train_return", episode_return, step=steps)
        if steps >= args.init_random_steps:
            critic_skips = stepper.skipped_steps["loss_qvalue"]
            for _ in range(args.frames_per_batch):  # update-to-data ratio 1
                metrics = stepper.optimize(loss(buffer.sample()))
                result["updates"] += 1
                result["skipped_steps"] += int(metrics["skipped_steps"])
                if result["updates"] % args.target_update_interval == 0:
                    target_updater.step()
            for key in ("loss_qvalue", "loss_actor", "alpha"):
                logger.log_scalar(key, float(metrics[key]), step=steps)
            stalled = stepper.skipped_steps["loss_qvalue"] - critic_skips == args.frames_per_batch
            if stalled or not all_finite(loss):
                result["diverged_at"] = steps
                reason = "every critic step was skipped" if stalled else "non-finite parameters"
                tqdm.write(f"{precision}: failed at step {steps} ({reason})")
                break
        if steps % args.eval_every < args.frames_per_batch:
            episode_return = evaluate(eval_env, policy, args.eval_episodes)
            curve.append((steps, episode_return))
            logger.log_scalar("eval_return", episode_return, step=steps)
            pbar.set_postfix(eval_return=f"{episode_return:.1f}")
    pbar.close()
    collector.shutdown()
    result.update(curve=curve, seconds=time.perf_counter() - start)
    return result


def write_report(results: list[dict], args: argparse.Namespace, run_dir: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    for res in results:
        if res["curve"]:
            xs, ys = zip(*res["curve"], strict=True)
            ax.plot(xs, ys, marker="o", label=res["precision"])
        if res["diverged_at"] is not None:
            ax.axvline(res["diverged_at"], ls="--", color="grey")
    ax.set(xlabel="environment steps", ylabel="evaluation return", title=args.env)
    ax.legend()
    fig.tight_layout()
    fig.savefig(run_dir / "returns.png", dpi=120)
    lines = [
        f"# Low-precision SAC on {args.env}",
        "",
        f"{args.total_steps} env steps per run, seed {args.seed}, batch {args.batch_size}, "
        f"2x{args.hidden} MLPs, lr {args.lr}, action repeat {args.action_repeat}.",
        "",
        "| precision | last eval return | best eval return | failed at step "
        "| skipped optimizer steps | updates | wall time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for res in results:
        returns = [r for _, r in res["curve"]]
        last = f"{returns[-1]:.1f}" if returns else "n/a"
        best = f"{max(returns):.1f}" if returns else "n/a"
        diverged = res["diverged_at"] if res["diverged_at"] is not None else "no"
        lines.append(
            f"| {res['precision']} | {last} | {best} | {diverged} | {res['skipped_steps']} "
            f"| {res['updates']} | {res['seconds']:.0f} |"
        )
    lines += ["", "![returns](returns.png)", ""]
    report = run_dir / "report.md"
    report.write_text("\n".join(lines))
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    run_dir = Path(args.out_dir) / f"lowprec_sac_{args.env}_{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir.mkdir(parents=True, exist_ok=True)
    results = [train(precision, args, run_dir) for precision in args.precision]
    report = write_report(results, args, run_dir)
    print(f"Report: {report}")
    for res in results:
        returns = [r for _, r in res["curve"]]
        best = max(returns) if returns else math.nan
        print(f"  {res['precision']}: best eval return {best:.1f}, failed at {res['diverged_at']}")


if __name__ == "__main__":
    main()
