"""SEER recipes at a tiny budget: freeze, migration, report, checkpoint and resume."""

import re
from pathlib import Path

import pytest
import torch
from _recipes import (
    assert_same_checkpoints,
    recipe_config,
    run_recipe,
    run_stopped_after_checkpoint,
)

from torchrl_seer.modules import CURLPixelEncoder

ATARI_TINY = (
    "collector.total_frames=240", "seer.freeze_at=96", "optim.learn_start=48",
    "replay_buffer.size=200", "optim.batch_size=8", "optim.updates_per_batch=1",
    "logger.report_every=120",
)  # fmt: skip


def _run_dir(report: Path) -> Path:
    return report.parent


def test_atari_recipe_freezes_migrates_reports_and_saves_the_encoder(tmp_path):
    report = run_recipe(
        "seer_atari", *ATARI_TINY, "seer.latent_dtype=int8", "replay_buffer.prioritized=true",
        f"seer.save_encoder={tmp_path / 'enc.pt'}", f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    text = report.read_text()
    assert "latent capacity c'" in text and (report.parent / "report.png").exists()
    assert "Seeds: python 0, numpy 0, torch 0" in text
    assert list(report.parent.rglob("*.csv"))  # TorchRL CSV logger output
    transfer = run_recipe(
        "seer_atari", "env.name=Breakout", "collector.total_frames=64", "seer.freeze_at=0",
        "optim.learn_start=32", "optim.batch_size=8", "optim.updates_per_batch=1",
        f"seer.load_encoder={tmp_path / 'enc.pt'}", "seer.latent_capacity=1000",
        "logger.backend=null", f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    assert "| learner updates before / after freeze | 0 / 5 |" in transfer.read_text()


def test_atari_recipe_resumed_after_the_freeze_equals_an_uninterrupted_run(tmp_path):
    # checkpoint at 120 agent steps (frozen at 96, latent buffer), stopped, resumed to 240
    common = (*ATARI_TINY, "checkpoint.interval=120", "logger.backend=csv")
    full = run_recipe("seer_atari", *common, f"logger.output_dir={tmp_path / 'full'}")
    stopped = run_recipe(
        "seer_atari", *common, "collector.total_frames=120", f"logger.output_dir={tmp_path / 'cut'}"
    )
    assert "freeze step T_f (agent steps) | 96" in stopped.read_text()
    resumed = run_recipe(
        "seer_atari", *common, f"resume={stopped.parent}", f"logger.output_dir={tmp_path / 'cut'}"
    )
    assert resumed.parent == stopped.parent
    assert_same_checkpoints(full.parent / "checkpoint", resumed.parent / "checkpoint")
    assert resumed.read_text().split("## Configuration")[0].count("|") > 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("collector.total_frames=-5", "collector.total_frames must be > 0, got -5"),
        ("optim.batch_size=0", "optim.batch_size must be > 0, got 0"),
        ("env.name=Pongg", "env.name='Pongg' is not an ALE game. Did you mean"),
        ("seer.freeze_at=-1", "seer.freeze_at must be a step >= 0 or 'auto'"),
        ("logger.backend=visdom", "logger.backend must be one of"),
        ("checkpoint.interval=12", "must be a multiple of collector.frames_per_batch"),
    ],
)
def test_atari_recipe_refuses_bad_settings_before_creating_anything(tmp_path, override, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        run_recipe("seer_atari", override, f"logger.output_dir={tmp_path / 'runs'}")
    assert not (tmp_path / "runs").exists()


def test_resume_refuses_a_changed_setting(tmp_path):
    report = run_recipe(
        "seer_atari", "collector.total_frames=16", "optim.learn_start=1000",
        "logger.backend=null", f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"optim.lr: 0.0001 -> 0.5"):
        run_recipe("seer_atari", "optim.lr=0.5", f"resume={report.parent}",
                   f"logger.output_dir={tmp_path}")  # fmt: skip


def test_demo_config_is_the_recipe_config_with_a_shorter_run():
    demo = recipe_config("seer_atari", config_name="seer_atari_demo")
    full = recipe_config("seer_atari")
    assert demo.collector.total_frames == 6_000 and demo.seer.freeze_at == 2_000
    assert demo.optim.lr == full.optim.lr and demo.env.name == full.env.name


def test_transfer_recipe_runs_the_target_frozen_from_the_first_step(tmp_path):
    source, target = run_recipe(
        "seer_transfer", "source.total_frames=96", "source.freeze_at=48",
        "target.total_frames=48", "target.latent_capacity=500", "seed=3",
        "recipe_overrides=['optim.learn_start=32','optim.batch_size=8',"
        "'optim.updates_per_batch=1','replay_buffer.size=100']",
        "logger.backend=null", f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    assert (source.parents[2] / "seer_encoder_Pong.pt").is_file()
    assert source.parents[1].name == "source" and target.parents[1].name == "target"
    assert "Seeds: python 3" in target.read_text()
    assert "| learner updates before / after freeze | 0 / 3 |" in target.read_text()
    assert "| learner updates before / after freeze | 2 / 7 |" in source.read_text()


TRANSFER_TINY = (
    "source.total_frames=96", "source.freeze_at=48", "target.total_frames=96",
    "target.latent_capacity=500", "checkpoint.interval=48", "logger.backend=csv",
    "recipe_overrides=['optim.learn_start=32','optim.batch_size=8',"
    "'optim.updates_per_batch=1','replay_buffer.size=100']",
)  # fmt: skip


@pytest.mark.parametrize("stop_after", [1, 3], ids=["in-source", "in-target"])
def test_transfer_recipe_resumed_midway_equals_an_uninterrupted_run(
    tmp_path, monkeypatch, stop_after
):
    # checkpoints every 48 agent steps: saves 1-2 in the source run, 3-4 in the target run
    full_source, full_target = run_recipe(
        "seer_transfer", *TRANSFER_TINY, f"logger.output_dir={tmp_path / 'full'}"
    )
    saves = run_stopped_after_checkpoint(
        monkeypatch, stop_after, "seer_transfer", *TRANSFER_TINY,
        f"logger.output_dir={tmp_path / 'cut'}",
    )  # fmt: skip
    (transfer_dir,) = (tmp_path / "cut").iterdir()
    source, target = run_recipe(
        "seer_transfer", *TRANSFER_TINY, f"resume={transfer_dir}",
        f"logger.output_dir={tmp_path / 'elsewhere'}",
    )  # fmt: skip
    # the resumed run continued where it stopped: no interval was collected twice
    assert saves == [48, 96, 48, 96]
    assert source.parents[2] == target.parents[2] == transfer_dir
    assert_same_checkpoints(full_source.parent / "checkpoint", source.parent / "checkpoint")
    assert_same_checkpoints(full_target.parent / "checkpoint", target.parent / "checkpoint")
    encoder = "seer_encoder_Pong.pt"
    assert (transfer_dir / encoder).read_bytes() == (full_source.parents[2] / encoder).read_bytes()


def test_transfer_recipe_checks_the_target_game_before_the_source_run(tmp_path):
    with pytest.raises(ValueError, match=re.escape("env.name='Brekout' is not an ALE game")):
        run_recipe("seer_transfer", "target.env_name=Brekout", f"logger.output_dir={tmp_path}")
    assert not any(tmp_path.iterdir())


DMC_TINY = (
    "collector.total_frames=24", "seer.freeze_at=16", "optim.learn_start=8",
    "replay_buffer.size=20", "optim.batch_size=4", "network.hidden=16", "seer.num_copies=2",
    "logger.report_every=12",
)  # fmt: skip


@pytest.mark.parametrize("autocast", ["none", "bf16"])
def test_dmc_recipe_freezes_migrates_and_reports(tmp_path, autocast):
    report = run_recipe(
        "seer_dmc", *DMC_TINY, f"optim.autocast={autocast}", f"logger.output_dir={tmp_path}"
    )
    text = report.read_text()
    assert "latent capacity c'" in text
    assert "| learner updates before / after freeze | 8 / 9 |" in text
    assert "freeze at environment frame | 128" in text  # 16 agent steps x action repeat 8


def test_dmc_recipe_freeze_only_ablation_keeps_pixel_replay(tmp_path):
    report = run_recipe(
        "seer_dmc", *DMC_TINY, "loss.curl=false", "seer.latent_replay=false",
        "logger.backend=null", f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    text = report.read_text()
    assert "| learner updates before / after freeze | 8 / 9 |" in text
    assert "latent capacity c'" not in text  # the buffer was not migrated


def test_dmc_recipe_refuses_an_unknown_task_before_creating_anything(tmp_path):
    with pytest.raises(ValueError, match="Did you mean"):
        run_recipe("seer_dmc", "env.name=cartpole_swingupp", f"logger.output_dir={tmp_path}")
    assert not any(tmp_path.iterdir())


def test_dmc_recipe_auto_freeze_fires_and_records_the_encoder_trajectory(tmp_path):
    # checks every 4 agent steps from the first (1, 5, 9, ...); counted from step 12; any
    # change is below the bound, so the third counted check (21) fires
    report = run_recipe(
        "seer_dmc", *DMC_TINY, "seer.freeze_at=auto", "seer.auto_interval=4",
        "seer.auto_threshold=1e9", "seer.auto_min_step=12", "seer.record_trajectory=true",
        "logger.backend=null", f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    assert "freeze step T_f (agent steps) | 21" in report.read_text()
    trajectory = torch.load(report.parent / "encoder_trajectory.pt")
    assert trajectory["steps"] == [1, 5, 9, 13, 17, 21]
    assert trajectory["parameters"].shape[1] == sum(
        p.numel() for p in CURLPixelEncoder(9).frozen_part.parameters()
    )
    # updates start at step 8: the encoder stands still from 1 to 5, then moves
    moves = trajectory["parameters"].diff(dim=0).norm(dim=1)
    assert moves[0] == 0 and moves[1:].gt(0).all()


def test_dmc_recipe_refuses_a_bad_freeze_step(tmp_path):
    with pytest.raises(ValueError, match=re.escape("seer.freeze_at must be a step >= 0 or 'auto'")):
        run_recipe("seer_dmc", "seer.freeze_at=later", f"logger.output_dir={tmp_path}")
    assert not any(tmp_path.iterdir())


def test_dmc_recipe_resumed_equals_an_uninterrupted_run_and_keeps_its_trajectory(tmp_path):
    # no freeze, encoder recorded every 4 agent steps, a checkpoint every 12: stopped at 12 and
    # resumed to 24 with more frames (how a run is branched at a checkpoint)
    unfrozen = [o for o in DMC_TINY if not o.startswith("seer.freeze_at=")]
    common = (
        *unfrozen, "seer.freeze_at=1000", "seer.record_trajectory=true", "seer.auto_interval=4",
        "checkpoint.interval=12", "logger.backend=null",
    )  # fmt: skip
    full = run_recipe("seer_dmc", *common, f"logger.output_dir={tmp_path / 'full'}")
    assert "| learner updates before / after freeze | 17 / 0 |" in full.read_text()
    stopped = run_recipe(
        "seer_dmc", *common, "collector.total_frames=12", f"logger.output_dir={tmp_path / 'cut'}"
    )
    resumed = run_recipe("seer_dmc", *common, f"resume={stopped.parent}")
    assert resumed.parent == stopped.parent
    assert_same_checkpoints(full.parent / "checkpoint", resumed.parent / "checkpoint")
    kept = torch.load(resumed.parent / "encoder_trajectory.pt")
    reference = torch.load(full.parent / "encoder_trajectory.pt")
    assert kept["steps"] == reference["steps"] == [1, 5, 9, 13, 17, 21]
    assert torch.equal(kept["parameters"], reference["parameters"])
