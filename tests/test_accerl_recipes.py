"""AcceRL recipes: the time-to-threshold report and end-to-end smoke runs (slow)."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

from accerl_common import time_to_threshold, write_accerl_report


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
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["threshold"] == 100.0 and saved["config"] == {"seed": 3}
    assert [r["time_to_threshold"] for r in saved["runs"]] == [5.0, 10.0]
    assert (tmp_path / "return_vs_wall_time.png").stat().st_size > 0


def test_report_says_not_reached(tmp_path):
    compressed = _arm("int8", [(1.0, 10, 50.0)])
    full = _arm("fp32", [(1.0, 10, 50.0)])
    text = write_accerl_report([compressed, full], tmp_path, title="t", threshold=100.0)
    assert "not reached" in text.read_text() and "compressed ÷ full" not in text.read_text()


@pytest.mark.slow
def test_impala_recipe_with_batched_actors_reports_time_to_threshold(tmp_path):
    import accerl_impala

    report = accerl_impala.main(
        [
            "--compression", "int8", "--workers", "0", "--envs-per-worker", "2",
            "--width", "32", "--frames", "1024", "--frames-per-batch", "128",
            "--threshold", "5", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    saved = json.loads((report.parent / "results.json").read_text())
    assert saved["config"]["compression"] == "int8" and saved["config"]["envs_per_worker"] == 2
    compressed, full = saved["runs"]
    assert compressed["final_pipeline"] == "int8" and full["final_pipeline"] == "fp32"
    assert compressed["frames"] == full["frames"] == 1024
    # CartPole pays 1 per step: every logged return is >= 5 by construction
    assert compressed["time_to_threshold"] is not None and full["time_to_threshold"] is not None


@pytest.mark.slow
def test_sac_recipe_runs_and_reports(tmp_path):
    import accerl_sac

    report = accerl_sac.main(
        [
            "--compression", "bf16", "--workers", "0", "--frames", "400",
            "--frames-per-batch", "100", "--init-frames", "200", "--updates-per-batch", "2",
            "--width", "32", "--threshold", "-2000", "--out", str(tmp_path),
        ]
    )  # fmt: skip
    saved = json.loads((report.parent / "results.json").read_text())
    assert [r["final_pipeline"] for r in saved["runs"]] == ["bf16", "fp32"]
    assert "time to threshold" in report.read_text()
