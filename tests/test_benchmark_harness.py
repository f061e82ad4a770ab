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
    transfer = {"freeze_at": "0", "load_encoder": "/runs/roadrunner_s1_cnn.pt"}
    assert arm_name(transfer, {"freeze_step": 0}) == "transferred CNN roadrunner_s1_cnn T_f=0"
    assert (
        sorted([NO_FREEZE, arm_name(transfer, {"freeze_step": 0})], key=arm_order)[0] != NO_FREEZE
    )
    capped = {"freeze_at": "100000000", "pixel_capacity": 20_000}
    assert arm_name(capped, {}, 100_000) == "no freeze, pixel buffer 20,000"
    assert arm_name({**capped, "pixel_capacity": 100_000}, {}, 100_000) == NO_FREEZE
    seer = arm_name({"freeze_at": "50000", "pixel_capacity": 20_000}, {"freeze_step": 50_000})
    assert seer == "SEER T_f=50,000, pixel buffer 20,000"  # default None: always named
    full = "no freeze, pixel buffer 100,000"
    assert sorted([full, seer, "no freeze, pixel buffer 20,000"], key=arm_order) == [
        seer,
        "no freeze, pixel buffer 20,000",
        full,
    ]


def test_seer_parity_reads_atari_and_dmc_configs():
    from seer_benchmarks.parity_seer import frames_per_step, task_name

    atari = {"game": "Breakout", "total_steps": 100_000}
    assert task_name(atari) == "Breakout" and frames_per_step(atari) == 4
    dmc = {"domain": "cartpole", "task": "swingup", "action_repeat": None}
    assert task_name(dmc) == "cartpole_swingup" and frames_per_step(dmc) == 8  # PlaNet's
    assert frames_per_step({**dmc, "action_repeat": 2}) == 2


def test_lowprec_vs_torchrl_reads_both_kinds_of_run(tmp_path):
    from seer_benchmarks.lowprec_sac_vs_torchrl import (
        ms_per_step,
        read_ours,
        read_pairs,
        read_torchrl,
        speed_check_rows,
    )

    ours_run = tmp_path / "ours_s0" / "lowprec_sac_cartpole_swingup_x"
    ours_run.mkdir(parents=True)
    result = {"precision": "fp32", "curve": [[10, 5.0], [20, 9.0]], "steps": 20,
              "updates": 10, "seconds": 3.0, "eval_seconds": 1.0}  # fmt: skip
    (ours_run / "report.json").write_text(json.dumps({"runs": [result]}))
    scalars = tmp_path / "torchrl_s0" / "outputs" / "d" / "t" / "sac_logging" / "e" / "scalars"
    for name, text in {
        "eval/reward.csv": "10,4.0\n20,8.0\n",
        "time/collect.csv": "10,0.5\n20,0.5\n",
        "time/rb - extend.csv": "10,0.1\n20,0.1\n",
        "time/train.csv": "20,0.8\n",
    }.items():
        (scalars / name).parent.mkdir(parents=True, exist_ok=True)
        (scalars / name).write_text(text)

    [ours] = read_ours(tmp_path / "ours_s0")
    [theirs] = read_torchrl(tmp_path / "torchrl_s0")
    assert ours["arm"] == "ours, fp32" and ours["curve"] == [(10, 5.0), (20, 9.0)]
    assert ms_per_step(ours) == 100.0  # (3 s - 1 s of evaluation) over 20 steps
    assert theirs["curve"] == [(10, 4.0), (20, 8.0)] and theirs["steps"] == 20
    assert abs(ms_per_step(theirs) - 100.0) < 1e-9  # (0.5 + 0.5 + 0.1 + 0.1 + 0.8) s over 20
    [row] = speed_check_rows(read_pairs(tmp_path))
    assert row[:3] == [0, "ours, fp32", "20 / 20"] and row[5] == 1.0
    assert row[6:] == ["9 at 20", "8 at 20"]


def test_lowprec_vs_torchrl_times_only_runs_of_one_machine():
    from seer_benchmarks.lowprec_sac_vs_torchrl import (
        SPEED_CHECK,
        TORCHRL_ARM,
        earlier_speed_checks,
        imported_pairs,
        labelled,
        merged,
        paired_reference,
    )

    def arm(name, seconds):
        return {"arm": name, "curve": [[20, 1.0]], "steps": 20, "updates": 10,
                "train_seconds": seconds}  # fmt: skip

    earlier_runs = {"0": [arm("ours, fp32", 2.0), arm(TORCHRL_ARM, 1.0)]}
    # the wording of an older page's own check
    speed_check = {"title": f"{SPEED_CHECK}: shorter runs of both at once, our recipe as of this "
                   "commit (CPU A)", "columns": ["seed"], "rows": [[0]]}  # fmt: skip
    # records go through JSON as the page writes them
    record = json.loads(json.dumps({
        "machine": {"cpu": "CPU A", "commit": "abc1234"}, "raw": {"runs": earlier_runs},
        "tables": [{"title": "Every run", "columns": [], "rows": []}, speed_check],
    }))  # fmt: skip
    [kept] = earlier_speed_checks(record)
    assert kept["rows"] == [[0]] and "commit abc1234 (CPU A" in kept["title"]
    # a record made with imports keeps the titles and origins of what it imported
    regenerated = json.loads(json.dumps({
        "machine": {"cpu": "CPU B", "commit": "def5678"},
        "raw": {"runs": {"0": [dict(arm(TORCHRL_ARM, 1.0), imported_from="earlier.json")]}},
        "tables": [kept],
    }))  # fmt: skip
    assert earlier_speed_checks(regenerated) == [kept]
    # the same runs given again as the new page's check are not kept twice
    assert earlier_speed_checks(regenerated, fresh_rows=[[0]]) == []
    assert imported_pairs(regenerated, "regenerated.json")[0][0]["imported_from"] == "earlier.json"
    earlier = imported_pairs(record, "earlier.json")
    assert {a["machine"] for a in earlier[0]} == {"CPU A"}
    fresh = {0: [dict(arm("ours, bf16", 3.0), machine="CPU B")],
             1: [dict(arm("ours, bf16", 3.0), machine="CPU B")]}  # fmt: skip
    runs = merged(fresh, earlier)
    assert [a["arm"] for a in runs[0]] == ["ours, fp32", TORCHRL_ARM, "ours, bf16"]
    fp32, torchrl, bf16 = runs[0]
    assert paired_reference(fp32, runs[0]) is torchrl  # same record, same machine
    assert paired_reference(bf16, runs[0]) is None  # another machine: no time ratio
    assert paired_reference(torchrl, runs[0]) is None
    # a labelled arm stands beside the imported one of its precision
    beside = merged(labelled({0: [dict(arm("ours, fp32", 5.0), machine="CPU B"),
                                  dict(arm(TORCHRL_ARM, 4.0), machine="CPU B")]}, "new optimizer"),
                    earlier)  # fmt: skip
    assert sorted(a["arm"] for a in beside[0]) == [TORCHRL_ARM, "ours, fp32",
                                                   "ours, fp32, new optimizer"]  # fmt: skip
    # an arm run again replaces the imported one of its seed
    again = merged({0: [dict(arm("ours, fp32", 5.0), machine="CPU B")]}, earlier)
    assert [(a["arm"], a["train_seconds"]) for a in again[0]] == [
        (TORCHRL_ARM, 1.0),
        ("ours, fp32", 5.0),
    ]


def _layout_report(width, workers, walls):
    settings = {"width": width, "critic_width": 64, "envs_per_worker": 1, "seed": 0,
                "frames_per_batch": 256, "workers": workers, "overlap": True}  # fmt: skip
    runs = [
        {"frames": 1024, "wall": wall, "actor_time": 1.0, "learner_time": 2.0,
         "curve": [[wall, 1024, 20.0]]}
        for wall in walls
    ]  # fmt: skip
    return {"settings": settings, "runs": runs}


def test_accerl_layouts_gives_each_arm_its_fastest_layout():
    from seer_benchmarks.accerl_layouts import best_layout_rows, layout_rows

    reports = [
        _layout_report(2048, 1, (30.0, 50.0)),  # compressed fastest with 1 worker
        _layout_report(2048, 2, (33.0, 40.0)),  # fp32 fastest with 2 workers
        _layout_report(4096, 1, (70.0, 90.0)),
    ]
    rows = layout_rows(reports)
    assert [row[7] for row in rows] == [0.6, 0.82, 0.78]  # same-layout ratios
    assert rows[0][10] == "29.30 / 48.83"  # ms per worker call: wall / (1024 frames / 1)
    best = best_layout_rows(reports)
    assert best == [
        [2048, 1, 1024, 2, "30.0 (1 worker)", "40.0 (2 workers)", 0.75],
        [4096, 1, 1024, 1, "70.0 (1 worker)", "90.0 (1 worker)", 0.78],
    ]


def _distilling_arm(levels_and_kls, events, frames=2048, curve=((10.0, 512, 50.0),)):
    history = []
    for step, (level, kl) in enumerate(levels_and_kls, start=1):
        entry = {"step": 256.0 * step, "monitor/level": float(level), "monitor/kl": 1e-4}
        if level == 0:
            entry["monitor/kl"] = kl
        else:
            entry["monitor/kl_more_compressed"] = kl
        history.append(entry)
    return {"monitor_history": history, "monitor_events": events, "frames": frames,
            "curve": [list(point) for point in curve], "wall": 20.0, "learner_time": 5.0,
            "distillation": {"updates": 40, "publications": 3}}  # fmt: skip


def test_accerl_distillation_reads_the_student_from_the_monitor():
    from seer_benchmarks.accerl_distillation import seed_rows, student_frames, student_kl

    up = {"step": 1024, "direction": "up", "from": "int8+trace", "to": "distill+int8+trace"}
    down = {"step": 1536, "direction": "down", "from": "distill+int8+trace", "to": "int8+trace"}
    arm = _distilling_arm([(1, 0.3), (1, 0.005), (0, 0.004), (0, 0.05), (1, 0.2)], [up, down])
    # the student is the candidate at level 1 and the acting policy at level 0
    assert student_kl(arm) == [(256.0, 0.3, False), (512.0, 0.005, False), (768.0, 0.004, True),
                               (1024.0, 0.05, True), (1280.0, 0.2, False)]  # fmt: skip
    assert student_frames(arm) == 512  # from the move up at 1,024 to the move down at 1,536
    assert student_frames({**arm, "monitor_events": [up]}) == 2048 - 1024  # still acting
    assert student_frames({**arm, "monitor_events": []}) == 0

    fp32 = {"curve": [[20.0, 512, 150.0]], "wall": 30.0, "learner_time": 4.0}
    config = {"accerl": {"distill_updates_per_batch": 8}}
    report = {"settings": {"seed": 0}, "config": config, "runs": [
        {**arm, "curve": [[8.0, 512, 120.0]] * 5}, {**fp32, "curve": [[12.0, 512, 120.0]] * 5},
    ]}  # fmt: skip
    best = {0: {**fp32, "curve": [[16.0, 512, 120.0]] * 5}}
    students, times, ratios = seed_rows([report], best, threshold=100.0, bound=0.02)
    assert students == [["8 per batch", 0, 40, 3, 5, 2, 0.05, 0.004, "512 of 2,048"]]
    # against the fp32 layout that got there first (1 worker here: 12 s)
    assert times[0][:7] == ["8 per batch", 0, 8.0, 12.0, 16.0, 0.67, 0.67]
    assert ratios == {"8 per batch": [8.0 / 12.0]}
    best[0]["curve"] = [[40.0, 512, 50.0]] * 5  # fp32 with 2 workers never reaches 100
    assert seed_rows([report], best, threshold=100.0, bound=0.02)[1][0][4] == "not reached"
    config["accerl"]["distill_updates_per_batch"] = None
    assert seed_rows([report], best, threshold=100.0, bound=0.02)[0][0][0] == "unpaced"


def test_parity_seer_reimports_runs_that_already_name_their_buffer(tmp_path):
    from seer_benchmarks.parity_seer import RECIPES, imported_runs

    record = tmp_path / "page.json"
    record.write_text(json.dumps({"raw": {"runs": [
        {"task": "Krull", "seed": 0, "arm": "no freeze, pixel buffer 20,000"},
        {"task": "Krull", "seed": 0, "arm": "no freeze"},
        {"task": "Krull", "seed": 1, "arm": "no freeze"},
    ]}}))  # fmt: skip
    runs = imported_runs(record, ["Krull:0"], 20_000, RECIPES["atari_capped"])
    assert [run["arm"] for run in runs] == [
        "no freeze, pixel buffer 20,000",
        "no freeze, pixel buffer 20,000",
    ]
    assert all(run["frames_per_step"] == 4 for run in runs)
