"""Pixel SAC on DeepMind Control with every torchrl_seer part composed, in a TorchRL ``Trainer``.

Read top to bottom (each part has a switch in ``configs/composed_sac_dmc.yaml``; with every
part off this file is TorchRL's plain pipeline: fp32 actors, ``LazyTensorStorage``, ``SACLoss``):

1. a DMC task rendered at 100x100, 3 stacked RGB frames (9 channels), PlaNet action repeat;
2. the SEER split encoder (``CURLPixelEncoder``: 4 convs + fc 50 + LayerNorm) with an EMA
   target copy; learning crops a random 84x84 window, acting the centre one. The actor reads
   the features detached (CURL): only the critic and CURL train the encoder;
3. **learner** (``parts.low_precision``): ``LowPrecisionSACLoss`` with the bf16 preset (actor,
   stacked critics, targets and temperature in bf16; hAdam with Kahan-compensated updates;
   Kahan target updates) instead of TorchRL's fp32 ``SACLoss``; the encoder keeps fp32 weights.
   ``auto`` (the default) uses it only where the learner's device runs bf16 natively (a GPU of
   compute capability 8.0+, a CPU with AVX-512 BF16 or AMX), and the report says which;
   **CURL** (``parts.curl``): the contrastive loss trains the encoder until the freeze;
4. **actors** (``parts.compressed_actors``): collector workers that act while the learner
   learns (``MultiAsyncCollector``; ``collector.workers=0`` acts in the learner's process),
   always on the CPU, with a ``CompressedPolicy`` chosen by ``select_compression`` (or
   named), shipped by ``CompressedWeightSyncScheme``;
5. **replay** (``parts.delta_frames``): ``DeltaFrameStorage`` (each frame once, compressed,
   lossless) instead of ``LazyTensorStorage``;
6. **SEER** (``parts.seer``): ``FreezeEncoderHook`` on the Trainer. At T_f the encoder stops
   training (no encoder optimizer, no CURL, no EMA), the target critic is hard-copied from the
   online one, every stored observation becomes K random-crop latents, int8 in a
   ``QuantizedStorage`` whose capacity comes from the bytes the pixel storage really held
   (it grows or shrinks: the report says which); new transitions are encoded on write;
7. a TorchRL ``Trainer`` per checkpoint interval runs collect → write → update → ship weights
   → freeze check with a fresh collector; every scalar is logged at environment frames, and
   the report (markdown + PNG: returns, replay bytes, learner time before/after the freeze) is
   rewritten in the run folder every ``logger.report_every`` agent steps and at the end.

Every ``checkpoint.interval`` agent steps the run is saved (encoders, losses, optimizers and
loss scalers, target updaters, CURL, the freeze hook, the replay buffer in whichever storage it
holds, the actors' packet and compression, generators, the logger's step);
``resume=<run dir>`` continues it. A resumed run equals the uninterrupted one with
``collector.workers=0``; worker processes do not save their own generators. ``device=cuda``
(or ``auto`` with CUDA) puts the encoder, the SAC networks, their losses and the latent buffer
on CUDA; the actors and ``DeltaFrameStorage`` stay on the CPU (``composed_placement``; GPU
runs are untested).

Rendering DMC on a CPU runs at about 20 frames/s. Configuration:
``examples/configs/composed_sac_dmc.yaml``; override any setting on the command line::

    MUJOCO_GL=egl python examples/composed_sac_dmc.py parts.low_precision=false
    MUJOCO_GL=egl python examples/composed_sac_dmc.py checkpoint.interval=2000
    MUJOCO_GL=egl python examples/composed_sac_dmc.py resume=runs/composed_sac_dmc_...
"""

from __future__ import annotations

import copy
import functools

import hydra
import torch

# the recipes' own module: `python examples/<recipe>.py` puts examples/ first on the path
from composed_common import (
    Actors,
    ComposedRun,
    RunRecord,
    check_composed_config,
    composed_placement,
    int8_latent_replay,
    latent_transform,
    make_trainer,
    resolve_low_precision,
)
from omegaconf import DictConfig
from tensordict import TensorDictBase
from tensordict.nn import (
    NormalParamExtractor,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    TensorDictSequential,
)
from torch import nn
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal
from torchrl.objectives import SACLoss, SoftUpdate
from torchrl.trainers import OptimizationStepper, Trainer

from torchrl_seer.data import DeltaFrameStorage
from torchrl_seer.envs import make_dmc_env, split_dmc_task
from torchrl_seer.modules import CenterCrop, CURLPixelEncoder, LatentOrPixelFeatures, RandomCrop
from torchrl_seer.objectives import PRECISION_PRESETS, CURLLoss, LowPrecisionSACLoss
from torchrl_seer.optim import LossScalingStepper
from torchrl_seer.trainers import FreezeEncoderHook
from torchrl_seer.trainers.helpers import RecipeRun, resolve_device, seed_everything

STORED_KEYS = [
    "pixels",
    "action",
    ("next", "pixels"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
    ("next", "truncated"),
]


class InParamDtype(nn.Module):
    """Runs ``net`` on its input cast to the dtype of ``net``'s weights.

    fp32 features enter a bf16 actor (the low-precision learner's) in bf16, and an int8
    compressed copy (no floating weights) in fp32, as its kernels need.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns ``net(x)`` with ``x`` in the weights' dtype (fp32 if none is floating)."""
        weights = (p for p in self.net.parameters() if p.is_floating_point())
        return self.net(x.to(next(weights, x.float()).dtype))


class ToFloat32(nn.Module):
    """Casts the actions a bf16 actor samples to fp32 for the environment."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns ``x`` in fp32."""
        return x.float()


class Detach(nn.Module):
    """Stops gradients: the actor does not train the shared encoder (CURL)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns ``x`` detached."""
        return x.detach()


class SACStep(OptimizationStepper):
    """One learner update: encoder stage → SAC losses → steps → CURL → target updates.

    Args:
        loss: the SAC loss (``SACLoss`` or ``LowPrecisionSACLoss``).
        sac_stepper: one optimizer (and loss scaler) per SAC loss term.
        target_updater: the soft update of the target critics.

    Keyword Args:
        features / target_features: the encoder stages of the online and target critic.
        encoder / target_encoder: the online encoder and its EMA copy.
        encoder_optim: the encoder's optimizer (trained by the critic and CURL).
        curl_loss / curl_optim: CURL's loss and the optimizer of its bilinear map (or ``None``).
        encoder_tau: EMA rate of the target encoder.
        frozen: returns whether the encoder is frozen (then no encoder step, CURL or EMA).
        record: the run record timing each update.
    """

    def __init__(
        self,
        loss,
        sac_stepper,
        target_updater,
        *,
        features,
        target_features,
        encoder,
        target_encoder,
        encoder_optim,
        curl_loss,
        curl_optim,
        encoder_tau,
        frozen,
        record,
    ) -> None:
        self.loss = loss
        self.sac_stepper = sac_stepper
        self.target_updater = target_updater
        self.features = features
        self.target_features = target_features
        self.encoder = encoder
        self.target_encoder = target_encoder
        self.encoder_optim = encoder_optim
        self.curl_loss = curl_loss
        self.curl_optim = curl_optim
        self.encoder_tau = encoder_tau
        self.frozen = frozen
        self.record = record

    def step(self, trainer: Trainer, sub_batch: TensorDictBase) -> TensorDictBase:
        """Updates critic, actor, temperature (and, before the freeze, the encoder) once."""
        frozen = self.frozen()
        with self.record.time_update():
            self.features(sub_batch)  # pixels -> encoder (with grad), or latents -> identity
            with torch.no_grad():
                self.target_features(sub_batch["next"])
            self.encoder_optim.zero_grad(set_to_none=True)
            out = self.sac_stepper.optimize(self.loss(sub_batch))
            if not frozen:
                self.encoder_optim.step()
                if self.curl_loss is not None:
                    curl = self.curl_loss(sub_batch)  # random crops of the stored pixels
                    self.encoder_optim.zero_grad(set_to_none=True)
                    self.curl_optim.zero_grad(set_to_none=True)
                    curl["loss_curl"].backward()
                    self.encoder_optim.step()
                    self.curl_optim.step()
            self.target_updater.step()
            if not frozen:  # the encoder EMA stops at the freeze
                with torch.no_grad():
                    for target, online in zip(
                        self.target_encoder.parameters(), self.encoder.parameters(), strict=True
                    ):
                        target.lerp_(online, self.encoder_tau)
        out = out.select("loss_qvalue", "loss_actor").apply(lambda t: t.float())
        self.record.record_losses(out)
        return out


def probabilistic_view(policy: TensorDictSequential) -> ProbabilisticTensorDictSequential:
    """The acting policy read as a probabilistic one: encoder stage, then the actor.

    ``select_compression`` (``accerl.compression=auto``) compares the action distributions of
    the full and the compressed policy; the acting policy ends with a cast of the sampled
    actions, which has no distribution.
    """
    features, actor = policy[0], policy[1]
    return ProbabilisticTensorDictSequential(features, *actor.module)


def check(cfg: DictConfig) -> tuple[str, str]:
    """Refuses a bad configuration before anything is created; returns (domain, task)."""
    check_composed_config(
        cfg,
        positive=[
            "env.size", "env.action_repeat", "seer.num_copies", "optim.alpha_lr", "loss.gamma",
            "loss.critic_tau", "loss.encoder_tau", "loss.init_temperature", "network.hidden",
        ],
    )  # fmt: skip
    if cfg.env.size < 84:
        raise ValueError(f"env.size must be >= 84 (learning crops 84x84), got {cfg.env.size}.")
    return split_dmc_task(cfg.env.name)


def train(cfg: DictConfig) -> ComposedRun:
    """Trains the composed (or plain) pixel SAC pipeline and writes its report."""
    domain, task = check(cfg)
    learner = resolve_device(cfg.device)  # CUDA asked for on a machine without: refused here
    low_precision_notes = resolve_low_precision(cfg, learner)  # auto: bf16 where it is native
    run = RecipeRun(
        cfg, "composed_sac_dmc", tag=cfg.env.name, kept_on_resume=["parts.low_precision"]
    )
    cfg = run.cfg
    parts = cfg.parts
    place = composed_placement(learner, delta_frames=parts["delta_frames"])
    torch.set_num_threads(cfg.threads)
    seeds = seed_everything(cfg.seed)

    # 1. environment: 9x100x100 uint8 observations (each actor builds its own, seeded per interval)
    make_env = functools.partial(
        make_dmc_env,
        domain,
        task,
        size=cfg.env.size,
        frame_stack=3,
        action_repeat=cfg.env.action_repeat,
    )
    probe_env = make_env(seed=cfg.seed)
    action_spec = probe_env.action_spec
    action_dim = action_spec.shape[-1]

    # 2. encoder stages: random crop for learning, centre crop for acting
    encoder = CURLPixelEncoder(9).to(place.learner)
    target_encoder = copy.deepcopy(encoder).requires_grad_(False)
    features = LatentOrPixelFeatures(encoder, pre_encoder=RandomCrop(84))
    target_features = LatentOrPixelFeatures(target_encoder, pre_encoder=RandomCrop(84))

    # 3. SAC on features: bf16 (LowPrecisionSACLoss) or TorchRL's fp32 SACLoss
    preset = PRECISION_PRESETS["bf16" if parts["low_precision"] else "fp32"]
    hidden = [cfg.network.hidden] * 2
    actor = ProbabilisticActor(
        TensorDictSequential(
            TensorDictModule(Detach(), in_keys=["features"], out_keys=["actor_features"]),
            TensorDictModule(
                nn.Sequential(
                    InParamDtype(
                        MLP(in_features=50, out_features=2 * action_dim, num_cells=hidden)
                    ),
                    NormalParamExtractor(),
                ),
                in_keys=["actor_features"],
                out_keys=["loc", "scale"],
            ),
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        spec=action_spec,
    ).to(place.learner)
    qvalue = TensorDictModule(
        MLP(in_features=50 + action_dim, out_features=1, num_cells=hidden),
        in_keys=["features", "action"],
        out_keys=["state_action_value"],
    ).to(place.learner)
    sac_kwargs = {"num_qvalue_nets": 2, "action_spec": action_spec}
    sac_kwargs["alpha_init"] = cfg.loss.init_temperature
    if parts["low_precision"]:
        loss = LowPrecisionSACLoss(actor, qvalue, **preset, **sac_kwargs)
        loss.make_value_estimator(gamma=cfg.loss.gamma)
        sac_stepper = loss.make_optimization_stepper(lr=cfg.optim.lr, alpha_lr=cfg.optim.alpha_lr)
        target_updater = loss.make_target_updater(tau=cfg.loss.critic_tau)
    else:
        loss = SACLoss(actor, qvalue, **sac_kwargs)
        loss.make_value_estimator(gamma=cfg.loss.gamma)
        adam = functools.partial(torch.optim.Adam, lr=cfg.optim.lr, fused=True)
        sac_stepper = LossScalingStepper(
            {
                "loss_qvalue": adam(list(loss.qvalue_network_params.values(True, True))),
                "loss_actor": adam(list(loss.actor_network_params.values(True, True))),
                "loss_alpha": adam([loss.log_alpha], lr=cfg.optim.alpha_lr, betas=(0.5, 0.999)),
            }
        )
        target_updater = SoftUpdate(loss, tau=cfg.loss.critic_tau)
    encoder_optim = torch.optim.Adam(encoder.parameters(), lr=cfg.optim.lr, fused=True)
    curl_loss = (
        CURLLoss(encoder, key_encoder=target_encoder).to(place.learner) if parts["curl"] else None
    )
    curl_optim = (
        torch.optim.Adam([curl_loss.bilinear], lr=cfg.optim.lr, fused=True)
        if curl_loss is not None
        else None
    )
    # the acting policy: centre crop, encoder, actor, actions back in fp32
    policy = TensorDictSequential(
        LatentOrPixelFeatures(encoder, pre_encoder=CenterCrop(84)),
        actor,
        TensorDictModule(ToFloat32(), in_keys=["action"], out_keys=["action"]),
        selected_out_keys=["action"],
    )

    # 4. actors on the CPU: a compressed copy of the policy, or a copy of the policy itself
    example = probe_env.reset().unsqueeze(0)  # the actors act at batch 1
    probe_env.close()
    actors = Actors(run, make_env, policy, example, compression_view=probabilistic_view)

    # 5. replay: each frame once (DeltaFrameStorage, CPU) or TorchRL's LazyTensorStorage
    capacity = cfg.replay_buffer.size
    if parts["delta_frames"]:
        storage = DeltaFrameStorage(capacity, frame_stack=3, chunk_len=cfg.replay_buffer.chunk_len)
    else:
        storage = LazyTensorStorage(capacity, device=place.pixel_replay)
    replay_buffer = TensorDictReplayBuffer(storage=storage, batch_size=cfg.optim.batch_size)

    # 6. the SEER freeze: K random-crop int8 latents, capacity from the bytes the pixels held
    freeze_hook = None
    if parts["seer"]:
        freeze_hook = FreezeEncoderHook(
            encoder,
            freeze_at=cfg.seer.freeze_at,
            modules=[target_encoder, loss],
            optimizers=[encoder_optim],
            replay_buffer=replay_buffer,
            latent_transform=latent_transform(
                encoder, place, num_copies=cfg.seer.num_copies, augmentation=RandomCrop(84)
            ),
            target_sync="full",  # the target critic is hard-copied from the online one
            replay_options=int8_latent_replay(cfg, place),
        )

    # 7. the run record, the learner's update, and the run's checkpointed state
    record = RunRecord(
        run,
        replay_buffer,
        freeze_hook=freeze_hook,
        frames_per_step=cfg.env.action_repeat,
        title=f"Composed pixel SAC on {cfg.env.name}",
        actors=actors.record,
        seeds=seeds,
        notes=low_precision_notes,
    )
    stepper = SACStep(
        loss,
        sac_stepper,
        target_updater,
        features=features,
        target_features=target_features,
        encoder=encoder,
        target_encoder=target_encoder,
        encoder_optim=encoder_optim,
        curl_loss=curl_loss,
        curl_optim=curl_optim,
        encoder_tau=cfg.loss.encoder_tau,
        frozen=record.frozen,
        record=record,
    )
    # restore order: the freeze hook first (it edits the optimizer, installs the latent storage)
    state = {"freeze_hook": freeze_hook} if freeze_hook is not None else {}
    state.update(encoder=encoder, target_encoder=target_encoder, policy=policy, loss=loss)
    state.update(sac_stepper=sac_stepper, target_updater=target_updater)
    state.update(encoder_optim=encoder_optim)
    if curl_loss is not None:
        state.update(curl_loss=curl_loss, curl_optim=curl_optim)
    state.update(actors=actors, record=record)
    steps, _ = run.restore(state=state, replay_buffers={"replay": replay_buffer})

    # 8. one TorchRL Trainer per checkpoint interval (the report every logger.report_every
    # agent steps), the run checkpointed at the end of each
    for segment in run.segments(cfg.collector.total_frames, start=steps):
        trainer = make_trainer(
            cfg, segment, actors, stepper, record=record, stored_keys=STORED_KEYS,
            device=place.learner,
        )  # fmt: skip
        trainer.train()
        run.save(segment.stop, state=state, replay_buffers={"replay": replay_buffer})
    return record.finish()


@hydra.main(config_path="configs", config_name="composed_sac_dmc", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point (hydra)."""
    train(cfg)


if __name__ == "__main__":
    main()
