"""The Atari rollout recipe at a tiny budget."""

import os
import subprocess
import sys

from _recipes import EXAMPLES, run_recipe


def test_rollout_recipe_reports_the_bytes_per_transition(tmp_path):
    report = run_recipe(
        "atari_rollout", "collector.total_frames=64", "collector.frames_per_batch=32",
        "logger.backend=null", f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    text = report.read_text()
    # two [4, 84, 84] uint8 stacks = 56,448 B of pixels per transition
    assert "(56,448 of them pixels)" in text
    assert "| transitions | 64 in" in text
    assert (report.parent / "frames.png").stat().st_size > 0


def test_command_line_takes_hydra_overrides(tmp_path):
    # the script entry point as a user runs it: hydra parses the overrides, nothing else written
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES.parent)}
    cmd = [
        sys.executable,
        str(EXAMPLES / "atari_rollout.py"),
        "collector.total_frames=32",
        "collector.frames_per_batch=32",
        "logger.backend=null",
        f"logger.output_dir={tmp_path}",
    ]
    subprocess.run(cmd, check=True, cwd=tmp_path, env=env, capture_output=True)  # fmt: skip
    (run_dir,) = tmp_path.iterdir()
    assert (run_dir / "report.md").exists() and (run_dir / "config.yaml").exists()
    bad = subprocess.run(
        [*cmd[:2], "collector.total_frames=-5", f"logger.output_dir={tmp_path / 'bad'}"],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert bad.returncode != 0 and "collector.total_frames must be > 0" in bad.stderr
    assert not (tmp_path / "bad").exists()
