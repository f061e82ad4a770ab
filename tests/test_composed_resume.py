"""The composed recipes checkpoint and resume; their parts are placed by device."""

from __future__ import annotations

import json

import pytest
import torch

from tests._recipes import (
    assert_same_checkpoints,
    load_recipe,
    recipe_config,
    run_recipe,
    run_stopped_after_checkpoint,
)
from tests.test_composed_recipes import DQN_TINY, SAC_TINY
from torchrl_seer.data import QuantizedStorage

# recipe -> (tiny budget with a checkpoint every 2 batches, checkpoint frames, freeze step).
# The latent capacity is not capped: it comes from the bytes the pixel storage holds at the
# freeze, which a resumed run must reproduce exactly.
RESUME = {
    "composed_dqn_atari": (
        (*DQN_TINY, "checkpoint.interval=32"),
        [32, 64, 96],
        64,
    ),
    "composed_sac_dmc": (
        (*SAC_TINY, "checkpoint.interval=16"),
        [16, 32, 48],
        32,
    ),
}
EXACT = ("collector.workers=0", "logger.backend=csv")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """One uninterrupted run of each recipe (in-process actors), computed once."""
    runs = {}

    def run(recipe):
        if recipe not in runs:
            budget, _, _ = RESUME[recipe]
            out = tmp_path_factory.mktemp(f"{recipe}_full")
            runs[recipe] = run_recipe(recipe, *budget, *EXACT, f"logger.output_dir={out}")
        return runs[recipe]

    return run


def _stopped_then_resumed(recipe, overrides, stop_after, tmp_path, monkeypatch):
    saves = run_stopped_after_checkpoint(
        monkeypatch, stop_after, recipe, *overrides, f"logger.output_dir={tmp_path / 'cut'}"
    )
    (run_dir,) = (tmp_path / "cut").iterdir()
    resumed = run_recipe(
        recipe, *overrides, f"resume={run_dir}", f"logger.output_dir={tmp_path / 'elsewhere'}"
    )
    assert resumed.report.parent == run_dir
    return resumed, saves


@pytest.mark.parametrize("stop_after", [1, 2], ids=["before-freeze", "after-freeze"])
@pytest.mark.parametrize("recipe", sorted(RESUME))
def test_a_run_resumed_midway_equals_an_uninterrupted_run(
    recipe, stop_after, uninterrupted, tmp_path, monkeypatch
):
    budget, checkpoints, freeze_at = RESUME[recipe]
    full = uninterrupted(recipe)
    resumed, saves = _stopped_then_resumed(
        recipe, (*budget, *EXACT), stop_after, tmp_path, monkeypatch
    )
    assert saves == checkpoints  # the stopped run's, then the resumed run's: none twice
    stopped_frozen = checkpoints[stop_after - 1] >= freeze_at
    assert stopped_frozen == (stop_after == 2)

    # the same parameters, optimizer and hook states, records, generators and replay buffer
    assert_same_checkpoints(full.report.parent / "checkpoint", resumed.report.parent / "checkpoint")
    assert resumed.freeze_hook.frozen and full.freeze_hook.frozen
    assert resumed.freeze_hook.freeze_report["freeze_step"] == freeze_at
    rb_full, rb_resumed = full.replay_buffer, resumed.replay_buffer
    assert isinstance(rb_resumed.storage, QuantizedStorage)
    # the latent capacity sized at the freeze from the pixel storage's bytes is the same
    assert rb_resumed.storage.max_size == rb_full.storage.max_size
    assert len(rb_full) == len(rb_resumed) > 0
    length = len(rb_full)  # the stored transitions (reads through the buffer draw latent copies)
    assert (rb_full.storage[:length] == rb_resumed.storage[:length]).all()
    assert full.record.returns == resumed.record.returns
    assert [r[::2] for r in full.record.replay] == [r[::2] for r in resumed.record.replay]

    # the report covers the whole run: the freeze, and every episode
    report = json.loads((resumed.report.parent / "report.json").read_text())
    assert report["summary"]["agent_steps"] == checkpoints[-1]
    assert report["freeze"]["freeze_step"] == freeze_at
    assert report["actors"]["compression"] == "int8"


@pytest.mark.parametrize("recipe", sorted(RESUME))
def test_a_run_with_worker_processes_resumes_and_finishes(recipe, tmp_path, monkeypatch):
    budget, checkpoints, _ = RESUME[recipe]
    overrides = (*budget, "collector.workers=1", "logger.backend=null")
    resumed, saves = _stopped_then_resumed(recipe, overrides, 1, tmp_path, monkeypatch)
    assert saves == checkpoints
    assert resumed.record.steps == checkpoints[-1]
    assert resumed.freeze_hook.frozen
    assert len(resumed.replay_buffer) > 0


def test_a_resumed_run_keeps_the_compression_the_run_chose(tmp_path, monkeypatch):
    """``auto`` is measured once per run: the resumed run reuses the saved choice."""
    budget, _, _ = RESUME["composed_dqn_atari"]
    overrides = (*budget, *EXACT, "accerl.compression=auto")
    common = load_recipe("composed_common")
    choices = []
    choose = common.choose_compressor

    def counted_choose(*args, **kwargs):
        choices.append(args[0])
        return choose(*args, **kwargs)

    monkeypatch.setattr(common, "choose_compressor", counted_choose)
    resumed, _ = _stopped_then_resumed("composed_dqn_atari", overrides, 1, tmp_path, monkeypatch)
    assert choices == ["auto"]  # measured by the first run only
    report = json.loads((resumed.report.parent / "report.json").read_text())
    assert report["actors"]["reason"]  # the first run's reason, kept


@pytest.mark.parametrize("delta_frames", [True, False])
def test_placement_keeps_actors_and_the_frame_codec_on_the_cpu(delta_frames):
    placement = load_recipe("composed_common").composed_placement
    cuda = placement(torch.device("cuda", 1), delta_frames=delta_frames)
    assert cuda.learner == cuda.latent_replay == torch.device("cuda", 1)
    assert cuda.actors == torch.device("cpu")
    expected_pixels = torch.device("cpu") if delta_frames else torch.device("cuda", 1)
    assert cuda.pixel_replay == expected_pixels
    cpu = placement(torch.device("cpu"), delta_frames=delta_frames)
    assert {cpu.learner, cpu.actors, cpu.pixel_replay, cpu.latent_replay} == {torch.device("cpu")}


def test_latent_transform_moves_cpu_pixels_to_the_learner():
    """With the pixels on another device than the learner, they are moved before encoding."""
    from torchrl_seer.modules import DataEfficientAtariEncoder

    common = load_recipe("composed_common")
    encoder = DataEfficientAtariEncoder(4)
    pixels = torch.randint(0, 255, (3, 4, 84, 84), dtype=torch.uint8)
    same = common.latent_transform(
        encoder, common.composed_placement(torch.device("cpu"), delta_frames=True)
    )
    assert same.frozen_encoder is encoder.frozen_part
    # a learner on the "meta" device stands for CUDA: the pixels reach the encoder there
    apart = common.Placement(
        learner=torch.device("meta"), actors=torch.device("cpu"),
        pixel_replay=torch.device("cpu"), latent_replay=torch.device("meta"),
    )  # fmt: skip
    moved = common.latent_transform(encoder, apart)
    to_device, frozen = moved.frozen_encoder
    assert frozen is encoder.frozen_part  # shared: it encodes with the trained weights
    assert to_device(pixels).device.type == "meta"
    assert moved.latent_shape == encoder.latent_shape


def test_the_learner_is_placed_on_the_run_device(tmp_path, monkeypatch):
    """Every device decision goes through ``composed_placement``: on CPU, all of it is CPU.

    The actors are uncompressed and act in the learner's process here.
    """
    recipe = load_recipe("composed_dqn_atari")
    seen = []
    place = recipe.composed_placement

    def recorded(learner, *, delta_frames):
        seen.append((learner, delta_frames))
        return place(learner, delta_frames=delta_frames)

    monkeypatch.setattr(recipe, "composed_placement", recorded)
    budget, _, _ = RESUME["composed_dqn_atari"]
    run = run_recipe(
        "composed_dqn_atari", *budget, "device=auto", "parts.compressed_actors=false", *EXACT,
        "logger.backend=null", f"logger.output_dir={tmp_path}",
    )  # fmt: skip
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert seen == [(expected, True)]
    assert {p.device for p in run.freeze_hook.encoder.parameters()} == {expected}
    assert isinstance(run.replay_buffer.storage, QuantizedStorage)
    assert run.record.steps == 96 and run.record.update_seconds


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("device=mps", "cpu or cuda"),
        ("collector.workers=-1", "collector.workers must be >= 0"),
        ("checkpoint.interval=20", "must be a multiple of collector.frames_per_batch"),
    ],
)
@pytest.mark.parametrize("recipe", sorted(RESUME))
def test_the_composed_recipes_refuse_before_creating_anything(recipe, override, message, tmp_path):
    cfg = recipe_config(recipe, override, f"logger.output_dir={tmp_path}")
    with pytest.raises(ValueError, match=message):
        load_recipe(recipe).train(cfg)
    assert not any(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_machine_without_it_is_refused_before_creating_anything(tmp_path):
    cfg = recipe_config("composed_dqn_atari", "device=cuda", f"logger.output_dir={tmp_path}")
    with pytest.raises(ValueError, match="CUDA is not available"):
        load_recipe("composed_dqn_atari").train(cfg)
    assert not any(tmp_path.iterdir())
