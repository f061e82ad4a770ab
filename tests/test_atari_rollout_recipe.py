"""The Atari rollout recipe at a tiny budget."""

from _recipes import run_recipe


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
