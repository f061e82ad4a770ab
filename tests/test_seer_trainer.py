"""FreezeEncoderHook inside a real TorchRL Trainer with a real collector, and its checkpoints."""

import copy
import warnings

import pytest
import torch
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torchrl.checkpoint import Checkpoint
from torchrl.collectors import Collector
from torchrl.data import (
    Bounded,
    Categorical,
    Composite,
    LazyTensorStorage,
    ReplayBuffer,
    Unbounded,
)
from torchrl.envs import EnvBase
from torchrl.modules import MLP, QValueModule
from torchrl.objectives import DQNLoss
from torchrl.trainers import ReplayBufferTrainer, Trainer

from torchrl_seer.data import LatentReplayOptions
from torchrl_seer.modules import DataEfficientAtariEncoder, LatentOrPixelFeatures
from torchrl_seer.trainers import FreezeEncoderHook

SIZE = 25  # Conv(k5,s5) x2 on 25x25 frames: 64 latent features
NUM_ACTIONS = 3
FRAMES_PER_BATCH = 16
FREEZE_AT = 64


class TinyPixelEnv(EnvBase):
    """Random 4x25x25 uint8 frames, 3 actions, reward 1 for action 1, episodes of 7 steps."""

    def __init__(self, seed: int = 0, episode_len: int = 7) -> None:
        super().__init__(batch_size=[])
        self.observation_spec = Composite(
            pixels=Bounded(0, 255, (4, SIZE, SIZE), dtype=torch.uint8)
        )
        self.action_spec = Categorical(NUM_ACTIONS)
        self.reward_spec = Unbounded((1,))
        self.episode_len = episode_len
        self._gen = torch.Generator().manual_seed(seed)
        self._t = 0

    def _frame(self) -> torch.Tensor:
        return torch.randint(0, 256, (4, SIZE, SIZE), dtype=torch.uint8, generator=self._gen)

    def _reset(self, tensordict):
        self._t = 0
        return TensorDict({"pixels": self._frame()}, [])

    def _step(self, tensordict):
        self._t += 1
        done = torch.tensor([self._t >= self.episode_len])
        reward = (tensordict["action"] == 1).float().reshape(1)
        return TensorDict(
            {"pixels": self._frame(), "reward": reward, "done": done, "terminated": done}, []
        )

    def _set_seed(self, seed):
        self._gen.manual_seed(int(seed or 0))


def build(tmp_path, *, total_frames: int, checkpoint: Checkpoint | None = None, seed: int = 0):
    """One SEER DQN run: the networks, a pixel buffer, the hook and a real Trainer."""
    torch.manual_seed(seed)
    encoder = DataEfficientAtariEncoder(4, screen_size=SIZE)
    head = TensorDictModule(
        MLP(in_features=64, out_features=NUM_ACTIONS, num_cells=[32]),
        in_keys=["features"],
        out_keys=["action_value"],
    )
    qnet = TensorDictSequential(
        LatentOrPixelFeatures(encoder), head, QValueModule(spec=Categorical(NUM_ACTIONS))
    )
    loss = DQNLoss(qnet, action_space="categorical", delay_value=True)
    loss.make_value_estimator(gamma=0.9)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    rb = ReplayBuffer(storage=LazyTensorStorage(256), batch_size=16)
    collector = Collector(
        TinyPixelEnv(seed),
        qnet,
        frames_per_batch=FRAMES_PER_BATCH,
        total_frames=total_frames,
    )
    trainer = Trainer(
        collector=collector,
        total_frames=total_frames,
        frame_skip=1,
        optim_steps_per_batch=2,
        loss_module=loss,
        optimizer=optim,
        progress_bar=False,
        save_trainer_interval=10**9,
        save_trainer_file=tmp_path / ("ckpt" if checkpoint is not None else "ckpt.pt"),
        checkpoint=checkpoint,
    )
    hook = FreezeEncoderHook(
        encoder,
        freeze_at=FREEZE_AT,
        modules=[loss],
        optimizers=[optim],
        replay_buffer=rb,
        target_sync="encoder",
        replay_options=LatentReplayOptions(progress=False),
    )
    hook.register(trainer)  # before the buffer: state_dict checkpoints restore it first
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecated post_loss stage
        ReplayBufferTrainer(rb, flatten_tensordicts=True).register(trainer)
    return trainer, hook, rb, encoder, head, loss, optim


def stored(rb):
    return rb.storage.get(torch.arange(len(rb)))


def test_freeze_fires_in_trainer_train_and_training_continues_on_latents(tmp_path):
    frozen_at_freeze = {}

    def remember(hook):
        frozen_at_freeze.update(copy.deepcopy(hook.encoder.frozen_part.state_dict()))
        frozen_at_freeze["head"] = copy.deepcopy(head.state_dict())

    trainer, hook, rb, encoder, head, _, optim = build(tmp_path, total_frames=128)
    hook.on_freeze = remember
    trainer.train()
    assert hook.frozen and hook.freeze_step == FREEZE_AT and hook.storage_mode == "latent"
    assert len(rb) == 128  # every collected transition, migrated or encoded on write
    data = stored(rb)
    assert "pixels" not in data.keys() and data["latent"].shape == (128, 64)
    assert hook.freeze_report["num_migrated"] == FREEZE_AT
    for name, value in encoder.frozen_part.state_dict().items():
        assert torch.equal(value, frozen_at_freeze[name]), name
    # the heads kept learning after the freeze, on latents
    assert any(
        not torch.equal(v, frozen_at_freeze["head"][k]) for k, v in head.state_dict().items()
    )
    frozen_ids = {id(p) for p in encoder.frozen_part.parameters()}
    assert not any(id(p) in frozen_ids for g in optim.param_groups for p in g["params"])
    # the hook logs through the Trainer
    assert trainer._log_dict["seer_frozen"][-1] == 1.0


@pytest.mark.parametrize("backend", ["state_dict", "checkpoint"])
def test_trainer_checkpoint_brings_the_run_back_in_latent_mode(tmp_path, backend):
    checkpoint = Checkpoint() if backend == "checkpoint" else None
    trainer, hook, rb, *_ = build(tmp_path, total_frames=96, checkpoint=checkpoint)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (FutureWarning, DeprecationWarning))
        trainer.train()  # saves the trainer when it reaches total_frames
    assert hook.frozen
    before = stored(rb)

    # a fresh run built exactly like the first one: pixel buffer, unfrozen encoder
    checkpoint2 = Checkpoint() if backend == "checkpoint" else None
    trainer2, hook2, rb2, encoder2, _, _, optim2 = build(
        tmp_path, total_frames=160, checkpoint=checkpoint2, seed=1
    )
    trainer2.load_from_file(trainer.save_trainer_file)
    assert hook2.frozen and hook2.storage_mode == "latent" and hook2.freeze_step == FREEZE_AT
    assert rb2.storage.max_size == rb.storage.max_size and len(rb2) == len(rb) == 96
    after = stored(rb2)
    assert set(after.keys(True, True)) == set(before.keys(True, True))
    for key in before.keys(True, True):
        assert torch.equal(after[key], before[key]), key
    assert all(not p.requires_grad for p in encoder2.frozen_part.parameters())
    frozen_ids = {id(p) for p in encoder2.frozen_part.parameters()}
    assert not any(id(p) in frozen_ids for g in optim2.param_groups for p in g["params"])
    # training resumes on latents: new pixel batches are encoded on write
    frozen = copy.deepcopy(encoder2.frozen_part.state_dict())
    trainer2.train()
    assert len(rb2) == 160 and "pixels" not in stored(rb2).keys()
    for name, value in encoder2.frozen_part.state_dict().items():
        assert torch.equal(value, frozen[name]), name
