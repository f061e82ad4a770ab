"""Atari DQN with every torchrl_seer part composed, driven by a TorchRL ``Trainer``.

Read top to bottom (each part has a switch in ``configs/composed_dqn_atari.yaml``; with every
part off this file is TorchRL's plain DQN pipeline):

1. an Atari env (84x84 grayscale, 4 stacked frames, frame skip 4);
2. a Q-network: the data-efficient CNN as a SEER ``SplitEncoder`` + MLP head. Acting reads
   pixels; after the freeze learning reads stored latents (``LatentOrPixelFeatures``);
3. **actors** (``parts.compressed_actors``): collector workers that act while the learner
   learns (``MultiAsyncCollector``; ``collector.workers=0`` acts in the learner's process),
   always on the CPU, with a ``CompressedPolicy`` (compression chosen by
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
   master weights, no loss scaling needed in bf16). ``auto`` (the default) trains in bf16 only
   where the learner's device runs it natively (a GPU of compute capability 8.0+, a CPU with
   AVX-512 BF16 or AMX), in fp32 elsewhere, and the report says which;
8. a TorchRL ``Trainer`` per checkpoint interval runs collect → write → update → ship weights
   → freeze check with a fresh collector; every scalar is logged at environment frames, and
   the report (markdown + PNG: returns, replay bytes, learner time before/after the freeze) is
   rewritten in the run folder every ``logger.report_every`` agent steps and at the end.

Every ``checkpoint.interval`` agent steps the run is saved (networks, optimizer, target
updater, the freeze hook, the replay buffer in whichever storage it holds, the actors' packet
and compression, generators, the logger's step); ``resume=<run dir>`` continues it. A resumed
run equals the uninterrupted one with ``collector.workers=0``; worker processes do not save
their own generators. ``device=cuda`` (or ``auto`` with CUDA) puts the learner, its losses and
the latent buffer on CUDA; the actors and ``DeltaFrameStorage`` stay on the CPU
(``composed_placement``; GPU runs are untested).

Configuration: ``examples/configs/composed_dqn_atari.yaml``; override any setting on the
command line::

    python examples/composed_dqn_atari.py parts.seer=false collector.total_frames=20000
    python examples/composed_dqn_atari.py --config-name composed_dqn_atari_demo   # the demo
    python examples/composed_dqn_atari.py checkpoint.interval=10000 collector.workers=0
    python examples/composed_dqn_atari.py resume=runs/composed_dqn_atari_Pong_...  # continue
"""

from __future__ import annotations

import functools
import math

import hydra
import torch

# the recipes' own module: `python examples/<recipe>.py` puts examples/ first on the path
from composed_common import (
    Actors,
    ComposedRun,
    RunRecord,
    TrajectoryIds,
    check_composed_config,
    composed_placement,
    int8_latent_replay,
    latent_transform,
    make_trainer,
    resolve_low_precision,
)
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
from torchrl_seer.trainers.helpers import (
    RecipeRun,
    autocast,
    check_atari_game,
    resolve_device,
    seed_everything,
)

FRAME_SKIP = 4  # environment frames per agent step: the logger's step unit is env frames
TRAJ_KEY = ("collector", "traj_ids")


class DQNStep(OptimizationStepper):
    """One learner update: loss (bf16 autocast when asked) → backward → clip → Adam step.

    Args:
        loss: the DQN or Retrace-DQN loss.
        optimizer: its optimizer.

    Keyword Args:
        precision: ``"bf16"`` runs the forward passes under ``torch.autocast``; ``"none"``.
        device: the learner's device (selects the autocast).
        max_grad_norm: gradient-norm clip.
        record: the run record timing each update.
    """

    def __init__(
        self, loss, optimizer, *, precision: str, device, max_grad_norm: float, record
    ) -> None:
        self.loss = loss
        self.optimizer = optimizer
        self.precision = precision
        self.device = device
        self.max_grad_norm = max_grad_norm
        self.record = record

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        """Updates the Q-network once on ``sub_batch``; returns the detached losses."""
        with self.record.time_update():
            with autocast(self.device, self.precision):
                losses = self.loss(sub_batch)
            self.optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
            self.optimizer.step()
        out = losses.select("loss").apply(lambda t: t.detach().float())
        self.record.record_losses(out)
        return out


def softmax_q_policy(policy: TensorDictSequential) -> ProbabilisticActor:
    """The ε-greedy policy's Q-network read as a softmax policy over its action values.

    ``select_compression`` compares probabilistic policies: ``auto`` times and compares this view
    (a compressed network must keep the same preferences); the chosen pipeline then compresses
    the ε-greedy policy.

    Args:
        policy: the ε-greedy policy (Q-network, then exploration).
    """
    return ProbabilisticActor(
        TensorDictSequential(
            policy[0],  # the Q-network
            TensorDictModule(torch.nn.Identity(), in_keys=["action_value"], out_keys=["logits"]),
        ),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
    )


def check(cfg: DictConfig) -> None:
    """Refuses a bad configuration before anything is created."""
    check_composed_config(
        cfg,
        positive=[
            "env.max_episode_steps", "exploration.eps_decay_frames", "optim.eps",
            "optim.max_grad_norm", "loss.gamma", "loss.lmbda", "loss.sequence",
            "loss.target_update", "network.hidden",
        ],
    )  # fmt: skip
    if cfg.parts.retrace and cfg.optim.batch_size % cfg.loss.sequence:
        raise ValueError(
            f"optim.batch_size ({cfg.optim.batch_size}) must be a multiple of loss.sequence "
            f"({cfg.loss.sequence}) with parts.retrace=true."
        )
    check_atari_game(cfg.env.name)


def train(cfg: DictConfig) -> ComposedRun:
    """Trains the composed (or plain) DQN pipeline and writes its report."""
    check(cfg)
    learner = resolve_device(cfg.device)  # CUDA asked for on a machine without: refused here
    low_precision_notes = resolve_low_precision(cfg, learner)  # auto: bf16 where it is native
    run = RecipeRun(
        cfg, "composed_dqn_atari", tag=cfg.env.name, kept_on_resume=["parts.low_precision"]
    )
    cfg = run.cfg
    parts = cfg.parts
    place = composed_placement(learner, delta_frames=parts["delta_frames"])
    torch.set_num_threads(cfg.threads)
    seeds = seed_everything(cfg.seed)

    # 1. environment (each actor builds its own, seeded per checkpoint interval)
    make_env = functools.partial(
        make_atari_env, cfg.env.name, max_episode_steps=cfg.env.max_episode_steps
    )
    probe_env = make_env(seed=cfg.seed)
    action_spec = probe_env.action_spec
    num_actions = int(action_spec.space.n)

    # 2. Q-network on a SEER split encoder; ε-greedy exploration (recording μ for Retrace)
    encoder = DataEfficientAtariEncoder(4)
    head = TensorDictModule(
        MLP(in_features=576, out_features=num_actions, num_cells=[cfg.network.hidden]),
        in_keys=["features"],
        out_keys=["action_value"],
    )
    qnet = TensorDictSequential(
        LatentOrPixelFeatures(encoder), head, QValueModule(spec=action_spec)
    ).to(place.learner)
    explore_cls = EGreedyLogProbModule if parts["retrace"] else EGreedyModule
    explore = explore_cls(
        action_spec,
        eps_init=1.0,
        eps_end=cfg.exploration.eps_end,
        annealing_num_steps=cfg.exploration.eps_decay_frames,
    ).to(place.learner)
    policy = TensorDictSequential(qnet, explore)

    # 3. actors on the CPU: a compressed copy of the policy, or a copy of the policy itself
    example = probe_env.reset().unsqueeze(0)  # the actors act at batch 1
    probe_env.close()
    actors = Actors(run, make_env, policy, example, compression_view=softmax_q_policy)

    # 4. replay: each frame once (DeltaFrameStorage, CPU) or TorchRL's LazyTensorStorage
    capacity = cfg.replay_buffer.size
    if parts["delta_frames"]:
        storage = DeltaFrameStorage(capacity, frame_stack=4, chunk_len=cfg.replay_buffer.chunk_len)
    else:
        storage = LazyTensorStorage(capacity, device=place.pixel_replay)
    sampler = (  # Retrace learns from sequences of consecutive transitions
        SliceSampler(slice_len=cfg.loss.sequence, traj_key=TRAJ_KEY)
        if parts["retrace"]
        else RandomSampler()
    )
    replay_buffer = TensorDictReplayBuffer(
        storage=storage, sampler=sampler, batch_size=cfg.optim.batch_size
    )
    stored_keys = ["pixels", "action", ("next", "pixels"), ("next", "reward")]
    stored_keys += [("next", "done"), ("next", "terminated"), ("next", "truncated")]
    if parts["retrace"]:
        stored_keys += ["action_log_prob", TRAJ_KEY]

    # 5. loss (Retrace-DQN or TorchRL's double DQN), optimizer, target network
    if parts["retrace"]:
        loss = RetraceDQNLoss(
            qnet, lmbda=cfg.loss.lmbda, gamma=cfg.loss.gamma, action_space=action_spec
        )
    else:
        loss = DQNLoss(qnet, action_space=action_spec, delay_value=True, double_dqn=True)
        loss.make_value_estimator(gamma=cfg.loss.gamma)
    optimizer = torch.optim.Adam(loss.parameters(), lr=cfg.optim.lr, eps=cfg.optim.eps, fused=True)
    target_updater = HardUpdate(loss, value_network_update_interval=cfg.loss.target_update)

    # 6. the SEER freeze: int8 latents, capacity from the bytes the pixel storage held
    freeze_hook = None
    if parts["seer"]:
        freeze_hook = FreezeEncoderHook(
            encoder,
            freeze_at=cfg.seer.freeze_at,
            modules=[loss],
            optimizers=[optimizer],
            replay_buffer=replay_buffer,
            latent_transform=latent_transform(encoder, place),
            target_sync="encoder",  # target CNN = online CNN; the head keeps its hard copies
            replay_options=int8_latent_replay(cfg, place),
        )

    # 7. the run record, the learner's update, and the run's checkpointed state
    record = RunRecord(
        run,
        replay_buffer,
        freeze_hook=freeze_hook,
        frames_per_step=FRAME_SKIP,
        title=f"Composed DQN on {cfg.env.name}",
        actors=actors.record,
        seeds=seeds,
        notes=low_precision_notes,
    )
    stepper = DQNStep(
        loss,
        optimizer,
        precision="bf16" if parts["low_precision"] else "none",
        device=place.learner,
        max_grad_norm=cfg.optim.max_grad_norm,
        record=record,
    )
    trajectories = TrajectoryIds(TRAJ_KEY)
    # restore order: the freeze hook first (it edits the optimizer, installs the latent storage)
    state = {"freeze_hook": freeze_hook} if freeze_hook is not None else {}
    state.update(policy=policy, loss=loss, optimizer=optimizer, target_updater=target_updater)
    state.update(actors=actors, trajectories=trajectories, record=record)
    steps, _ = run.restore(state=state, replay_buffers={"replay": replay_buffer})

    # 8. one TorchRL Trainer per checkpoint interval (the report every logger.report_every
    # agent steps), the run checkpointed at the end of each
    for segment in run.segments(cfg.collector.total_frames, start=steps):
        trainer = make_trainer(
            cfg,
            segment,
            actors,
            stepper,
            record=record,
            stored_keys=stored_keys,
            device=place.learner,
            hooks=[trajectories] if parts["retrace"] else [],
            # random acting before init_random_frames: the uniform policy's μ(a|x) = 1/n
            batch_ops=(
                (functools.partial(record_uniform_mu, num_actions),) if parts["retrace"] else ()
            ),
        )
        if parts["retrace"]:
            trainer.register_op("process_optim_batch", lambda b: b.reshape(-1, cfg.loss.sequence))
        trainer.register_op("post_optim", target_updater.step)
        trainer.register_op("post_steps", lambda: explore.step(cfg.collector.frames_per_batch))
        trainer.train()
        run.save(segment.stop, state=state, replay_buffers={"replay": replay_buffer})
    return record.finish()


def record_uniform_mu(num_actions: int, batch: TensorDictBase) -> TensorDictBase:
    """Writes μ(a|x) = 1/n for batches acted at random (before ``init_random_frames``)."""
    if "action_log_prob" not in batch.keys():
        batch.set("action_log_prob", torch.full(batch.shape, -math.log(num_actions)))
    return batch


@hydra.main(config_path="configs", config_name="composed_dqn_atari", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point (hydra)."""
    train(cfg)


if __name__ == "__main__":
    main()
