"""End-to-end smoke runs of the SEER recipes (slow: real environments)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))


@pytest.mark.slow
def test_atari_recipe_freezes_migrates_and_reports(tmp_path):
    import seer_atari

    report = seer_atari.main(
        [
            "--total-steps", "400",
            "--freeze-at", "200",
            "--learn-start", "100",
            "--buffer-size", "300",
            "--updates-per-batch", "2",
            "--latent-dtype", "int8",
            "--prioritized",
            "--save-encoder", str(tmp_path / "enc.pt"),
            "--out-dir", str(tmp_path),
        ]
    )  # fmt: skip
    text = report.read_text()
    assert "latent capacity c'" in text and (report.parent / "report.png").exists()
    assert (tmp_path / "enc.pt").exists()
    transfer = seer_atari.main(
        [
            "--game", "Breakout",
            "--total-steps", "200",
            "--freeze-at", "0",
            "--learn-start", "100",
            "--load-encoder", str(tmp_path / "enc.pt"),
            "--latent-capacity", "1000",
            "--out-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert "| learner updates before / after freeze | 0 /" in transfer.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_dmc_recipe_freezes_migrates_and_reports(tmp_path, autocast):
    import seer_dmc

    report = seer_dmc.main(
        [
            "--total-steps", "60",
            "--freeze-at", "40",
            "--learn-start", "20",
            "--buffer-size", "50",
            "--batch-size", "8",
            "--hidden", "32",
            "--num-copies", "2",
            "--autocast", autocast,
            "--out-dir", str(tmp_path),
        ]
    )  # fmt: skip
    assert "latent capacity c'" in report.read_text()


@pytest.mark.slow
def test_dmc_recipe_freeze_only_ablation_keeps_pixel_replay(tmp_path):
    import seer_dmc

    report = seer_dmc.main(
        [
            "--total-steps", "40",
            "--freeze-at", "25",
            "--learn-start", "15",
            "--buffer-size", "30",
            "--batch-size", "8",
            "--hidden", "32",
            "--no-curl",
            "--no-latent-replay",
            "--out-dir", str(tmp_path),
        ]
    )  # fmt: skip
    text = report.read_text()
    assert "| learner updates before / after freeze | 10 / 16 |" in text
    assert "latent capacity c'" not in text  # the buffer was not migrated
