"""DQN with DeltaFrameStorage at a tiny budget: report, sizes, checkpoint and resume."""

from _recipes import assert_same_checkpoints, load_recipe, recipe_config, run_recipe
from torchrl.data import TensorDictReplayBuffer

from torchrl_seer.data import DeltaFrameStorage

TINY = (
    "collector.total_frames=128", "replay_buffer.size=100", "optim.learn_start=64",
    "optim.batch_size=8", "optim.updates_per_batch=1", "loss.target_update=4",
    "logger.report_every=64",
)  # fmt: skip


def test_sizes_are_compared_with_one_decimal():
    recipe = load_recipe("dqn_atari_delta")
    assert recipe.compare_sizes(1000.0, 1600.0) == "1.6x smaller"
    assert recipe.compare_sizes(1600.0, 1000.0) == "1.6x larger"


def test_recipe_reports_replay_bytes_and_resumes_exactly(tmp_path):
    common = (*TINY, "checkpoint.interval=64")
    full = run_recipe("dqn_atari_delta", *common, f"logger.output_dir={tmp_path / 'full'}")
    text = full.read_text()
    assert "| DeltaFrameStorage vs LazyTensorStorage |" in text and "x smaller |" in text
    assert list(full.parent.rglob("replay_bytes_per_transition.csv"))
    stopped = run_recipe(
        "dqn_atari_delta", *common, "collector.total_frames=64", "logger.backend=csv",
        f"logger.output_dir={tmp_path / 'cut'}",
    )  # fmt: skip
    resumed = run_recipe("dqn_atari_delta", *common, f"resume={stopped.parent}")
    assert_same_checkpoints(
        full.parent / "checkpoint",
        resumed.parent / "checkpoint",
        make_buffer=lambda: TensorDictReplayBuffer(
            storage=DeltaFrameStorage(
                100, pixel_keys=["pixels"], frame_stack=4, chunk_len=64, cache_bytes=0
            )
        ),
    )  # the held bytes differ: the restored storage does not carry overwritten frames


def test_demo_config():
    demo = recipe_config("dqn_atari_delta", config_name="dqn_atari_delta_demo")
    assert demo.collector.total_frames == 2_000 and demo.optim.updates_per_batch == 1
