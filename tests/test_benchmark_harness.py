"""The benchmark harness: report files, timing and the frame-stacking dataset helper."""

import json

import torch

from seer_benchmarks.datasets import stack_frames
from seer_benchmarks.harness import BenchmarkReport, interleaved_timings, time_call
from torchrl_seer.envs import make_atari_env


def _rollout(frame_stack):
    env = make_atari_env("Pong", frame_stack=frame_stack, max_episode_steps=7, seed=5)
    torch.manual_seed(0)
    return env.rollout(30, break_when_any_done=False)


def test_stack_frames_matches_catframes_across_resets():
    single = _rollout(1)
    stacked = _rollout(4)
    assert single["next", "truncated"].sum() >= 3  # several episode boundaries
    rebuilt = stack_frames(single, 4)
    assert torch.equal(rebuilt["pixels"], stacked["pixels"])
    assert torch.equal(rebuilt["next", "pixels"], stacked["next", "pixels"])


def test_report_writes_json_markdown_and_index(tmp_path):
    report = BenchmarkReport("unit", "Unit benchmark", description="what", out_dir=tmp_path)
    report.add_table(
        "Sizes", ["storage", "bytes", "ratio"], [["lazy", 1000, 1.0], ["ours", 10, 0.01]]
    )
    report.add_note("a note")
    report.raw["extra"] = [1, 2]
    page = report.write()
    text = page.read_text()
    assert "| lazy | 1,000 | 1.000 |" in text
    assert "torchrl 0.14.1" in text
    record = json.loads((tmp_path / "unit.json").read_text())
    assert record["raw"]["extra"] == [1, 2]
    assert record["machine"]["cores"] >= 1
    assert "[Unit benchmark](unit.md)" in (tmp_path / "index.md").read_text()


def test_timings_take_medians():
    calls = []
    timing = time_call(lambda: calls.append(1), repeats=5, warmup=2)
    assert len(calls) == 7 and len(timing.seconds) == 5
    assert timing.median >= 0
    both = interleaved_timings({"a": lambda: None, "b": lambda: None}, repeats=3, warmup=1)
    assert set(both) == {"a", "b"} and len(both["a"].seconds) == 3


def test_seer_parity_names_and_orders_arms():
    from seer_benchmarks.parity_seer import AUTO, NO_FREEZE, arm_name, arm_order

    fixed = arm_name({"freeze_at": "50000"}, {"freeze_step": 50_000})
    assert fixed == "SEER T_f=50,000"
    assert arm_name({"freeze_at": "auto"}, {"freeze_step": 31_000}) == AUTO
    assert arm_name({"freeze_at": "auto"}, {}) == AUTO  # the criterion never fired
    assert arm_name({"freeze_at": "100000000"}, {}) == NO_FREEZE
    ablation = arm_name({"freeze_at": "20000", "latent_replay": False}, {"freeze_step": 20_000})
    assert ablation == "freeze, pixel replay T_f=20,000"
    arms = [NO_FREEZE, AUTO, fixed, ablation, "SEER T_f=20,000"]
    assert sorted(arms, key=arm_order) == ["SEER T_f=20,000", ablation, fixed, AUTO, NO_FREEZE]


def test_seer_parity_reads_atari_and_dmc_configs():
    from seer_benchmarks.parity_seer import frames_per_step, task_name

    atari = {"game": "Breakout", "total_steps": 100_000}
    assert task_name(atari) == "Breakout" and frames_per_step(atari) == 4
    dmc = {"domain": "cartpole", "task": "swingup", "action_repeat": None}
    assert task_name(dmc) == "cartpole_swingup" and frames_per_step(dmc) == 8  # PlaNet's
    assert frames_per_step({**dmc, "action_repeat": 2}) == 2
