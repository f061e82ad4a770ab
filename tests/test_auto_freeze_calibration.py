"""The freeze_at=auto calibration page: bounds from one recorded run, checked on held-out runs."""

import json

import pytest
import torch
from torch import nn

from seer_benchmarks import seer_auto_freeze_calibration as calibration


def record_run(folder, *, seed, sizes, learn_start=2, game="Pong", recipe="seer_atari"):
    """A fake recorded run: the encoder moved by ``sizes[i]`` (relative) from check i-1 to i."""
    encoder = calibration.RECIPES[recipe].encoder()
    params = nn.utils.parameters_to_vector(encoder.frozen_part.parameters())
    gen = torch.Generator().manual_seed(seed)
    snapshots = [params.detach().clone()]
    for size in sizes:
        move = torch.randn(params.shape, generator=gen)
        snapshots.append(snapshots[-1] + size * snapshots[-1].norm() * move / move.norm())
    steps = [10 * i for i in range(len(snapshots))]
    folder.mkdir(parents=True)
    torch.save(
        {"steps": steps, "parameters": torch.stack(snapshots)}, folder / "encoder_trajectory.pt"
    )
    config = {
        "env": {"name": game}, "seed": seed, "optim": {"learn_start": learn_start},
        "collector": {"total_frames": steps[-1]},
    }  # fmt: skip
    (folder / "report.json").write_text(json.dumps({"config": config}))
    (folder / "run.json").write_text(json.dumps({"exp_name": f"{recipe}_{game}_1a2b3c4d"}))
    return folder


def test_bounds_come_from_the_calibration_run_and_are_replayed_on_held_out_runs(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(
        calibration, "probe_batch", lambda recipe, game, num, seed: torch.rand(num, 4, 84, 84)
    )
    decay = [0.02, 0.2, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03, 0.03, 0.03, 0.02, 0.02]
    calibration_run = record_run(tmp_path / "seed0", seed=0, sizes=decay)
    # a held-out run that creeps before it learns: an absolute bound fires in the creep
    creeping = record_run(tmp_path / "seed1", seed=1, sizes=[0.01, 0.01, 0.01, *decay[1:]])
    report = calibration.calibrate(
        calibration_run, safe_step=80, probe_size=2, out_dir=tmp_path / "page",
        validate=(creeping,), earliest_step=50,
    )  # fmt: skip
    bounds = report.raw["bounds"]
    # the calibrated bound is the largest of the last checks: it fires one check later
    assert bounds["relative_change"]["fires_at"] == 90
    assert bounds["relative_change"]["fires_at_from_earliest_step"] == 90
    (held_out,) = report.raw["held_out"]
    assert held_out["seed"] == 1 and held_out["last_step"] == 140
    assert held_out["fires_at"]["relative_change"] == 30  # three creeping checks
    # not counting checks before step 50, it fires in the decay (20 steps later than seed 0's)
    assert 90 <= held_out["fires_at_from_earliest_step"]["relative_change"] <= 110
    page = report.write().read_text()
    assert "Held-out runs: where the calibrated bounds fire" in page
    assert "calibrated, from step 50" in page
    assert (tmp_path / "page" / f"{calibration.PAGE}.png").exists()


def test_a_held_out_run_of_another_game_is_probed_with_its_own_frames(tmp_path, monkeypatch):
    probed = []

    def probe_batch(recipe, game, num, seed):
        probed.append(game)
        return torch.rand(num, 4, 84, 84, generator=torch.Generator().manual_seed(len(game)))

    monkeypatch.setattr(calibration, "probe_batch", probe_batch)
    decay = [0.2, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03]
    calibration_run = record_run(tmp_path / "pong", seed=0, sizes=decay)
    other_game = record_run(tmp_path / "krull", seed=0, sizes=decay, game="Krull")
    report = calibration.calibrate(
        calibration_run, safe_step=50, probe_size=2, out_dir=tmp_path / "page",
        validate=(other_game,),
    )  # fmt: skip
    assert probed == ["Pong", "Krull"]
    (held_out,) = report.raw["held_out"]
    assert held_out["game"] == "Krull"
    assert "| Krull, seed 0 |" in report.write().read_text()


def test_a_dmc_run_is_probed_with_its_renders_and_writes_its_own_page(tmp_path):
    decay = [0.2, 0.1, 0.08, 0.06, 0.05, 0.04, 0.03]
    run = record_run(tmp_path / "dmc", seed=0, sizes=decay, game="cartpole_swingup",
                     recipe="seer_dmc")  # fmt: skip
    report = calibration.calibrate(run, safe_step=50, probe_size=4, out_dir=tmp_path / "page")
    page = report.write()
    assert page.name == "seer_auto_freeze_calibration_dmc.md"
    assert "The encoder of `examples/seer_dmc.py` (cartpole_swingup, seed 0" in page.read_text()
    drift = report.raw["latent_drift"]  # measured with the CURL encoder on 84x84 centre crops
    assert drift[-1] == 0 and all(d > 0 for d in drift[:-1])


def test_held_out_runs_of_another_recipe_and_runs_of_other_recipes_are_refused(tmp_path):
    atari = record_run(tmp_path / "atari", seed=0, sizes=[0.1, 0.1, 0.1])
    dmc = record_run(tmp_path / "dmc", seed=0, sizes=[0.1, 0.1, 0.1], game="cartpole_swingup",
                     recipe="seer_dmc")  # fmt: skip
    with pytest.raises(ValueError, match="calibration run is a seer_atari run"):
        calibration.calibrate(
            atari, safe_step=20, probe_size=2, out_dir=tmp_path / "page", validate=(dmc,)
        )
    (dmc / "run.json").write_text(json.dumps({"exp_name": "composed_sac_dmc_cartpole_1a2b"}))
    with pytest.raises(ValueError, match="expected a run of one of"):
        calibration.RecordedRun.load(dmc)
