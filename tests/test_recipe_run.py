"""RecipeRun: resumed runs log into their own folder and keep their saved configuration."""

import shutil

import pytest
from omegaconf import OmegaConf

from torchrl_seer.trainers.helpers import RecipeRun


def _config(output_dir, resume=None):
    return OmegaConf.create({
        "seed": 0, "resume": None if resume is None else str(resume), "device": "cpu",
        "threads": 1, "collector": {"total_frames": 10}, "checkpoint": {"interval": 5},
        "logger": {"backend": "csv", "output_dir": str(output_dir), "exp_name": "t",
                   "project_name": "p", "group_name": None},
    })  # fmt: skip


def _rows(run_dir):
    (csv,) = run_dir.glob("*/scalars/loss.csv")
    return csv.read_text().split()


def test_a_copied_run_folder_logs_into_the_copy_not_into_the_original(tmp_path):
    run = RecipeRun(_config(tmp_path / "a"), "recipe")
    run.log_scalar("loss", 1.0, step=5)
    run.save(5, state={})
    copy = tmp_path / "b" / run.dir.name
    shutil.copytree(run.dir, copy)
    resumed = RecipeRun(_config(tmp_path / "ignored", resume=copy), "recipe")
    assert resumed.restore(state={}) == (5, None)
    resumed.log_scalar("loss", 2.0, step=10)
    resumed.logger.flush()
    assert _rows(copy) == ["5,1.0", "10,2.0"]
    assert _rows(run.dir) == ["5,1.0"]  # the original run is left as it was


def test_a_run_saved_before_the_recipe_gained_a_setting_resumes_with_its_given_value(tmp_path):
    run = RecipeRun(_config(tmp_path), "recipe")
    run.save(5, state={})
    newer = _config(tmp_path, resume=run.dir)
    newer.seer = {"auto_min_step": 20_000}  # a setting added to the recipe since
    resumed = RecipeRun(newer, "recipe")
    assert resumed.cfg.seer.auto_min_step == 20_000
    changed = _config(tmp_path, resume=run.dir)
    changed.seed = 1  # a saved setting still cannot change
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        RecipeRun(changed, "recipe")


def test_a_setting_resolved_at_the_start_keeps_its_saved_value_on_resume(tmp_path):
    started = _config(tmp_path)
    started.parts = {"low_precision": False}  # "auto", resolved on the machine that started
    run = RecipeRun(started, "recipe", kept_on_resume=["parts.low_precision"])
    run.save(5, state={})
    elsewhere = _config(tmp_path, resume=run.dir)
    elsewhere.parts = {"low_precision": True}  # the same "auto" resolved on another machine
    resumed = RecipeRun(elsewhere, "recipe", kept_on_resume=["parts.low_precision"])
    assert resumed.cfg.parts.low_precision is False
    with pytest.raises(ValueError, match=r"parts\.low_precision: False -> True"):
        RecipeRun(elsewhere, "recipe")  # not declared resolved: a change, refused
