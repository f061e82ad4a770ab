"""Atari DQN with every torchrl_seer part composed, driven by a TorchRL ``Trainer``.

Read top to bottom (each part has a switch in ``configs/composed_dqn_atari.yaml``; with every
part off this file is TorchRL's plain DQN pipeline):

1. an Atari env (84x84 grayscale, 4 stacked frames, frame skip 4);
2. a Q-network: the data-efficient CNN as a SEER ``SplitEncoder`` + MLP head. Acting reads
   pixels; after the freeze learning reads stored latents (``LatentOrPixelFeatures``);
3. **actors** (``parts.compressed_actors``): collector workers that act while the learner
   learns (``MultiAsyncCollector``), with a ``CompressedPolicy`` (compression chosen by
   ``select_compression``, or named), shipped by ``CompressedWeightSyncScheme``; ε-greedy
   exploration records the behaviour probability μ(a|x) (``EGreedyLogProbModule``);
4. **replay** (``parts.delta_frames``): ``DeltaFrameStorage`` (each frame once, compressed,
   lossless) instead of ``LazyTensorStorage``; sequences for Retrace (``SliceSampler``);
5. **loss** (``parts.retrace``): ``RetraceDQNLoss`` (Retrace(λ) targets with μ = the
   compressed actor) instead of TorchRL's ``DQNLoss``; periodic ``HardUpdate``;
6. **SEER** (``parts.seer``): ``FreezeEncoderHook`` on the Trainer. At T_f it freezes the CNN,
   encodes every stored transition, moves the buffer to int8 latents in a
   ``QuantizedStorage`` whose capacity comes from the bytes the pixel storage really held
   (it grows or shrinks: the report says which), and encodes new transitions on write;
7. **learner** (``parts.low_precision``): forward passes in bf16 (``torch.autocast``; fp32
   master weights, no loss scaling needed in bf16);
8. a TorchRL ``Trainer`` runs collect → write → update → ship weights → freeze check, and an
   end-of-run report (markdown + PNG: returns, replay bytes, learner time before/after the
   freeze) is written to the run folder.

Run: ``python examples/composed_dqn_atari.py`` (hydra overrides: ``parts.seer=false``,
``collector.total_steps=20000``...), ``--config-name composed_dqn_atari_demo`` for the demo.
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tensordict import TensorDictBase
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.data import (
    LazyTensorStorage,
    RandomSampler,
    SliceSampler,
    TensorDictReplayBuffer,
)
from torchrl.modules import MLP, EGreedyModule, ProbabilisticActor, QValueModule
from torchrl.objectives import DQNLoss, HardUpdate
from torchrl.record.loggers import get_logger
from torchrl.trainers import OptimizationStepper, Trainer

from torchrl_seer.data import DeltaFrameStorage
from torchrl_seer.envs import make_atari_env
from torchrl_seer.modules import (
    DataEfficientAtariEncoder,
    EGreedyLogProbModule,
    LatentOrPixelFeatures,
)
from torchrl_seer.objectives import RetraceDQNLoss
from torchrl_seer.trainers import FreezeEncoderHook

sys.path.insert(0, str(Path(__file__).resolve().parent))
from composed_common import (
    ComposedRun,
    RunRecord,
    finish_run,
    int8_latent_replay,
    make_actors,
    make_trainer,
    register_hooks,
)

TRAJ_KEY = ("collector", "traj_ids")


class DQNStep(OptimizationStepper):
    """One learner update: loss (bf16 autocast when asked) → backward → clip → Adam step.

    Args:
        loss: the DQN or Retrace-DQN loss.
        optimizer: its optimizer.

    Keyword Args:
        bf16: run the forward passes under ``torch.autocast(bfloat16)``.
        clip_grad_norm: gradient-norm clip.
        record: the run record timing each update.
    """

    def __init__(self, loss, optimizer, *, bf16: bool, clip_grad_norm: float, record) -> None:
        self.loss = loss
        self.optimizer = optimizer
        self.bf16 = bf16
        self.clip_grad_norm = clip_grad_norm
        self.record = record

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        """Updates the Q-network once on ``sub_batch``; returns the detached losses."""
        with self.record.time_update():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                losses = self.loss(sub_batch)
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
            self.optimizer.step()
        return losses.select("loss").apply(lambda t: t.detach().float())


def softmax_q_policy(qnet: TensorDictSequential) -> ProbabilisticActor:
    """The Q-network read as a softmax policy over its action values.

    ``select_compression`` compares probabilistic policies: ``auto`` times and compares this view
    (a compressed network must keep the same preferences); the chosen pipeline then compresses
    the ε-greedy policy.
    """
    return ProbabilisticActor(
        TensorDictSequential(
            qnet,
            TensorDictModule(torch.nn.Identity(), in_keys=["action_value"], out_keys=["logits"]),
        ),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
    )


def train(cfg: DictConfig, run_dir: Path) -> ComposedRun:
    """Trains the composed (or plain) DQN pipeline and writes its report."""
    parts = cfg.parts
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = get_logger(cfg.logger, logger_name=str(run_dir), experiment_name="composed_dqn")

    # 1. environment
    make_env = functools.partial(
        make_atari_env, cfg.env.game, max_episode_steps=cfg.env.max_episode_steps, seed=cfg.seed
    )
    probe_env = make_env()
    action_spec = probe_env.action_spec
    num_actions = int(action_spec.space.n)

    # 2. Q-network on a SEER split encoder; ε-greedy exploration (recording μ for Retrace)
    encoder = DataEfficientAtariEncoder(4)
    head = TensorDictModule(
        MLP(in_features=576, out_features=num_actions, num_cells=[cfg.learner.hidden]),
        in_keys=["features"],
        out_keys=["action_value"],
    )
    qnet = TensorDictSequential(
        LatentOrPixelFeatures(encoder), head, QValueModule(spec=action_spec)
    )
    explore_cls = EGreedyLogProbModule if parts["retrace"] else EGreedyModule
    explore = explore_cls(
        action_spec,
        eps_init=1.0,
        eps_end=cfg.explore.eps_end,
        annealing_num_steps=cfg.explore.decay_steps,
    )
    policy = TensorDictSequential(qnet, explore)

    # 3. actors: a compressed copy of the policy, or the policy itself
    example = probe_env.reset().unsqueeze(0)  # the actors act at batch 1
    probe_env.close()
    collector, actors = make_actors(
        cfg,
        make_env,
        policy,
        example,
        compressed=parts["compressed_actors"],
        compression_view=softmax_q_policy(qnet),
    )

    # 4. replay: each frame once (DeltaFrameStorage) or TorchRL's LazyTensorStorage
    capacity = cfg.replay.capacity
    if parts["delta_frames"]:
        storage = DeltaFrameStorage(capacity, frame_stack=4, chunk_len=cfg.replay.chunk_len)
    else:
        storage = LazyTensorStorage(capacity)
    sampler = (  # Retrace learns from sequences of consecutive transitions
        SliceSampler(slice_len=cfg.replay.slice_len, traj_key=TRAJ_KEY)
        if parts["retrace"]
        else RandomSampler()
    )
    replay_buffer = TensorDictReplayBuffer(
        storage=storage, sampler=sampler, batch_size=cfg.replay.batch_size
    )
    stored_keys = ["pixels", "action", ("next", "pixels"), ("next", "reward")]
    stored_keys += [("next", "done"), ("next", "terminated"), ("next", "truncated")]
    if parts["retrace"]:
        stored_keys += ["action_log_prob", TRAJ_KEY]

    # 5. loss (Retrace-DQN or TorchRL's double DQN), optimizer, target network
    if parts["retrace"]:
        loss = RetraceDQNLoss(
            qnet, lmbda=cfg.learner.lmbda, gamma=cfg.learner.gamma, action_space=action_spec
        )
    else:
        loss = DQNLoss(qnet, action_space=action_spec, delay_value=True, double_dqn=True)
        loss.make_value_estimator(gamma=cfg.learner.gamma)
    optimizer = torch.optim.Adam(
        loss.parameters(), lr=cfg.learner.lr, eps=cfg.learner.adam_eps, fused=True
    )
    target_updater = HardUpdate(loss, value_network_update_interval=cfg.learner.target_update)

    # 6. the SEER freeze: int8 latents, capacity from the bytes the pixel storage held
    freeze_hook = None
    if parts["seer"]:
        freeze_hook = FreezeEncoderHook(
            encoder,
            freeze_at=cfg.seer.freeze_at,
            modules=[loss],
            optimizers=[optimizer],
            replay_buffer=replay_buffer,
            target_sync="encoder",  # target CNN = online CNN; the head keeps its hard copies
            replay_options=int8_latent_replay(cfg),
            logger=logger,
        )

    # 7-8. the Trainer and its hooks
    record = RunRecord(
        replay_buffer,
        freeze_hook=freeze_hook,
        frames_per_step=cfg.env.frames_per_step,
    )
    stepper = DQNStep(
        loss,
        optimizer,
        bf16=parts["low_precision"],
        clip_grad_norm=cfg.learner.clip_grad_norm,
        record=record,
    )
    trainer = make_trainer(cfg, collector, loss, stepper, logger)
    register_hooks(
        trainer,
        record=record,
        # random acting before learn_start: the uniform policy's μ(a|x) = 1/n
        batch_ops=(functools.partial(record_uniform_mu, num_actions),) if parts["retrace"] else (),
        stored_keys=stored_keys,
        freeze_hook=freeze_hook,
        replay_buffer=replay_buffer,
        collector=collector,
        policy=policy,
        ship_every=cfg.actors.ship_every,
    )
    if parts["retrace"]:
        trainer.register_op("process_optim_batch", lambda b: b.reshape(-1, cfg.replay.slice_len))
    trainer.register_op("post_optim", target_updater.step)
    trainer.register_op("post_steps", lambda: explore.step(cfg.collector.frames_per_batch))
    trainer.train()
    return finish_run(
        run_dir,
        record,
        title=f"Composed DQN on {cfg.env.game}",
        cfg=cfg,
        replay_buffer=replay_buffer,
        freeze_hook=freeze_hook,
        frames_per_step=cfg.env.frames_per_step,
        actors=actors,
    )


def record_uniform_mu(num_actions: int, batch: TensorDictBase) -> TensorDictBase:
    """Writes μ(a|x) = 1/n for batches acted at random (before ``learn_start``)."""
    if "action_log_prob" not in batch.keys():
        batch.set("action_log_prob", torch.full(batch.shape, -math.log(num_actions)))
    return batch


@hydra.main(config_path="configs", config_name="composed_dqn_atari", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point (hydra)."""
    train(cfg, Path(HydraConfig.get().runtime.output_dir))


if __name__ == "__main__":
    main()
