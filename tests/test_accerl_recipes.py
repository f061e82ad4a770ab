"""AcceRL recipes: the time-to-threshold report and tiny runs of both recipes."""

import json

import pytest
from _recipes import assert_same_checkpoints, run_recipe, run_stopped_after_checkpoint

from torchrl_seer.trainers.helpers.accerl import time_to_threshold, write_accerl_report


def _arm(label, curve):
    return dict(
        label=label,
        curve=curve,
        wall=curve[-1][0] if curve else 1.0,
        actor_share=0.5,
        actor_time=0.5,
        learner_time=0.5,
        frames=100,
        compression=label,
        final_pipeline=label,
        monitor_events=[],
    )


def test_time_to_threshold_uses_the_window_mean():
    # a single lucky 200 at t=2 does not count with window 3; the mean reaches 150 at t=5
    curve = [(1.0, 10, 10.0), (2.0, 20, 200.0), (3.0, 30, 20.0), (4.0, 40, 150.0),
             (5.0, 50, 280.0), (6.0, 60, 300.0)]  # fmt: skip
    assert time_to_threshold(curve, 150.0, window=3) == 5.0
    assert time_to_threshold(curve, 150.0, window=1) == 2.0
    assert time_to_threshold(curve, 1000.0, window=3) is None
    assert time_to_threshold(curve[:2], 0.0, window=3) is None  # fewer points than the window


def test_report_gives_the_ratio_and_saves_results(tmp_path):
    # the report averages the last 5 logged returns: reached at the 5th point of each arm
    compressed = _arm("int8", [(t, 10 * t, 100.0) for t in (1.0, 2.0, 3.0, 4.0, 5.0)])
    full = _arm("fp32", [(t, 10 * t, 100.0) for t in (2.0, 4.0, 6.0, 8.0, 10.0)])
    report = write_accerl_report(
        [compressed, full], tmp_path, title="t", threshold=100.0, config={"seed": 3}
    )
    text = report.read_text()
    assert "Time to return 100, compressed ÷ full: 0.500" in text
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["threshold"] == 100.0 and saved["config"] == {"seed": 3}
    assert [r["time_to_threshold"] for r in saved["runs"]] == [5.0, 10.0]
    assert (tmp_path / "report.png").stat().st_size > 0


def test_report_says_not_reached(tmp_path):
    compressed = _arm("int8", [(1.0, 10, 50.0)])
    full = _arm("fp32", [(1.0, 10, 50.0)])
    text = write_accerl_report([compressed, full], tmp_path, title="t", threshold=100.0)
    assert "not reached" in text.read_text() and "compressed ÷ full" not in text.read_text()


def test_impala_recipe_with_batched_actors_reports_time_to_threshold(tmp_path):
    report = run_recipe(
        "accerl_impala", "accerl.compression=int8", "collector.workers=0",
        "env.envs_per_worker=2", "network.width=32", "collector.total_frames=1024",
        "collector.frames_per_batch=128", "accerl.threshold=5", f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    saved = json.loads((report.parent / "report.json").read_text())
    assert saved["config"]["accerl"]["compression"] == "int8"
    compressed, full = saved["runs"]
    assert compressed["final_pipeline"] == "int8" and full["final_pipeline"] == "fp32"
    assert compressed["frames"] == full["frames"] == 1024
    # CartPole pays 1 per step: every logged return is >= 5 by construction
    assert compressed["time_to_threshold"] is not None and full["time_to_threshold"] is not None
    assert list(report.parent.rglob("episode_return.csv"))


def test_sac_recipe_runs_and_reports(tmp_path):
    report = run_recipe(
        "accerl_sac", "accerl.compression=bf16", "collector.workers=0",
        "collector.total_frames=300", "collector.frames_per_batch=100", "optim.learn_start=200",
        "optim.updates_per_batch=2", "network.width=32", "accerl.threshold=-2000",
        "logger.backend=null", f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    saved = json.loads((report.parent / "report.json").read_text())
    assert [r["final_pipeline"] for r in saved["runs"]] == ["bf16", "fp32"]
    assert "time to threshold" in report.read_text()


@pytest.mark.parametrize(
    "override, message",
    [
        ("checkpoint.interval=150", "must be a multiple of collector.frames_per_batch"),
        ("device=cuda", "the AcceRL recipes run on the CPU only"),
        ("collector.workers=-1", "collector.workers must be >= 0, got -1"),
    ],
)
def test_accerl_recipes_refuse_before_creating_anything(tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        run_recipe("accerl_sac", override, f"logger.output_dir={tmp_path}")
    assert not any(tmp_path.iterdir())


def _stopped_then_resumed(recipe, common, tmp_path, monkeypatch, stop_after):
    """Runs ``recipe`` stopped after its ``stop_after``-th checkpoint, then resumes it.

    Returns the report of the resumed run, the frames of every checkpoint taken and the
    report that the stopped run had written.
    """
    saves = run_stopped_after_checkpoint(
        monkeypatch, stop_after, recipe, *common, f"logger.output_dir={tmp_path / 'cut'}"
    )
    (run_dir,) = (tmp_path / "cut").iterdir()
    written = json.loads((run_dir / "report.json").read_text())
    resumed = run_recipe(
        recipe, *common, f"resume={run_dir}", f"logger.output_dir={tmp_path / 'elsewhere'}"
    )
    assert resumed.parent == run_dir
    return resumed, saves, written


def _assert_same_runs(report_a, report_b):
    """Two reports hold the same arms: frames, compression, Monitor events, returns."""
    runs_a = json.loads(report_a.read_text())["runs"]
    runs_b = json.loads(report_b.read_text())["runs"]
    assert len(runs_a) == len(runs_b) == 2
    for a, b in zip(runs_a, runs_b, strict=True):
        for key in ("label", "frames", "compression", "final_pipeline", "monitor_events"):
            assert a[key] == b[key], key
        assert [point[1:] for point in a["curve"]] == [point[1:] for point in b["curve"]]


IMPALA_RESUME = (
    "accerl.compression=int8", "collector.workers=0", "network.width=32",
    "collector.total_frames=1024", "collector.frames_per_batch=128", "accerl.ship_every=3",
    "accerl.monitor_every=3", "checkpoint.interval=256", "logger.report_every=256",
    "logger.backend=csv",
)  # fmt: skip


@pytest.mark.parametrize("stop_after", [2, 6], ids=["compressed-arm", "full-arm"])
def test_impala_recipe_resumed_midway_equals_an_uninterrupted_run(
    tmp_path, monkeypatch, stop_after
):
    # 8 batches per arm, a checkpoint every 2, weights shipped every 3: the actors' packet at
    # a checkpoint is older than the learner's weights
    full = run_recipe("accerl_impala", *IMPALA_RESUME, f"logger.output_dir={tmp_path / 'full'}")
    resumed, saves, written = _stopped_then_resumed(
        "accerl_impala", IMPALA_RESUME, tmp_path, monkeypatch, stop_after
    )
    assert saves == [256, 512, 768, 1024] * 2  # nothing collected twice
    # the stopped run had written its report at every 256 frames
    assert written["runs"][-1]["frames"] == 512
    assert_same_checkpoints(full.parent / "checkpoint", resumed.parent / "checkpoint")
    _assert_same_runs(full.parent / "report.json", resumed.parent / "report.json")


SAC_RESUME = (
    "accerl.compression=bf16", "collector.workers=0", "network.width=32",
    "collector.total_frames=400", "collector.frames_per_batch=100", "optim.learn_start=100",
    "optim.updates_per_batch=2", "optim.batch_size=8", "accerl.ship_every=3",
    "checkpoint.interval=200", "logger.report_every=100", "logger.backend=null",
)  # fmt: skip


@pytest.mark.parametrize("stop_after", [1, 3], ids=["compressed-arm", "full-arm"])
def test_sac_recipe_resumed_midway_equals_an_uninterrupted_run(tmp_path, monkeypatch, stop_after):
    # the replay buffer (sequences across two checkpoint intervals) is saved and restored
    full = run_recipe("accerl_sac", *SAC_RESUME, f"logger.output_dir={tmp_path / 'full'}")
    resumed, saves, _ = _stopped_then_resumed(
        "accerl_sac", SAC_RESUME, tmp_path, monkeypatch, stop_after
    )
    assert saves == [200, 400] * 2
    assert_same_checkpoints(full.parent / "checkpoint", resumed.parent / "checkpoint")
    _assert_same_runs(full.parent / "report.json", resumed.parent / "report.json")


@pytest.mark.slow
def test_impala_recipe_with_worker_processes(tmp_path):
    report = run_recipe(
        "accerl_impala", "accerl.compression=int8", "collector.workers=2", "network.width=32",
        "collector.total_frames=1024", "collector.frames_per_batch=256", "accerl.compare=false",
        f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    saved = json.loads((report.parent / "report.json").read_text())
    assert saved["seeds"]["workers"] == [0, 1000]
    assert saved["runs"][0]["frames"] == 1024
