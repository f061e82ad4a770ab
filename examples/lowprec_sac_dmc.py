"""Low-precision SAC on DeepMind Control from states: fp32 vs fp16 vs bf16 vs naive fp16.

Björck et al. (ICML 2021) run SAC entirely in fp16 — no fp32 master weights — with six
numerical fixes. This recipe trains the same SAC agent once per precision of ``loss.precisions``
and plots their returns side by side. Read top to bottom:

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
   ``SoftUpdate``, stepped every ``loss.target_update_interval`` updates;
6. the loop: collect (random actions for ``collector.init_random_frames``) -> fp32 replay buffer ->
   sample -> loss (batch cast to low precision inside) -> stepper -> target update; the
   stepper never lets a parameter go non-finite (it skips and counts faulty steps), so a run
   is stopped and reported as failed when its critic skipped every update of a collected
   batch (or, as a safeguard, when a parameter is non-finite);
7. periodic deterministic evaluation, TorchRL logging, and a report (markdown + PNG of the
   return curves of every precision) rewritten at every evaluation; a checkpoint every
   ``checkpoint.interval`` steps (``resume=<run dir>`` continues a run).

16-bit precisions pay off in time only where the hardware runs them natively: bf16 on CPUs with
AVX-512 BF16 or AMX, fp16 on GPUs and on CPUs with AVX-512 FP16 (elsewhere PyTorch emulates them,
several times slower than fp32; the loss warns). At this recipe's 2x256 networks neither is faster
than fp32 on such a CPU: their value here is memory and the check that training stays finite.
``bf16-lean`` / ``fp16-lean`` hold the learner state in 0.55 of fp32's (int8 Kahan
compensations, stochastically rounded actor and critic updates). Configuration:
``examples/configs/lowprec_sac_dmc.yaml``, e.g.::

    python examples/lowprec_sac_dmc.py "loss.precisions=[fp32,fp16,naive-fp16]" env.name=walker_walk
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.envs import ExplorationType, set_exploration_type
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
from tqdm import tqdm

from torchrl_seer.envs import make_dmc_env, split_dmc_task
from torchrl_seer.objectives import PRECISION_PRESETS, LowPrecisionSACLoss
from torchrl_seer.optim import all_finite
from torchrl_seer.trainers.helpers import (
    EpisodeReturns,
    RecipeRun,
    ReportPlot,
    ReportTable,
    check_config,
    resolve_device,
    seed_everything,
    write_report,
)

PRECISIONS = ("fp32", "fp16", "bf16", "fp16-lean", "bf16-lean", "naive-fp16")


def check(cfg: DictConfig) -> tuple[str, str]:
    """Refuses a bad configuration before anything is created; returns (domain, task)."""
    check_config(
        cfg,
        positive=[
            "collector.total_frames", "collector.frames_per_batch", "env.action_repeat",
            "replay_buffer.size",
            "optim.lr", "optim.batch_size", "loss.target_update_interval", "network.hidden",
            "logger.eval_every", "logger.eval_episodes",
        ],
        non_negative=["collector.init_random_frames", "loss.tau", "loss.alpha_init"],
        choices={"loss.precisions": PRECISIONS},
    )  # fmt: skip
    return split_dmc_task(cfg.env.name)


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


def evaluate(env, policy, episodes: int) -> float:
    returns = []
    with torch.no_grad(), set_exploration_type(ExplorationType.DETERMINISTIC):
        for _ in range(episodes):
            rollout = env.rollout(10_000, policy, break_when_any_done=True)
            returns.append(rollout["next", "reward"].sum().item())
    return sum(returns) / len(returns)


def train_precision(
    precision: str, cfg: DictConfig, run: RecipeRun, task: tuple[str, str], finished: list[dict]
) -> dict[str, Any]:
    """Trains one precision (resuming it from the run's checkpoint if it was saved mid-way)."""
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)  # every precision starts from the same seed

    def make_env(seed: int | None = None):
        return make_dmc_env(
            *task, from_pixels=False, action_repeat=cfg.env.action_repeat, seed=seed,
            device=device,
        )  # fmt: skip

    # 2-3. networks in fp32, then the loss casts them and swaps in the fixed distribution
    env = make_env()
    actor, qvalue = make_agent(env, cfg.network.hidden, PRECISION_PRESETS[precision]["dtype"])
    loss = LowPrecisionSACLoss(
        actor.to(device),
        qvalue.to(device),
        **PRECISION_PRESETS[precision],
        alpha_init=cfg.loss.alpha_init,
        loss_function="l2",  # pytorch_sac's critic loss
    )
    loss.make_value_estimator(gamma=cfg.loss.gamma)
    # 4-5. optimizers + scalers, and the target updater, as the switches select
    stepper = loss.make_optimization_stepper(lr=cfg.optim.lr)
    target_updater = loss.make_target_updater(tau=cfg.loss.tau)

    # the collector's policy: fp32 observations in (CastTo), fp32 actions out; a 16-bit actor
    # samples 16-bit actions, cast back by one more module (an fp32 actor needs none: each
    # module costs the collector about 0.5 ms per step)
    policy = actor
    if PRECISION_PRESETS[precision]["dtype"] != torch.float32:
        policy = TensorDictSequential(
            actor,
            TensorDictModule(lambda a: a.float(), in_keys=["action"], out_keys=["action"]),
            selected_out_keys=["action"],
        )
    total = cfg.collector.total_frames
    buffer = TensorDictReplayBuffer(
        storage=LazyTensorStorage(cfg.replay_buffer.size, device=device),
        batch_size=cfg.optim.batch_size,
    )
    episodes = EpisodeReturns(run.log_scalar, prefix=f"{precision}/")
    state: dict[str, Any] = {"loss": loss, "stepper": stepper, "episodes": episodes}
    if hasattr(target_updater, "state_dict"):
        state["target_updater"] = target_updater
    steps, result = 0, None
    if run.checkpointer.exists() and cfg.resume is not None:
        saved = run.checkpointer.read()["extra"]
        if saved["current"]["precision"] == precision:
            steps, extra = run.restore(state=state, replay_buffers={"replay": buffer})
            result = extra["current"]
    result = result or {
        "precision": precision, "diverged_at": None, "skipped_steps": 0, "updates": 0,
        "curve": [], "seconds": 0.0, "eval_seconds": 0.0, "steps": 0,
    }  # fmt: skip

    def report() -> Path:
        return write_lowprec_report([*finished, result], cfg, run)

    start = time.perf_counter() - result["seconds"]
    pbar = tqdm(total=total, initial=steps, desc=precision, unit="step")
    for segment in run.segments(total, start=steps):
        collector = Collector(
            make_env(segment.seed),  # seeded before the collector's first reset
            policy,
            frames_per_batch=cfg.collector.frames_per_batch,
            total_frames=segment.stop - segment.start,
            init_random_frames=max(0, cfg.collector.init_random_frames - segment.start),
        )
        eval_env = make_env(segment.seed + 5_000)
        for batch in collector:
            buffer.extend(batch.reshape(-1))
            steps += batch.numel()
            pbar.update(batch.numel())
            frames = cfg.env.action_repeat * steps
            episodes.record(batch, frames=frames)
            if steps >= cfg.collector.init_random_frames:
                critic_skips = stepper.skipped_steps["loss_qvalue"]
                for _ in range(cfg.collector.frames_per_batch):  # update-to-data ratio 1
                    metrics = stepper.optimize(loss(buffer.sample()))
                    result["updates"] += 1
                    result["skipped_steps"] += int(metrics["skipped_steps"])
                    if result["updates"] % cfg.loss.target_update_interval == 0:
                        target_updater.step()
                for key in ("loss_qvalue", "loss_actor", "alpha"):
                    run.log_scalar(f"{precision}/{key}", float(metrics[key]), step=frames)
                skipped = stepper.skipped_steps["loss_qvalue"] - critic_skips
                stalled = skipped == cfg.collector.frames_per_batch
                if stalled or not all_finite(loss.parameters()):
                    result["diverged_at"] = steps
                    reason = "every critic step was skipped" if stalled else "non-finite parameters"
                    tqdm.write(f"{precision}: failed at step {steps} ({reason})")
                    break
            if steps % cfg.logger.eval_every < cfg.collector.frames_per_batch:
                eval_start = time.perf_counter()
                episode_return = evaluate(eval_env, policy, cfg.logger.eval_episodes)
                result["eval_seconds"] += time.perf_counter() - eval_start
                result["curve"].append((steps, episode_return))
                run.log_scalar(f"{precision}/eval_return", episode_return, step=frames)
                pbar.set_postfix(eval_return=f"{episode_return:.1f}")
                result["seconds"] = time.perf_counter() - start
                result["steps"] = steps
                report()
        collector.shutdown()
        result["seconds"] = time.perf_counter() - start
        result["steps"] = steps
        extra = {"finished": finished, "current": result}
        run.save(steps, state=state, replay_buffers={"replay": buffer}, extra=extra)
        if result["diverged_at"] is not None:
            break
    pbar.close()
    return result


def write_lowprec_report(results: list[dict], cfg: DictConfig, run: RecipeRun) -> Path:
    """The report: one row and one evaluation curve per precision."""
    rows = []
    for res in results:
        returns = [r for _, r in res["curve"]]
        rows.append([
            res["precision"],
            f"{returns[-1]:.1f}" if returns else "n/a",
            f"{max(returns):.1f}" if returns else "n/a",
            res["diverged_at"] if res["diverged_at"] is not None else "no",
            res["skipped_steps"], res["updates"], f"{res['seconds']:.0f}",
            f"{_training_ms_per_step(res):.2f}",
        ])  # fmt: skip
    header = ["precision", "last eval return", "best eval return", "failed at step",
              "skipped optimizer steps", "updates", "wall time (s)",
              "training ms per env step (evaluation excluded)"]  # fmt: skip
    diverged = {f"{r['precision']} failed": r["diverged_at"] for r in results if r["diverged_at"]}
    return write_report(
        run.dir,
        title=f"Low-precision SAC on {cfg.env.name}",
        notes=[
            f"{cfg.collector.total_frames} env steps per run, seed {cfg.seed}, batch "
            f"{cfg.optim.batch_size}, 2x{cfg.network.hidden} MLPs, lr {cfg.optim.lr}, "
            f"action repeat {cfg.env.action_repeat}."
        ],
        tables=[ReportTable(header, rows)],
        plots=[
            ReportPlot(
                cfg.env.name,
                "environment steps",
                "evaluation return",
                {res["precision"]: res["curve"] for res in results},
                vlines=diverged,
            )
        ],
        config=OmegaConf.to_container(cfg, resolve=True),
        seeds={
            "python, numpy, torch": cfg.seed,
            "environment": f"{cfg.seed} + 10000 x checkpoint interval",
            "evaluation environment": "environment seed + 5000",
        },
        data={"runs": results},
    )


def _training_ms_per_step(result: dict) -> float:
    """Wall time per environment step without the evaluations (collection + updates)."""
    return 1000 * (result["seconds"] - result["eval_seconds"]) / max(1, result["steps"])


def train(cfg: DictConfig) -> Path:
    """Trains every precision in sequence and returns the report path."""
    task = check(cfg)
    run = RecipeRun(cfg, "lowprec_sac", tag=cfg.env.name)
    cfg = run.cfg
    torch.set_num_threads(cfg.threads)
    finished: list[dict] = []
    if cfg.resume is not None and run.checkpointer.exists():
        saved = run.checkpointer.read()["extra"]
        finished = list(saved["finished"])
        current = saved["current"]
        if _is_complete(current, cfg):
            finished.append(current)
    done = {res["precision"] for res in finished}
    for precision in cfg.loss.precisions:
        if precision not in done:
            finished.append(train_precision(precision, cfg, run, task, list(finished)))
    report = write_lowprec_report(finished, cfg, run)
    print(f"Report: {report}")
    for res in finished:
        returns = [r for _, r in res["curve"]]
        best = max(returns) if returns else math.nan
        print(f"  {res['precision']}: best eval return {best:.1f}, failed at {res['diverged_at']}")
    return report


def _is_complete(result: dict, cfg: DictConfig) -> bool:
    """Whether a checkpointed precision had finished (its steps all run, or diverged)."""
    return result["diverged_at"] is not None or result["steps"] >= cfg.collector.total_frames


@hydra.main(config_path="configs", config_name="lowprec_sac_dmc", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point: hydra composes the configuration."""
    train(cfg)


if __name__ == "__main__":
    main()
