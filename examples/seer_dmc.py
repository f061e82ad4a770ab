"""SEER on DeepMind Control from pixels: SAC + CURL-style encoder, frozen at T_f, latent replay.

Read top to bottom:

1. a DMC task rendered at 100x100, 3 stacked RGB frames (9 channels), PlaNet action repeat;
2. the CURL / SAC-AE pixel encoder (4 conv 3x3 + fc 50 + LayerNorm), shared by the critic's
   Q heads, with an EMA target copy; the actor reads its features detached (CURL). Training
   crops a random 84x84 window, acting the centre window;
3. TorchRL's ``SACLoss`` on encoder features (hidden 1024), separate (fused) Adams for critic,
   encoder, actor and temperature, ``SoftUpdate`` of the target Q heads; CURL's contrastive loss
   (``CURLLoss``: two random crops, the EMA target encoder as key encoder, bilinear W) trains
   the encoder beside the critic (``loss.curl=false`` turns it off);
4. a pixel replay buffer;
5. ``FreezeEncoderHook``: at T_f (``seer.freeze_at``: a step, or ``auto``: once the encoder's
   relative parameter change stays below a bound) the whole encoder stops training (no encoder
   optimizer, no contrastive update, no EMA), the target critic is hard-copied from the online
   one, every stored observation is encoded into K random-crop latents (K =
   ``seer.num_copies``), the pixel storage is freed and the buffer re-sized to the same memory
   budget; new transitions are encoded on write and each sampled element uses one of its K
   copies (``seer.record_trajectory=true`` keeps the encoder's parameters at every check in
   ``encoder_trajectory.pt``);
6. the loop: collect -> write -> ``hook.step`` -> sample -> encoder stage -> SAC loss -> steps
   -> (before the freeze) the contrastive update; ``optim.autocast=bf16`` runs the learner's
   forward passes in bf16 mixed precision (fp32 weights) on the run's device, ~2x faster updates
   on AVX-512 BF16 CPUs; a checkpoint every ``checkpoint.interval`` agent steps
   (``resume=<run dir>`` continues a run);
7. a report (markdown + PNG) in the run folder, rewritten every ``logger.report_every`` steps.

Rendering DMC on a CPU runs at ~20 frames/s: the defaults are a short run. Configuration:
``examples/configs/seer_dmc.yaml``, e.g. ``python examples/seer_dmc.py env.name=walker_walk``.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal
from torchrl.objectives import SACLoss, SoftUpdate
from tqdm import tqdm

from torchrl_seer.data import LatentEncodeTransform, LatentReplayOptions
from torchrl_seer.envs import PLANET_ACTION_REPEAT, make_dmc_env, split_dmc_task
from torchrl_seer.modules import CenterCrop, CURLPixelEncoder, LatentOrPixelFeatures, RandomCrop
from torchrl_seer.objectives import CURLLoss
from torchrl_seer.trainers import CONVERGENCE_STATISTICS, FreezeEncoderHook
from torchrl_seer.trainers.helpers import (
    EpisodeReturns,
    RecipeRun,
    autocast,
    check_config,
    check_freeze_at,
    freeze_criterion,
    resolve_device,
    save_encoder_trajectory,
    seed_everything,
    write_seer_report,
)

STORED_KEYS = [
    "pixels",
    "action",
    ("next", "pixels"),
    ("next", "reward"),
    ("next", "done"),
    ("next", "terminated"),
]


class DetachedEncoderSACLoss(SACLoss):
    """SACLoss whose actor update does not train the shared encoder (CURL's ``detach``)."""

    def actor_loss(self, tensordict: TensorDictBase):  # noqa: D102
        return super().actor_loss(tensordict.detach())


def check(cfg: DictConfig) -> tuple[str, str]:
    """Refuses a bad configuration before anything is created; returns (domain, task)."""
    check_config(
        cfg,
        positive=[
            "collector.total_frames", "replay_buffer.size", "optim.lr", "optim.alpha_lr",
            "optim.batch_size", "optim.actor_update_freq", "network.hidden", "seer.num_copies",
            "logger.report_every",
        ],
        non_negative=["optim.learn_start", "seer.auto_min_step"],
        choices={"optim.autocast": ["none", "bf16"], "seer.target_sync": ["full", "encoder"],
                 "seer.auto_statistic": list(CONVERGENCE_STATISTICS)},
    )  # fmt: skip
    check_freeze_at(cfg.seer.freeze_at)
    if cfg.env.action_repeat is not None:
        check_config(cfg, positive=["env.action_repeat"])
    return split_dmc_task(cfg.env.name)


def train(cfg: DictConfig) -> Path:
    """Trains SAC + SEER from pixels and returns the report path."""
    domain, task = check(cfg)
    run = RecipeRun(cfg, "seer_dmc", tag=cfg.env.name)
    cfg = run.cfg
    device = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    seeds = seed_everything(cfg.seed)

    # 1. environment: 9x100x100 uint8 observations (one per checkpoint interval)
    frames_per_step = cfg.env.action_repeat or PLANET_ACTION_REPEAT.get(cfg.env.name, 1)

    def make_env(seed: int | None = None):
        return make_dmc_env(
            domain, task, size=100, frame_stack=3, action_repeat=frames_per_step, seed=seed
        )

    action_spec = make_env().action_spec
    action_dim = action_spec.shape[-1]

    # 2. encoder stage: random crop for learning, centre crop for acting
    encoder = CURLPixelEncoder(9).to(device)
    target_encoder = copy.deepcopy(encoder).requires_grad_(False)
    features = LatentOrPixelFeatures(encoder, pre_encoder=RandomCrop(84))
    target_features = LatentOrPixelFeatures(target_encoder, pre_encoder=RandomCrop(84))

    # 3. SAC on features
    hidden = [cfg.network.hidden] * 2
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(
                MLP(in_features=50, out_features=2 * action_dim, num_cells=hidden),
                NormalParamExtractor(),
            ),
            in_keys=["features"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        spec=action_spec,
    ).to(device)
    qvalue = TensorDictModule(
        MLP(in_features=50 + action_dim, out_features=1, num_cells=hidden),
        in_keys=["features", "action"],
        out_keys=["state_action_value"],
    ).to(device)
    loss = DetachedEncoderSACLoss(
        actor,
        qvalue,
        num_qvalue_nets=2,
        action_spec=action_spec,
        alpha_init=cfg.loss.init_temperature,
    )
    loss.make_value_estimator(gamma=cfg.loss.gamma)
    target_q_updater = SoftUpdate(loss, tau=cfg.loss.critic_tau)
    # fused Adam: one kernel over all tensors per step, ~5x faster than the default on CPU
    lr = cfg.optim.lr
    optimizers = {
        "critic": torch.optim.Adam(
            [*loss.qvalue_network_params.values(True, True)], lr=lr, fused=True
        ),
        "encoder": torch.optim.Adam(encoder.parameters(), lr=lr, fused=True),
        "actor": torch.optim.Adam(
            [*loss.actor_network_params.values(True, True)], lr=lr, fused=True
        ),
        "alpha": torch.optim.Adam(
            [loss.log_alpha], lr=cfg.optim.alpha_lr, betas=(0.5, 0.999), fused=True
        ),
    }
    # CURL: the query encoder is the online encoder, the key encoder its EMA target
    curl_loss = CURLLoss(encoder, key_encoder=target_encoder).to(device) if cfg.loss.curl else None
    if curl_loss is not None:
        optimizers["curl"] = torch.optim.Adam([curl_loss.bilinear], lr=lr, fused=True)
    policy = TensorDictSequential(LatentOrPixelFeatures(encoder, pre_encoder=CenterCrop(84)), actor)

    # 4. pixel replay buffer
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(cfg.replay_buffer.size, device=device),
        batch_size=cfg.optim.batch_size,
    )

    # 5. the SEER freeze: K random-crop latents per observation
    hook = FreezeEncoderHook(
        encoder,
        freeze_at=cfg.seer.freeze_at,
        modules=[target_encoder, loss],
        optimizers=[optimizers["encoder"], optimizers["critic"]],
        replay_buffer=rb if cfg.seer.latent_replay else None,
        latent_transform=LatentEncodeTransform(
            encoder, num_copies=cfg.seer.num_copies, augmentation=RandomCrop(84)
        ),
        target_sync=cfg.seer.target_sync,
        replay_options=LatentReplayOptions(
            max_capacity=cfg.seer.max_capacity,
            storage_factory=lambda capacity: LazyTensorStorage(capacity, device=device),
        ),
        convergence=freeze_criterion(
            cfg.seer, encoder.frozen_part.parameters(), learn_start=cfg.optim.learn_start
        ),
    )

    # 6. training loop, one collector per checkpoint interval; optional bf16 autocast of the
    # learner's forward passes (backward and optimizer steps stay on the fp32 weights, as in AMP;
    # no loss scaling is needed for bf16)
    episodes = EpisodeReturns(run.log_scalar)
    # restore order: the hook first (it edits the optimizers and installs the latent storage)
    state = {"hook": hook, "encoder": encoder, "target_encoder": target_encoder, "loss": loss}
    state.update({f"optim_{name}": optim for name, optim in optimizers.items()})
    state["episodes"] = episodes
    if curl_loss is not None:
        state["curl"] = curl_loss
    steps, record = run.restore(state=state, replay_buffers={"replay": rb})
    record = record or {"update_seconds": [], "updates": 0}

    def report() -> Path:
        save_encoder_trajectory(hook.convergence, run.dir)
        return write_seer_report(
            run.dir,
            title=f"SEER + SAC on {cfg.env.name} from pixels",
            episode_returns=episodes.history,
            update_seconds=record["update_seconds"],
            freeze=hook.freeze_report,
            config=OmegaConf.to_container(cfg, resolve=True),
            seeds={**seeds, "environment": f"{cfg.seed} + 10000 x checkpoint interval"},
        )

    pbar = tqdm(total=cfg.collector.total_frames, initial=steps, desc="SEER DMC", unit="step")
    for segment in run.segments(cfg.collector.total_frames, start=steps):
        collector = Collector(
            make_env(segment.seed),  # seeded before the collector's first reset
            policy,
            frames_per_batch=1,
            total_frames=segment.stop - segment.start,
            policy_device=device,
            storing_device=device,
        )
        for data in collector:
            data = data.reshape(-1)
            rb.extend(data.select(*STORED_KEYS))
            steps += data.numel()
            pbar.update(data.numel())
            frames = frames_per_step * steps
            episodes.record(data, frames=frames)
            if hook.step(steps):
                hook.freeze_report["freeze_frame"] = frames
                for key, value in hook.freeze_report.items():
                    if isinstance(value, (int, float)):
                        run.log_scalar(f"seer/{key}", value, step=frames)
            if steps % cfg.logger.report_every == 0 and steps < cfg.collector.total_frames:
                report()
            if len(rb) < cfg.optim.learn_start:
                continue
            start = time.perf_counter()
            batch = rb.sample()
            with autocast(device, cfg.optim.autocast):
                features(batch)  # pixels -> encoder (with grad), or latents -> identity
                with torch.no_grad():
                    target_features(batch["next"])
                losses = loss(batch)
            update_actor = record["updates"] % cfg.optim.actor_update_freq == 0
            total = losses["loss_qvalue"]
            if update_actor:
                total = total + losses["loss_actor"] + losses["loss_alpha"]
            for name in ("critic", "encoder", "actor", "alpha"):
                optimizers[name].zero_grad()
            total.backward()
            optimizers["critic"].step()
            optimizers["encoder"].step()
            if update_actor:
                optimizers["actor"].step()
                optimizers["alpha"].step()
            if curl_loss is not None and not hook.frozen:
                with autocast(device, cfg.optim.autocast):
                    curl = curl_loss(batch)  # random crops of the stored 100x100 pixels
                optimizers["encoder"].zero_grad()
                optimizers["curl"].zero_grad()
                curl["loss_curl"].backward()
                optimizers["encoder"].step()
                optimizers["curl"].step()
            record["update_seconds"].append((hook.frozen, time.perf_counter() - start))
            record["updates"] += 1
            if record["updates"] % cfg.optim.actor_update_freq == 0:
                target_q_updater.step()
                if not hook.frozen:  # the encoder EMA stops at the freeze
                    with torch.no_grad():
                        for p_target, p in zip(
                            target_encoder.parameters(), encoder.parameters(), strict=True
                        ):
                            p_target.lerp_(p, cfg.loss.encoder_tau)
            if steps % 250 == 0:
                run.log_scalar("loss_qvalue", losses["loss_qvalue"].item(), step=frames)
                run.log_scalar("update_ms", 1e3 * record["update_seconds"][-1][1], step=frames)
                if curl_loss is not None and not hook.frozen:
                    run.log_scalar("loss_curl", curl["loss_curl"].item(), step=frames)
                pbar.set_postfix(frozen=hook.frozen, rb=len(rb))
        collector.shutdown()
        run.save(steps, state=state, replay_buffers={"replay": rb}, extra=record)
    pbar.close()

    # 7. report
    path = report()
    print(f"report written to {path.parent}")
    return path


@hydra.main(config_path="configs", config_name="seer_dmc", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point: hydra composes the configuration."""
    train(cfg)


if __name__ == "__main__":
    main()
