"""SEER: learner update time before vs after the freeze, capacity under one budget, RSS drop.

For each domain two identical learners (same seed, same cached rollout in a pixel replay
buffer) are built; :class:`~torchrl_seer.trainers.FreezeEncoderHook` freezes one of them (real
freeze and migration) and the learner update (sample + loss + backward + optimizer step) of
both is timed interleaved — same process, same data, medians over repeats — so that load drift
on a shared machine hits before and after alike.

* Atari: TorchRL ``DQNLoss`` (double DQN) with the data-efficient CNN, batch 32.
* DMC: TorchRL ``SACLoss`` (hidden 1024) on the CURL encoder (shared critic encoder, target
  encoder, random 84x84 crops of 100x100 frames, K = 4 latent copies), batch 128; once with the
  SAC update alone, once as the reference's learner, which also runs CURL's contrastive update
  (:class:`~torchrl_seer.objectives.CURLLoss`) before the freeze and stops it at the freeze.

Capacity: the pixel buffer's measured bytes are the budget; the latent capacity reached in fp32
and int8 (:class:`~torchrl_seer.data.QuantizedStorage`) is compared with SEER's reference
formulas.
"""

from __future__ import annotations

import argparse
import copy
import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import NormalParamExtractor, TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Bounded, Categorical, LazyTensorStorage, TensorDictReplayBuffer
from torchrl.modules import MLP, ProbabilisticActor, QValueModule, TanhNormal
from torchrl.objectives import DQNLoss, SACLoss

from seer_benchmarks.datasets import load_rollout, stack_frames
from seer_benchmarks.harness import BenchmarkReport, interleaved_timings
from torchrl_seer.data import (
    LatentEncodeTransform,
    LatentReplayOptions,
    QuantizedStorage,
    reference_capacity_atari,
    reference_capacity_dmc,
)
from torchrl_seer.modules import (
    CURLPixelEncoder,
    DataEfficientAtariEncoder,
    LatentOrPixelFeatures,
    RandomCrop,
)
from torchrl_seer.objectives import CURLLoss
from torchrl_seer.trainers import FreezeEncoderHook, ParameterConvergence

LATENT_KEYS = ["latent", ("next", "latent")]


def atari_transitions(num: int) -> TensorDictBase:
    """Pong transitions as the SEER Atari recipe stores them (4-frame stacks, uint8)."""
    data = stack_frames(load_rollout("Pong"), 4)[:num]
    return TensorDict(
        {
            "pixels": data["pixels"],
            "action": data["action"].long().reshape(num),
            ("next", "pixels"): data["next", "pixels"],
            ("next", "reward"): data["next", "reward"].float().reshape(num, 1),
            ("next", "done"): data["next", "done"].reshape(num, 1),
            ("next", "terminated"): data["next", "terminated"].reshape(num, 1),
        },
        [num],
    )


def dmc_transitions(num: int) -> TensorDictBase:
    """cartpole_swingup transitions: 3 stacked RGB frames, padded 84 -> 100 for random crops."""
    data = stack_frames(load_rollout("cartpole_swingup"), 3)[:num]

    def pad(pixels: torch.Tensor) -> torch.Tensor:
        return F.pad(pixels.float(), (8, 8, 8, 8), mode="replicate").to(torch.uint8)

    return TensorDict(
        {
            "pixels": pad(data["pixels"]),
            "action": data["action"].float().reshape(num, -1),
            ("next", "pixels"): pad(data["next", "pixels"]),
            ("next", "reward"): data["next", "reward"].float().reshape(num, 1),
            ("next", "done"): data["next", "done"].reshape(num, 1),
            ("next", "terminated"): data["next", "terminated"].reshape(num, 1),
        },
        [num],
    )


def pixel_buffer(data: TensorDictBase, batch_size: int) -> TensorDictReplayBuffer:
    rb = TensorDictReplayBuffer(storage=LazyTensorStorage(len(data)), batch_size=batch_size)
    rb.extend(data)
    return rb


def atari_learner(num: int):
    """DQN learner on a pixel buffer: returns its update function and an unstepped hook."""
    torch.manual_seed(0)
    encoder = DataEfficientAtariEncoder(4)
    num_actions = 6
    head = TensorDictModule(
        MLP(in_features=576, out_features=num_actions, num_cells=[256]),
        in_keys=["features"],
        out_keys=["action_value"],
    )
    qnet = TensorDictSequential(
        LatentOrPixelFeatures(encoder), head, QValueModule(spec=Categorical(num_actions))
    )
    loss = DQNLoss(qnet, action_space="categorical", delay_value=True, double_dqn=True)
    loss.make_value_estimator(gamma=0.99)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-4, eps=1.5e-4, fused=True)
    rb = pixel_buffer(atari_transitions(num), 32)

    def update() -> None:
        losses = loss(rb.sample())
        optim.zero_grad()
        losses["loss"].backward()
        optim.step()

    hook = FreezeEncoderHook(
        encoder,
        freeze_at=0,
        modules=[loss],
        optimizers=[optim],
        replay_buffer=rb,
        target_sync="encoder",
        replay_options=LatentReplayOptions(progress=False),
    )
    return update, hook


class DetachedEncoderSACLoss(SACLoss):
    """SACLoss whose actor update does not train the shared encoder (CURL's detach)."""

    def actor_loss(self, tensordict: TensorDictBase):  # noqa: D102
        return super().actor_loss(tensordict.detach())


def dmc_learner(num: int, num_copies: int = 4, *, curl: bool = False):
    """SAC + CURL-encoder learner: returns its update function and an unstepped hook.

    With ``curl=True`` the update also takes CURL's contrastive step until the hook freezes.
    """
    torch.manual_seed(0)
    encoder = CURLPixelEncoder(9)
    target_encoder = copy.deepcopy(encoder).requires_grad_(False)
    crop = RandomCrop(84)
    features = LatentOrPixelFeatures(encoder, pre_encoder=crop)
    target_features = LatentOrPixelFeatures(target_encoder, pre_encoder=crop)
    action_dim = 1
    spec = Bounded(-1.0, 1.0, shape=(action_dim,))
    actor = ProbabilisticActor(
        TensorDictModule(
            nn.Sequential(
                MLP(in_features=50, out_features=2 * action_dim, num_cells=[1024, 1024]),
                NormalParamExtractor(),
            ),
            in_keys=["features"],
            out_keys=["loc", "scale"],
        ),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        spec=spec,
    )
    qvalue = TensorDictModule(
        MLP(in_features=50 + action_dim, out_features=1, num_cells=[1024, 1024]),
        in_keys=["features", "action"],
        out_keys=["state_action_value"],
    )
    loss = DetachedEncoderSACLoss(actor, qvalue, num_qvalue_nets=2, action_spec=spec)
    critic_optim = torch.optim.Adam(
        [*loss.qvalue_network_params.values(True, True)], lr=1e-3, fused=True
    )
    encoder_optim = torch.optim.Adam(encoder.parameters(), lr=1e-3, fused=True)
    actor_optim = torch.optim.Adam(
        [*loss.actor_network_params.values(True, True)], lr=1e-3, fused=True
    )
    alpha_optim = torch.optim.Adam([loss.log_alpha], lr=1e-4, betas=(0.5, 0.999), fused=True)
    optims = [critic_optim, encoder_optim, actor_optim, alpha_optim]
    curl_loss = CURLLoss(encoder, key_encoder=target_encoder) if curl else None
    curl_optim = torch.optim.Adam([curl_loss.bilinear], lr=1e-3, fused=True) if curl_loss else None
    rb = pixel_buffer(dmc_transitions(num), 128)

    def update() -> None:
        batch = rb.sample()
        features(batch)
        with torch.no_grad():
            target_features(batch["next"])
        losses = loss(batch)
        for optim in optims:
            optim.zero_grad()
        (losses["loss_qvalue"] + losses["loss_actor"] + losses["loss_alpha"]).backward()
        for optim in optims:
            optim.step()
        if curl_loss is not None and curl_optim is not None and not hook.frozen:
            contrastive = curl_loss(batch)
            encoder_optim.zero_grad()
            curl_optim.zero_grad()
            contrastive["loss_curl"].backward()
            encoder_optim.step()
            curl_optim.step()

    hook = FreezeEncoderHook(
        encoder,
        freeze_at=0,
        modules=[target_encoder, loss],
        optimizers=optims,
        replay_buffer=rb,
        latent_transform=LatentEncodeTransform(encoder, num_copies=num_copies, augmentation=crop),
        replay_options=LatentReplayOptions(progress=False),
    )
    return update, hook


def compare_before_after(make_learner, num: int, repeats: int) -> dict:
    """Times two identical learners (same seed, same data), one frozen, interleaved.

    Interleaving keeps the ratio honest on a shared machine whose load drifts; the frozen
    learner went through the real freeze and migration.
    """
    update_before, _ = make_learner(num)
    update_after, hook = make_learner(num)
    hook.step(0)
    timings = interleaved_timings(
        {"before": update_before, "after": update_after}, repeats=repeats, warmup=3
    )
    return {**timings, "freeze": hook.freeze_report}


def capacity_rows(num: int) -> tuple[list[list], dict]:
    """Latent capacity under the pixel buffer's measured budget: fp32 and int8 vs reference."""
    rows, raw = [], {}
    cases = [
        ("Atari (data-efficient CNN)", atari_transitions, DataEfficientAtariEncoder(4), 1),
        ("DMC (CURL encoder, K=4)", dmc_transitions, CURLPixelEncoder(9), 4),
    ]
    for name, make_data, encoder, k in cases:
        reference = (
            reference_capacity_atari(num, t_max=10**9)
            if k == 1
            else reference_capacity_dmc(num, num_train_steps=10**9, num_copies=k)
        )
        for dtype in ("fp32", "int8"):
            rb = pixel_buffer(make_data(num), 32)
            transform = LatentEncodeTransform(
                encoder, num_copies=k, augmentation=RandomCrop(84) if k > 1 else None
            )
            factory = (
                functools.partial(QuantizedStorage, keys=LATENT_KEYS, dtype="int8")
                if dtype == "int8"
                else None
            )
            hook = FreezeEncoderHook(
                encoder,
                freeze_at=0,
                replay_buffer=rb,
                latent_transform=transform,
                replay_options=LatentReplayOptions(storage_factory=factory, progress=False),
            )
            hook.step(0)
            rep = hook.freeze_report
            rows.append(
                [
                    name,
                    dtype,
                    num,
                    round(rep["pixel_bytes_per_transition"]),
                    rep["latent_bytes_per_transition"],
                    rep["latent_capacity"],
                    rep["latent_capacity"] / num,
                    reference / num,
                    "yes" if rep["latent_storage_bytes"] <= rep["budget_bytes"] else "no",
                ]
            )
            raw[f"{name}/{dtype}"] = rep
            encoder.requires_grad_(True)  # the next case freezes it again
    return rows, raw


def convergence_evidence(num: int, updates: int, interval: int) -> dict:
    """Relative parameter change of the DQN convs vs how much their output still drifts.

    DQN trains on a fixed Pong replay (no freeze). Every ``interval`` updates the
    :class:`~torchrl_seer.trainers.ParameterConvergence` statistic ``r`` is recorded with the
    conv outputs on a fixed probe batch; at the end each snapshot's latents are compared with
    the final encoder's: ``drift = ||f_t(x) - f_T(x)|| / ||f_T(x)||``, the error a freeze at
    ``t`` would have baked into the stored latents relative to training on.
    """
    torch.manual_seed(0)
    encoder = DataEfficientAtariEncoder(4)
    head = TensorDictModule(
        MLP(in_features=576, out_features=6, num_cells=[256]),
        in_keys=["features"],
        out_keys=["action_value"],
    )
    qnet = TensorDictSequential(
        LatentOrPixelFeatures(encoder), head, QValueModule(spec=Categorical(6))
    )
    loss = DQNLoss(qnet, action_space="categorical", delay_value=True, double_dqn=True)
    loss.make_value_estimator(gamma=0.99)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-4, eps=1.5e-4)
    data = atari_transitions(num)
    rb = pixel_buffer(data, 32)
    probe = data["pixels"][torch.randperm(num)[:256]]
    criterion = ParameterConvergence(
        encoder.frozen_part.parameters(), check_interval=interval, patience=1
    )
    snapshots = []
    for step in range(updates + 1):
        if step % interval == 0:
            criterion.update(step)
            with torch.no_grad():
                snapshots.append((step, encoder.frozen_part_forward(probe)))
        if step % 2000 == 0:
            loss.target_value_network_params.update_(loss.value_network_params.data)
        losses = loss(rb.sample())
        optim.zero_grad()
        losses["loss"].backward()
        optim.step()
    final = snapshots[-1][1]
    drift = {s: float((f - final).norm() / final.norm()) for s, f in snapshots}
    change = dict(criterion.history)
    return {"steps": [s for s, _ in snapshots], "change": change, "drift": drift}


def plot_evidence(evidence: dict, path: Path, threshold: float = 0.01) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = evidence["steps"]
    ax.semilogy(
        list(evidence["change"]), list(evidence["change"].values()), "o-", label="r (per check)"
    )
    ax.semilogy(
        steps[:-1], [evidence["drift"][s] for s in steps[:-1]], "s-", label="drift to final"
    )
    ax.axhline(threshold, color="r", ls="--", label=f"threshold {threshold}")
    ax.set(xlabel="learner updates", ylabel="relative change", title="Data-efficient CNN, DQN")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    """Runs the SEER benchmark and writes ``docs/benchmarks/seer.{md,json}``."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer transitions and repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    num, repeats = (400, 10) if args.quick else (600, 30)

    report = BenchmarkReport(
        "seer",
        "SEER: frozen encoder and latent replay",
        description=(__doc__ or "").split("\n\n")[1],
    )
    timing_rows = []
    for name, make_learner, batch, target in [
        ("Atari data-efficient CNN + DQNLoss", atari_learner, 32, 0.35),
        ("DMC CURL encoder + SACLoss", dmc_learner, 128, 0.1),
        (
            "DMC CURL encoder + SACLoss + CURLLoss (reference learner)",
            functools.partial(dmc_learner, curl=True),
            128,
            0.1,
        ),
    ]:
        result = compare_before_after(make_learner, num, repeats)
        ratio = result["after"].median / result["before"].median
        freeze = result["freeze"]
        timing_rows.append(
            [
                name,
                batch,
                1e3 * result["before"].median,
                1e3 * result["after"].median,
                ratio,
                target,
                "met" if ratio <= target else "missed",
            ]
        )
        report.raw[name] = {
            "before": result["before"].as_dict(),
            "after": result["after"].as_dict(),
            "freeze": freeze,
        }
        report.raw[f"{name}/rss"] = [freeze["rss_before_bytes"], freeze["rss_after_bytes"]]
    report.add_table(
        "Learner update time (sample + loss + backward + optimizer step), same run, interleaved",
        ["learner", "batch", "before ms", "after ms", "after / before", "target", "status"],
        timing_rows,
    )
    rows, raw = capacity_rows(num // 2)
    report.raw["capacity"] = raw
    report.add_table(
        "Capacity under the pixel buffer's measured budget",
        [
            "domain",
            "latent dtype",
            "pixel C",
            "b_pix (B)",
            "b_lat (B)",
            "latent c'",
            "growth c'/C",
            "reference growth",
            "within budget",
        ],
        rows,
    )
    rss_rows = [
        [
            name,
            report.raw[name]["freeze"]["pixel_storage_bytes"] / 2**20,
            report.raw[name]["freeze"]["num_migrated"],
            report.raw[f"{name}/rss"][0] / 2**20,
            report.raw[f"{name}/rss"][1] / 2**20,
            report.raw[name]["freeze"]["seconds"],
        ]
        for name, *_ in timing_rows
    ]
    report.add_table(
        "Process RSS at migration (c' sized to the same budget; latent pages fill as written)",
        ["learner", "pixel storage MiB", "migrated", "RSS before MiB", "RSS after MiB", "seconds"],
        rss_rows,
    )
    report.add_note(
        "b_pix and b_lat are allocated bytes per transition counting every stored field "
        "(pixels or latents for obs and next obs, action, reward, done flags). The reference "
        "growth is SEER's formula (Atari: 7056 / (4 l); DMC: 30000 / (l 4 2 K)), which counts "
        "one frame per pixel transition; our pixel transitions hold both stacks, so the measured "
        "growth is larger. int8 stores latent features in one byte with per-feature scale and "
        "offset; the remaining full-width fields keep the int8/fp32 ratio slightly under 4. "
        "DMC frames are the cached 84x84 rollout padded to 100x100 (replicate) so that the "
        "100 -> 84 random crops of CURL/SEER apply."
    )
    updates, interval = (500, 100) if args.quick else (3000, 250)
    evidence = convergence_evidence(num, updates, interval)
    report.raw["auto_freeze_evidence"] = evidence
    figure = report.out_dir / "seer_auto_freeze.png"
    plot_evidence(evidence, figure)
    report.add_figure(figure, "auto-freeze criterion: parameter change r vs latent drift")
    report.add_table(
        "Auto-freeze criterion: relative parameter change r vs remaining latent drift",
        ["learner updates", "r over the last check interval", "drift of latents to the final CNN"],
        [
            [s, evidence["change"].get(s, float("nan")), evidence["drift"][s]]
            for s in evidence["steps"]
        ],
    )
    print(report.write())


if __name__ == "__main__":
    main()
