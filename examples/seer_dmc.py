"""SEER on DeepMind Control from pixels: SAC + CURL-style encoder, frozen at T_f, latent replay.

Read top to bottom:

1. a DMC task rendered at 100x100, 3 stacked RGB frames (9 channels), PlaNet action repeat;
2. the CURL / SAC-AE pixel encoder (4 conv 3x3 + fc 50 + LayerNorm), shared by the critic's
   Q heads, with an EMA target copy; the actor reads its features detached (CURL). Training
   crops a random 84x84 window, acting the centre window;
3. TorchRL's ``SACLoss`` on encoder features (hidden 1024), separate (fused) Adams for critic,
   encoder, actor and temperature, ``SoftUpdate`` of the target Q heads; CURL's contrastive loss
   (``CURLLoss``: two random crops, the EMA target encoder as key encoder, bilinear W) trains
   the encoder beside the critic (``--no-curl`` turns it off);
4. a pixel replay buffer;
5. ``FreezeEncoderHook``: at T_f the whole encoder stops training (no encoder optimizer, no
   contrastive update, no EMA), the target critic is hard-copied from the online one (SEER's
   reference behaviour), every stored observation is encoded into K random-crop latents
   (K = ``--num-copies``), the pixel storage is freed and the buffer re-sized to the same
   memory budget; new transitions are encoded on write and each sampled element uses one of
   its K copies;
6. the loop: collect → write → ``hook.step`` → sample → encoder stage → SAC loss → steps →
   (before the freeze) the contrastive update; ``--autocast bf16`` runs the learner's forward
   passes in bf16 mixed precision (fp32 weights), ~2x faster updates on AVX-512 BF16 CPUs;
7. an end-of-run report (markdown + PNG) in the run folder, printed at the end.

Rendering DMC on a CPU runs at ~20 frames/s: the defaults are a short run.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from tensordict import TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.collectors import Collector
from torchrl.data import LazyTensorStorage, TensorDictReplayBuffer
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal
from torchrl.objectives import SACLoss, SoftUpdate
from torchrl.record.loggers import get_logger
from tqdm import tqdm

from torchrl_seer.data import LatentEncodeTransform, LatentReplayOptions
from torchrl_seer.envs import PLANET_ACTION_REPEAT, make_dmc_env
from torchrl_seer.modules import CenterCrop, CURLPixelEncoder, LatentOrPixelFeatures, RandomCrop
from torchrl_seer.objectives import CURLLoss
from torchrl_seer.trainers import FreezeEncoderHook

sys.path.insert(0, str(Path(__file__).resolve().parent))
from seer_report import write_seer_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--domain", default="cartpole")
    p.add_argument("--task", default="swingup")
    p.add_argument("--action-repeat", type=int, default=None, help="default: PlaNet's value")
    p.add_argument("--total-steps", type=int, default=5_000, help="agent steps")
    p.add_argument("--freeze-at", type=int, default=2_500, help="T_f in agent steps")
    p.add_argument("--buffer-size", type=int, default=5_000, help="pixel capacity C")
    p.add_argument("--num-copies", type=int, default=4, help="K random-crop latents per obs")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--critic-tau", type=float, default=0.01)
    p.add_argument("--encoder-tau", type=float, default=0.05)
    p.add_argument("--actor-update-freq", type=int, default=2)
    p.add_argument("--init-temperature", type=float, default=0.1)
    p.add_argument(
        "--curl",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CURL contrastive encoder update until the freeze",
    )
    p.add_argument("--learn-start", type=int, default=1_000)
    p.add_argument("--max-capacity", type=int, default=None, help="cap on the latent capacity")
    p.add_argument(
        "--latent-replay",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="at the freeze, move the buffer to K random-crop latents (SEER); --no-latent-replay"
        " freezes the encoder but keeps pixel replay with a fresh crop per sample (an ablation)",
    )
    p.add_argument(
        "--target-sync",
        choices=["full", "encoder"],
        default="full",
        help="at the freeze: hard-copy the whole critic into its target (SEER's default), or only"
        " the frozen encoder",
    )
    p.add_argument(
        "--autocast",
        choices=["none", "bf16"],
        default="none",
        help="learner forward passes under torch.autocast (bf16 mixed precision, fp32 weights);"
        " encoder forward+backward 2.7x faster on CPUs with AVX-512 BF16",
    )
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--logger", default="csv")
    p.add_argument("--out-dir", default="runs")
    return p.parse_args(argv)


class DetachedEncoderSACLoss(SACLoss):
    """SACLoss whose actor update does not train the shared encoder (CURL's ``detach``)."""

    def actor_loss(self, tensordict: TensorDictBase):  # noqa: D102
        return super().actor_loss(tensordict.detach())


def main(argv: list[str] | None = None) -> Path:
    """Trains SAC + SEER from pixels and returns the report path."""
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    run_dir = (
        Path(args.out_dir) / f"seer_dmc_{args.domain}_{args.task}_{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run_dir.mkdir(parents=True, exist_ok=True)
    logger = get_logger(args.logger, logger_name=str(run_dir), experiment_name="seer_dmc")

    # 1. environment: 9x100x100 uint8 observations
    frames_per_step = args.action_repeat or PLANET_ACTION_REPEAT.get(
        f"{args.domain}_{args.task}", 1
    )
    env = make_dmc_env(
        args.domain,
        args.task,
        size=100,
        frame_stack=3,
        action_repeat=frames_per_step,
        seed=args.seed,
    )
    action_spec = env.action_spec
    action_dim = action_spec.shape[-1]

    # 2. encoder stage: random crop for learning, centre crop for acting
    encoder = CURLPixelEncoder(9)
    target_encoder = copy.deepcopy(encoder).requires_grad_(False)
    features = LatentOrPixelFeatures(encoder, pre_encoder=RandomCrop(84))
    target_features = LatentOrPixelFeatures(target_encoder, pre_encoder=RandomCrop(84))

    # 3. SAC on features
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(
                MLP(in_features=50, out_features=2 * action_dim, num_cells=[args.hidden] * 2),
                NormalParamExtractor(),
            ),
            in_keys=["features"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        spec=action_spec,
    )
    qvalue = TensorDictModule(
        MLP(in_features=50 + action_dim, out_features=1, num_cells=[args.hidden] * 2),
        in_keys=["features", "action"],
        out_keys=["state_action_value"],
    )
    loss = DetachedEncoderSACLoss(
        actor,
        qvalue,
        num_qvalue_nets=2,
        action_spec=action_spec,
        alpha_init=args.init_temperature,
    )
    loss.make_value_estimator(gamma=args.gamma)
    target_q_updater = SoftUpdate(loss, tau=args.critic_tau)
    # fused Adam: one kernel over all tensors per step, ~5x faster than the default on CPU
    critic_optim = torch.optim.Adam(
        [*loss.qvalue_network_params.values(True, True)], lr=args.lr, fused=True
    )
    encoder_optim = torch.optim.Adam(encoder.parameters(), lr=args.lr, fused=True)
    actor_optim = torch.optim.Adam(
        [*loss.actor_network_params.values(True, True)], lr=args.lr, fused=True
    )
    alpha_optim = torch.optim.Adam([loss.log_alpha], lr=1e-4, betas=(0.5, 0.999), fused=True)
    # CURL: the query encoder is the online encoder, the key encoder its EMA target
    curl_loss = CURLLoss(encoder, key_encoder=target_encoder) if args.curl else None
    curl_optim = (
        torch.optim.Adam([curl_loss.bilinear], lr=args.lr, fused=True) if curl_loss else None
    )
    policy = TensorDictSequential(LatentOrPixelFeatures(encoder, pre_encoder=CenterCrop(84)), actor)

    # 4. pixel replay buffer
    rb = TensorDictReplayBuffer(
        storage=LazyTensorStorage(args.buffer_size), batch_size=args.batch_size
    )
    stored_keys = [
        "pixels",
        "action",
        ("next", "pixels"),
        ("next", "reward"),
        ("next", "done"),
        ("next", "terminated"),
    ]

    # 5. the SEER freeze: K random-crop latents per observation
    hook = FreezeEncoderHook(
        encoder,
        freeze_at=args.freeze_at,
        modules=[target_encoder, loss],
        optimizers=[encoder_optim, critic_optim],
        replay_buffer=rb if args.latent_replay else None,
        latent_transform=LatentEncodeTransform(
            encoder, num_copies=args.num_copies, augmentation=RandomCrop(84)
        ),
        target_sync=args.target_sync,
        replay_options=LatentReplayOptions(max_capacity=args.max_capacity),
        logger=logger,
    )

    # 6. training loop; optional bf16 autocast of the learner's forward passes (backward and
    # optimizer steps stay on the fp32 weights, as in AMP; no loss scaling is needed for bf16)
    def learner_precision() -> torch.autocast:
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.autocast == "bf16")

    collector = Collector(env, policy, frames_per_batch=1, total_frames=args.total_steps)
    episode_returns: list[tuple[int, float]] = []
    update_seconds: list[tuple[bool, float]] = []
    steps = updates = 0
    pbar = tqdm(total=args.total_steps, desc="SEER DMC", unit="step")
    for data in collector:
        data = data.reshape(-1)
        rb.extend(data.select(*stored_keys))
        steps += data.numel()
        pbar.update(data.numel())
        done = data["next", "done"].squeeze(-1)
        for ret in data["next", "episode_reward"][done].flatten().tolist():
            episode_returns.append((frames_per_step * steps, ret))
            logger.log_scalar("episode_return", ret, step=frames_per_step * steps)
        if hook.step(steps):
            hook.freeze_report["freeze_frame"] = frames_per_step * steps
        if len(rb) < args.learn_start:
            continue
        start = time.perf_counter()
        batch = rb.sample()
        with learner_precision():
            features(batch)  # pixels -> encoder (with grad), or latents -> identity
            with torch.no_grad():
                target_features(batch["next"])
            losses = loss(batch)
        update_actor = updates % args.actor_update_freq == 0
        total = losses["loss_qvalue"]
        if update_actor:
            total = total + losses["loss_actor"] + losses["loss_alpha"]
        for optim in (critic_optim, encoder_optim, actor_optim, alpha_optim):
            optim.zero_grad()
        total.backward()
        critic_optim.step()
        encoder_optim.step()
        if update_actor:
            actor_optim.step()
            alpha_optim.step()
        if curl_loss is not None and curl_optim is not None and not hook.frozen:
            with learner_precision():
                curl = curl_loss(batch)  # random crops of the stored 100x100 pixels
            encoder_optim.zero_grad()
            curl_optim.zero_grad()
            curl["loss_curl"].backward()
            encoder_optim.step()
            curl_optim.step()
        update_seconds.append((hook.frozen, time.perf_counter() - start))
        updates += 1
        if updates % args.actor_update_freq == 0:
            target_q_updater.step()
            if not hook.frozen:  # the encoder EMA stops at the freeze
                with torch.no_grad():
                    for p_target, p in zip(
                        target_encoder.parameters(), encoder.parameters(), strict=True
                    ):
                        p_target.lerp_(p, args.encoder_tau)
        if steps % 250 == 0:
            logger.log_scalar("loss_qvalue", losses["loss_qvalue"].item(), step=steps)
            logger.log_scalar("update_ms", 1e3 * update_seconds[-1][1], step=steps)
            if curl_loss is not None and not hook.frozen:
                logger.log_scalar("loss_curl", curl["loss_curl"].item(), step=steps)
            pbar.set_postfix(frozen=hook.frozen, rb=len(rb))
    pbar.close()
    collector.shutdown()

    # 7. report
    report = write_seer_report(
        run_dir,
        title=f"SEER + SAC on {args.domain}_{args.task} from pixels",
        episode_returns=episode_returns,
        update_seconds=update_seconds,
        freeze=hook.freeze_report,
        config=vars(args),
    )
    print(f"report written to {report.parent}")
    return report


if __name__ == "__main__":
    main()
