"""The composed recipes at a tiny budget: every part on, and every part off (plain TorchRL)."""

from __future__ import annotations

import json

import pytest
import torch
from tensordict import TensorDict
from torchrl.data import LazyTensorStorage

from tests._recipes import load_recipe, recipe_config
from torchrl_seer.data import QuantizedStorage
from torchrl_seer.modules import DataEfficientAtariEncoder, LatentOrPixelFeatures
from torchrl_seer.objectives import RetraceDQNLoss


def all_parts(recipe: str, on: bool) -> list[str]:
    return [f"parts.{name}={str(on).lower()}" for name in recipe_config(recipe).parts]


DQN_TINY = [
    "collector.total_frames=96",
    "collector.frames_per_batch=16",
    "collector.init_random_frames=32",
    "env.max_episode_steps=40",  # episodes end (truncated) within the budget
    "replay_buffer.size=48",  # full at the freeze: the latent budget is what it held
    "replay_buffer.chunk_len=16",
    "optim.batch_size=16",
    "loss.sequence=4",
    "seer.freeze_at=64",
    "optim.updates_per_batch=1",
    "loss.target_update=4",
    "exploration.eps_decay_frames=64",
    "accerl.compression=int8",
    "logger.report_every=48",  # a report during the run, and the final one
]

SAC_TINY = [
    "collector.total_frames=48",
    "collector.frames_per_batch=8",
    "collector.init_random_frames=16",
    "env.action_repeat=32",  # 32-step episodes: one ends within the budget
    "replay_buffer.size=24",  # full at the freeze: the latent budget is what it held
    "replay_buffer.chunk_len=16",
    "optim.batch_size=8",
    "seer.freeze_at=32",
    "seer.num_copies=2",
    "optim.updates_per_batch=1",
    "network.hidden=32",
    "accerl.compression=int8",
    "logger.report_every=24",
]

# recipe -> (tiny budget, freeze step, pixel capacity)
TINY = {
    "composed_dqn_atari": (DQN_TINY, 64, 48),
    "composed_sac_dmc": (SAC_TINY, 32, 24),
}


@pytest.mark.parametrize("recipe", sorted(TINY))
def test_every_part_on(recipe, tmp_path, monkeypatch):
    budget, freeze_at, capacity = TINY[recipe]
    cfg = recipe_config(recipe, *budget, *all_parts(recipe, True), f"logger.output_dir={tmp_path}")
    record_cls = load_recipe("composed_common").RunRecord
    reports_at = []  # agent steps at which the report was written
    write_report = record_cls.write_report

    def counted_write_report(record):
        reports_at.append(record.steps)
        return write_report(record)

    monkeypatch.setattr(record_cls, "write_report", counted_write_report)
    run = load_recipe(recipe).train(cfg)
    # one report at logger.report_every (half the budget) and the final one
    assert reports_at == [cfg.logger.report_every, run.record.steps]

    # the freeze fired inside the Trainer and the buffer moved to int8 latents
    hook = run.freeze_hook
    assert hook.frozen and hook.freeze_step >= freeze_at
    storage = run.replay_buffer.storage
    assert isinstance(storage, QuantizedStorage) and storage.format == "int8"
    freeze = hook.freeze_report
    assert storage.max_size == freeze["latent_capacity"]
    # the pixel buffer was full; the latent buffer keeps its newest transitions. Whether the
    # int8 latents take fewer bytes than the delta-compressed frames depends on the frames the
    # actors saw (worker processes act asynchronously), so the capacity can grow or shrink.
    assert freeze["num_transitions"] == capacity
    assert freeze["num_migrated"] == min(capacity, freeze["latent_capacity"])
    assert freeze["num_migrated"] + freeze["num_dropped"] == capacity
    sample = run.replay_buffer.sample()
    assert "latent" in sample.keys() and "pixels" not in sample.keys()
    # training went on, writing latents
    written_after = run.record.steps - hook.freeze_step
    assert len(run.replay_buffer) == min(storage.max_size, freeze["num_migrated"] + written_after)

    # updates happened on both sides of the freeze; returns were recorded
    assert {frozen for frozen, _ in run.record.update_seconds} == {False, True}
    assert run.record.returns

    # every scalar logged at environment frames in the run folder (csv logger)
    run_dir = run.report.parent
    assert run_dir.parent == tmp_path and (run_dir / "config.yaml").exists()
    scalars = run_dir / run_dir.name / "scalars"
    frames_per_step = 4 if "dqn" in recipe else 32
    logged_returns = (scalars / "episode_return.csv").read_text().split()
    assert len(logged_returns) == len(run.record.returns)
    assert [int(line.split(",")[0]) for line in logged_returns] == [
        frames for frames, _ in run.record.returns
    ]
    replay_steps = [
        int(line.split(",")[0]) for line in (scalars / "replay_bytes.csv").read_text().split()
    ]
    assert replay_steps[-1] == frames_per_step * cfg.collector.total_frames
    assert (scalars / "seer" / "latent_capacity.csv").exists()

    report = json.loads((run_dir / "report.json").read_text())
    assert (run_dir / "report.png").exists()
    assert report["actors"]["compression"] == "int8"
    assert report["freeze"]["latent_capacity"] == storage.max_size
    text = run.report.read_text()
    assert "grew" in text or "shrank" in text


@pytest.mark.parametrize("recipe", sorted(TINY))
def test_every_part_off_is_plain_torchrl(recipe, tmp_path):
    budget, _, _ = TINY[recipe]
    cfg = recipe_config(
        recipe, *budget, *all_parts(recipe, False), f"logger.output_dir={tmp_path}",
        "logger.backend=null",
    )  # fmt: skip
    run = load_recipe(recipe).train(cfg)

    assert run.freeze_hook is None
    assert type(run.replay_buffer.storage) is LazyTensorStorage
    assert "pixels" in run.replay_buffer.sample().keys()
    assert run.record.update_seconds and run.record.returns
    report = json.loads((run.report.parent / "report.json").read_text())
    assert report["actors"]["compression"].startswith("fp32")
    assert report["freeze"] == {}
    assert not (run.report.parent / run.report.parent.name).exists()  # no logger, no scalars


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("collector.total_frames=0", "collector.total_frames must be > 0"),
        ("env.name=NotAGame", "not an ALE game"),
        ("optim.batch_size=10", "multiple of loss.sequence"),
    ],
)
def test_a_bad_setting_is_refused_before_anything_is_created(override, message, tmp_path):
    cfg = recipe_config("composed_dqn_atari", override, f"logger.output_dir={tmp_path}")
    with pytest.raises(ValueError, match=message):
        load_recipe("composed_dqn_atari").train(cfg)
    assert not any(tmp_path.iterdir())  # no run folder left behind


def test_retrace_dqn_on_a_seer_split_encoder_reads_pixels_then_latents():
    """RetraceDQNLoss with LatentOrPixelFeatures: a pixel batch has no latent key, and back."""
    from tensordict.nn import TensorDictModule, TensorDictSequential
    from torchrl.data import Categorical
    from torchrl.modules import QValueModule

    spec = Categorical(3)
    encoder = DataEfficientAtariEncoder(4)
    qnet = TensorDictSequential(
        LatentOrPixelFeatures(encoder),
        TensorDictModule(torch.nn.Linear(576, 3), in_keys=["features"], out_keys=["action_value"]),
        QValueModule(spec=spec),
    )
    loss = RetraceDQNLoss(qnet, lmbda=0.9, action_space=spec)
    B, T = 2, 3
    common = {
        "action": spec.rand((B, T)),
        "action_log_prob": torch.full((B, T), -1.0),
        ("next", "reward"): torch.randn(B, T, 1),
        ("next", "done"): torch.zeros(B, T, 1, dtype=torch.bool),
        ("next", "terminated"): torch.zeros(B, T, 1, dtype=torch.bool),
    }
    pixels = torch.randint(0, 255, (B, T, 4, 84, 84), dtype=torch.uint8)
    pixel_batch = TensorDict({**common, "pixels": pixels, ("next", "pixels"): pixels}, [B, T])
    latents = torch.randn(B, T, 576)
    latent_batch = TensorDict({**common, "latent": latents, ("next", "latent"): latents}, [B, T])
    for batch in (pixel_batch, latent_batch):
        out = loss(batch)
        assert torch.isfinite(out["loss"])


def test_int8_compression_of_a_bf16_policy():
    """A low-precision learner's bf16 actor can be shipped int8 (cast up exactly first)."""
    from torchrl.modules import MLP

    from torchrl_seer.collectors import PolicyCompressor

    torch.manual_seed(0)
    net = MLP(in_features=4, out_features=2, num_cells=[16]).to(torch.bfloat16)
    compressor = PolicyCompressor.from_spec("int8")
    x = torch.randn(3, 4)
    from_bf16 = compressor.compress(net)[0](x)
    from_fp32 = compressor.compress(net.float())[0](x)
    assert torch.equal(from_bf16, from_fp32)


def test_slice_sampling_a_full_quantized_storage_keeps_its_codes():
    """SliceSampler reads ``storage[:]``: a full QuantizedStorage must not decode it in place."""
    from torchrl.data import SliceSampler, TensorDictReplayBuffer

    n = 16

    def latents() -> TensorDict:
        return TensorDict(
            {
                "latent": torch.randn(n, 6),
                "next": {"latent": torch.randn(n, 6)},
                "traj": torch.zeros(n),
            },
            [n],
        )

    storage = QuantizedStorage(n, keys=["latent", ("next", "latent")])
    rb = TensorDictReplayBuffer(
        storage=storage, batch_size=8, sampler=SliceSampler(slice_len=4, traj_key="traj")
    )
    rb.extend(latents())  # full
    nbytes = storage.nbytes_held()
    rb.sample()
    assert storage.nbytes_held() == nbytes  # the int8 codes were not replaced by floats
    rb.extend(latents())  # codes written over the stored codes
    assert rb.sample()["latent"].dtype == torch.float32


def test_freeze_hook_watches_a_delta_frame_storage_buffer(tmp_path):
    """FreezeEncoderHook wraps the buffer's checkpointer; DeltaFrameStorage still checkpoints."""
    from torchrl.data import ReplayBuffer

    from torchrl_seer.data import DeltaFrameStorage
    from torchrl_seer.trainers import FreezeEncoderHook

    def watched_buffer() -> ReplayBuffer:
        rb = ReplayBuffer(storage=DeltaFrameStorage(32, frame_stack=4), batch_size=4)
        FreezeEncoderHook(DataEfficientAtariEncoder(4), freeze_at=10, replay_buffer=rb)
        return rb

    n = 12
    frames = torch.randint(0, 255, (n + 4, 84, 84), dtype=torch.uint8)
    obs = torch.stack([frames[i : i + 4] for i in range(n)])
    nxt = torch.stack([frames[i + 1 : i + 5] for i in range(n)])
    done = torch.zeros(n, 1, dtype=torch.bool)
    rb = watched_buffer()
    rb.extend(TensorDict({"pixels": obs, "next": {"pixels": nxt, "done": done}}, [n]))
    rb.dumps(tmp_path / "rb")
    restored = watched_buffer()
    restored.loads(tmp_path / "rb")
    assert len(restored) == n
    assert torch.equal(restored[:]["pixels"], obs)
    assert torch.equal(restored[:]["next", "pixels"], nxt)


@pytest.mark.parametrize("recipe", sorted(TINY))
@pytest.mark.parametrize("native", [True, False])
def test_low_precision_auto_trains_in_bf16_only_where_it_is_native(recipe, native, monkeypatch):
    composed_common = load_recipe("composed_common")
    monkeypatch.setattr(composed_common, "has_native_kernels", lambda dtype, device: native)
    cfg = recipe_config(recipe)
    assert cfg.parts.low_precision == "auto"  # the recipes' default
    (note,) = composed_common.resolve_low_precision(cfg, torch.device("cpu"))
    assert cfg.parts.low_precision is native
    assert ("bf16 learner on" if native else "bf16 learner off (fp32)") in note
    explicit = recipe_config(recipe, "parts.low_precision=true")
    assert composed_common.resolve_low_precision(explicit, torch.device("cpu")) == []
    assert explicit.parts.low_precision is True
    resumed = recipe_config(recipe, "resume=/a/run")  # keeps what its first start chose
    assert composed_common.resolve_low_precision(resumed, torch.device("cpu")) == []
    assert resumed.parts.low_precision == "auto"
    with pytest.raises(ValueError, match=r"parts\.low_precision must be true, false or auto"):
        composed_common.check_composed_config(
            recipe_config(recipe, "parts.low_precision=bf16"), positive=[]
        )
