"""AcceRL actor inference: compressed ÷ fp32 time per acting step, same run, recipe policy sizes.

For each policy the recipes use (IMPALA CartPole MLP, SAC MuJoCo MLP, Atari Nature CNN) and a
wide MLP where int8 is known to pay off, at the batch shapes actors run (one environment per
worker = batch 1; a vectorised actor = batch 8/16), we time one acting step of
:class:`~torchrl_seer.collectors.CompressedPolicy` (network + distribution + sampling +
log-prob) for each pipeline, interleaved with the fp32 policy, and report the median ratio
together with the divergence KL(π‖μ). ``auto`` is what
:func:`~torchrl_seer.collectors.select_compression` picks at start-up for that policy and shape.

Run: ``python -m seer_benchmarks.bench_accerl [--quick]``.
"""

from __future__ import annotations

import argparse

import torch
from tensordict import TensorDict
from tensordict.nn import NormalParamExtractor, TensorDictModule
from torch import nn
from torchrl.modules import MLP, ProbabilisticActor, TanhNormal

from seer_benchmarks.harness import BenchmarkReport, interleaved_timings
from torchrl_seer.collectors import (
    CompressedPolicy,
    PolicyCompressor,
    Quantize,
    policy_divergence,
    select_compression,
)

KL_BOUND = 0.02


def categorical_mlp(n_obs: int, n_act: int, width: int) -> ProbabilisticActor:
    return ProbabilisticActor(
        TensorDictModule(
            MLP(in_features=n_obs, out_features=n_act, num_cells=[width, width]),
            in_keys=["observation"],
            out_keys=["logits"],
        ),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )


def tanh_normal_mlp(n_obs: int, n_act: int, width: int) -> ProbabilisticActor:
    net = nn.Sequential(
        MLP(in_features=n_obs, out_features=2 * n_act, num_cells=[width, width]),
        NormalParamExtractor(),
    )
    return ProbabilisticActor(
        TensorDictModule(net, in_keys=["observation"], out_keys=["loc", "scale"]),
        in_keys=["loc", "scale"],
        distribution_class=TanhNormal,
        return_log_prob=True,
    )


def nature_cnn(n_act: int = 6) -> ProbabilisticActor:
    cnn = nn.Sequential(
        nn.Conv2d(4, 32, 8, 4),
        nn.ReLU(),
        nn.Conv2d(32, 64, 4, 2),
        nn.ReLU(),
        nn.Conv2d(64, 64, 3, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3136, 512),
        nn.ReLU(),
        nn.Linear(512, n_act),
    )
    return ProbabilisticActor(
        TensorDictModule(cnn, in_keys=["pixels"], out_keys=["logits"]),
        in_keys=["logits"],
        distribution_class=torch.distributions.Categorical,
        return_log_prob=True,
    )


def cases(quick: bool):
    """(name, policy factory, input factory, batch sizes) mirroring the recipes."""
    out = [
        (
            "IMPALA CartPole MLP 4-64-64-2",
            lambda: categorical_mlp(4, 2, 64),
            lambda b: TensorDict(observation=torch.randn(b, 4), batch_size=[b]),
            [1],
        ),
        (
            "SAC HalfCheetah MLP 17-256-256-12",
            lambda: tanh_normal_mlp(17, 6, 256),
            lambda b: TensorDict(observation=torch.randn(b, 17), batch_size=[b]),
            [1],
        ),
        (
            "wide MLP 64-1024-1024-18",
            lambda: categorical_mlp(64, 18, 1024),
            lambda b: TensorDict(observation=torch.randn(b, 64), batch_size=[b]),
            [16],
        ),
        (
            "Atari Nature CNN 4x84x84",
            nature_cnn,
            lambda b: TensorDict(pixels=torch.rand(b, 4, 84, 84) * 255, batch_size=[b]),
            [1] if quick else [1, 8],
        ),
    ]
    return out


def pipelines(policy_inputs) -> dict[str, PolicyCompressor]:
    static = Quantize("int8", mode="static", calibration=lambda policy: policy(policy_inputs()))
    return {
        "bf16": PolicyCompressor.from_spec("bf16"),
        "int8": PolicyCompressor.from_spec("int8"),
        "int8static": PolicyCompressor([static]),
        "prune0.5+int8": PolicyCompressor.from_spec("prune0.5+int8"),
        "prune0.5+bf16": PolicyCompressor.from_spec("prune0.5+bf16"),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shapes")
    args = parser.parse_args(argv)
    repeats, inner = (5, 10) if args.quick else (11, 30)
    # One actor = one core: collector workers act single-threaded. (With 2 intra-op threads on a
    # loaded 2-core machine, bf16/int8 kernels spun for 10x longer than fp32.)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    report = BenchmarkReport(
        "accerl",
        "AcceRL compressed actors: inference time per acting step",
        description=(
            "Median time of one acting step (network, distribution, sample, log-prob) of a "
            "`CompressedPolicy`, divided by the uncompressed fp32 policy timed interleaved in "
            "the same run, single-threaded (one actor per core), at the policy sizes and batch "
            "shapes of the AcceRL recipes. KL is "
            "KL(π‖μ) of the compressed policy μ from the full policy π on random inputs; "
            "pruned pipelines are shown *before* distillation (their KL is what distillation "
            f"must remove). Targets: ≤ 0.5 for the best compression; auto never > 1.0 "
            f"(auto only accepts KL ≤ {KL_BOUND})."
        ),
    )
    rows = []
    raw: dict = {}
    auto_ratios = []
    for name, make_policy, make_inputs, batches in cases(args.quick):
        policy = make_policy().eval()
        for batch in batches:

            def inputs(batch=batch, make_inputs=make_inputs):
                return make_inputs(batch)

            probe = make_inputs(64) if batch < 64 else make_inputs(batch)
            candidates = {"fp32": PolicyCompressor()}
            for spec, compressor in pipelines(inputs).items():
                try:
                    CompressedPolicy(policy, compressor)
                except (TypeError, ValueError):
                    continue  # e.g. static int8 on a Tanh MLP: not applicable
                candidates[spec] = compressor
            policies = {spec: CompressedPolicy(policy, c) for spec, c in candidates.items()}
            data = inputs()
            with torch.no_grad():

                def step(p, data=data):
                    def run():
                        for _ in range(inner):
                            p(data.clone(False))

                    return run

                timings = interleaved_timings(
                    {spec: step(p) for spec, p in policies.items()}, repeats=repeats, warmup=2
                )
            base = timings["fp32"].median / inner
            auto = select_compression(
                policy,
                data,
                candidates=[c for s, c in candidates.items() if s != "fp32"],
                kl_bound=KL_BOUND,
                repeats=repeats,
                inner=inner,
                log=None,
            )
            auto_spec = auto.compressor.spec()
            auto_row = next(r for r in auto.rows if r["spec"] == auto_spec)
            auto_ratios.append(auto_row["ratio"])
            key = f"{name} @ batch {batch}"
            raw[key] = {"fp32_us": base * 1e6, "auto": auto_spec, "auto_ratio": auto_row["ratio"]}
            for spec, p in policies.items():
                t = timings[spec].median / inner
                kl = policy_divergence(policy, p, probe)["kl"] if spec != "fp32" else 0.0
                raw[key][spec] = {"us": t * 1e6, "ratio": t / base, "kl": kl}
                rows.append([name, batch, spec, f"{t * 1e6:.1f}", f"{t / base:.2f}", f"{kl:.1e}"])
            rows.append([name, batch, f"auto → {auto_spec}", "", f"{auto_row['ratio']:.2f}", ""])
            print(key, "auto:", auto.reason, flush=True)
    report.add_table(
        "Acting-step time, compressed ÷ fp32 (median, same run)",
        ["policy", "batch", "pipeline", "µs / step", "÷ fp32", "KL(π‖μ)"],
        rows,
    )
    best = {
        key: min(
            (v["ratio"], spec)
            for spec, v in entry.items()
            if isinstance(v, dict) and spec != "fp32" and v["kl"] <= KL_BOUND
        )
        for key, entry in raw.items()
    }
    report.add_table(
        "Best compression within the KL bound (no distillation) vs target ≤ 0.5",
        ["policy @ batch", "pipeline", "÷ fp32", "target ≤ 0.5 met"],
        [
            [k, spec, f"{ratio:.2f}", "yes" if ratio <= 0.5 else "no"]
            for k, (ratio, spec) in best.items()
        ],
    )
    report.add_note(
        f"auto mode ratios (must never exceed 1.0): {', '.join(f'{r:.2f}' for r in auto_ratios)}"
        f" — max {max(auto_ratios):.2f}."
    )
    report.add_note(
        "Wall time to a return threshold (compressed ÷ full actors, 3 seeds) is a long "
        "experiment and was not run here."
    )
    report.raw.update(raw)
    path = report.write()
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
