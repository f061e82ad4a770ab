"""FreezeEncoderHook with TorchRL's DQNLoss and SACLoss: freezing, optimizers, targets, resume."""

import copy

import pytest
import torch
from split_encoder_nets import sac_actor_and_critic
from tensordict import TensorDict
from tensordict.nn import TensorDictModule, TensorDictSequential
from torch import nn
from torchrl.data import Categorical, LazyTensorStorage, ReplayBuffer
from torchrl.modules import MLP, QValueModule
from torchrl.objectives import DQNLoss, SACLoss

from torchrl_seer.data import LatentEncodeTransform, LatentReplayOptions
from torchrl_seer.modules import CURLPixelEncoder, DataEfficientAtariEncoder, LatentOrPixelFeatures
from torchrl_seer.trainers import FreezeEncoderHook, ParameterConvergence

SIZE = 25
NUM_ACTIONS = 3
QUIET = LatentReplayOptions(progress=False)


def batch(start, n, channels=4, size=SIZE, continuous=False):
    idx = torch.arange(start, start + n)
    gen = torch.Generator().manual_seed(start)
    pixels = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)
    action = torch.rand(n, 2, generator=gen) * 2 - 1 if continuous else idx % NUM_ACTIONS
    done = (idx % 5 == 0).unsqueeze(-1)
    return TensorDict(
        {
            "pixels": pixels,
            "action": action,
            "id": idx,
            ("next", "pixels"): pixels.roll(1, -1),
            ("next", "reward"): torch.randn(n, 1, generator=gen),
            ("next", "done"): done,
            ("next", "terminated"): done,
        },
        [n],
    )


def make_dqn(fused: bool = False):
    torch.manual_seed(0)
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
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3, fused=fused)
    return encoder, head, loss, optim


def train_steps(loss, optim, rb, n):
    for _ in range(n):
        losses = loss(rb.sample())
        optim.zero_grad()
        sum(v for k, v in losses.items() if k.startswith("loss")).backward()
        optim.step()


@pytest.mark.parametrize("fused", [False, True], ids=["adam", "fused-adam"])
def test_dqn_frozen_layers_get_no_grad_and_do_not_change_while_heads_learn(fused):
    encoder, head, loss, optim = make_dqn(fused=fused)
    rb = ReplayBuffer(storage=LazyTensorStorage(64), batch_size=16)
    hook = FreezeEncoderHook(
        encoder,
        freeze_at=2,
        modules=[loss],
        optimizers=[optim],
        replay_buffer=rb,
        target_sync="encoder",
        replay_options=QUIET,
    )
    frozen_before = None
    for step in range(6):
        rb.extend(batch(step * 8, 8))
        if hook.step(step):
            frozen_before = copy.deepcopy(encoder.frozen_part.state_dict())
            heads_before = copy.deepcopy(head.state_dict())
            target_before = loss.target_value_network_params.clone()
        train_steps(loss, optim, rb, 3)
    assert hook.frozen and hook.freeze_step == 2 and hook.storage_mode == "latent"
    for name, value in encoder.frozen_part.state_dict().items():
        assert torch.equal(value, frozen_before[name]), name
    for param in encoder.frozen_part.parameters():
        assert not param.requires_grad and param.grad is None
    assert any(not torch.equal(v, heads_before[k]) for k, v in head.state_dict().items())
    # no optimizer state left for the frozen layers
    frozen_ids = {id(p) for p in encoder.frozen_part.parameters()}
    assert not any(id(p) in frozen_ids for g in optim.param_groups for p in g["params"])
    assert not any(id(p) in frozen_ids for p in optim.state)
    assert hook.freeze_report["optimizer_states_dropped"] == 4
    # target convs equal the online convs; target heads were left alone at the freeze
    target = loss.target_value_network_params
    online = loss.value_network_params
    for key in target.keys(True, True):
        if "frozen_part" in key:
            assert torch.equal(target[key], online[key])
        else:
            assert torch.equal(target[key], target_before[key])


def test_no_transition_lost_at_freeze():
    encoder, _, loss, optim = make_dqn()
    rb = ReplayBuffer(storage=LazyTensorStorage(1000), batch_size=16)
    hook = FreezeEncoderHook(
        encoder,
        freeze_at=3,
        modules=[loss],
        optimizers=[optim],
        replay_buffer=rb,
        replay_options=QUIET,
    )
    written = 0
    for step in range(7):
        rb.extend(batch(written, 5))
        written += 5
        hook.step(step)
    assert len(rb) == written
    ids = rb.storage.get(torch.arange(len(rb)))["id"]
    assert ids.tolist() == list(range(written))  # each exactly once, in order


def test_transform_built_before_training_encodes_with_the_weights_at_the_freeze():
    """Regression: the DMC recipe builds its K-crop transform at step 0, before any training.

    The transform used to keep a private copy of the untrained encoder, so every latent (migrated
    and written after the freeze) came from the step-0 weights while acting used trained ones.
    """
    encoder, _, loss, optim = make_dqn()
    initial = copy.deepcopy(encoder)
    rb = ReplayBuffer(storage=LazyTensorStorage(100), batch_size=16)
    transform = LatentEncodeTransform(encoder)  # built before any update, as in the recipe
    hook = FreezeEncoderHook(
        encoder,
        freeze_at=1,
        modules=[loss],
        optimizers=[optim],
        replay_buffer=rb,
        latent_transform=transform,
        replay_options=QUIET,
    )
    rb.extend(batch(0, 20))
    train_steps(loss, optim, rb, 5)
    assert any(
        not torch.equal(p0, p1)
        for p0, p1 in zip(initial.parameters(), encoder.parameters(), strict=True)
    )
    assert hook.step(1)
    rb.extend(batch(20, 10))  # encoded on write after the freeze
    stored = rb.storage.get(torch.arange(30))
    pixels = torch.cat([batch(0, 20)["pixels"], batch(20, 10)["pixels"]])
    with torch.no_grad():
        expected = encoder.frozen_part_forward(pixels)
        stale = initial.frozen_part_forward(pixels)
    torch.testing.assert_close(stored["latent"], expected)
    assert not torch.allclose(stored["latent"], stale)
    assert encoder.training  # encoding in eval mode restored the acting network's mode


def make_sac():
    torch.manual_seed(0)
    encoder = CURLPixelEncoder(3, image_size=SIZE, num_filters=8, feature_dim=16)
    actor, qvalue, action_spec = sac_actor_and_critic(encoder)
    loss = SACLoss(actor, qvalue, num_qvalue_nets=2, action_spec=action_spec)
    optim = torch.optim.Adam(loss.parameters(), lr=1e-3)
    return encoder, actor, loss, optim


def test_sac_stacked_q_copies_and_targets_are_frozen_and_synced():
    encoder, actor, loss, optim = make_sac()
    rb = ReplayBuffer(storage=LazyTensorStorage(64), batch_size=16)
    hook = FreezeEncoderHook(
        encoder,
        freeze_at=1,
        modules=[actor, loss],
        optimizers=[optim],
        replay_buffer=rb,
        replay_options=QUIET,
    )
    rb.extend(batch(0, 16, channels=3, continuous=True))
    train_steps(loss, optim, rb, 3)  # the stacked Q encoders drift away from the actor's
    hook.step(1)
    q_params = loss.qvalue_network_params
    target = loss.target_qvalue_network_params
    frozen_keys = [k for k in q_params.keys(True, True) if "frozen_part" in k]
    assert frozen_keys
    source = {
        **dict(encoder.frozen_part.named_parameters()),
        **dict(encoder.frozen_part.named_buffers()),
    }
    for key in frozen_keys:
        assert not q_params[key].requires_grad
        suffix = ".".join(key[key.index("frozen_part") + 1 :])
        assert torch.equal(q_params[key], source[suffix].expand_as(q_params[key]))
    # "full" target sync: the whole critic, Q heads included, is hard-copied
    for key in target.keys(True, True):
        assert torch.equal(target[key], q_params[key])
    snapshot = q_params.clone()
    for step in range(2, 4):
        rb.extend(batch(step * 16, 16, channels=3, continuous=True))
        train_steps(loss, optim, rb, 2)
    changed = {k: not torch.equal(q_params[k], snapshot[k]) for k in q_params.keys(True, True)}
    assert not any(changed[k] for k in frozen_keys)
    assert any(changed[k] for k in changed if k not in frozen_keys)
    assert all(not p.requires_grad for p in encoder.frozen_part.parameters())


def test_checkpoint_after_freeze_restores_and_resumes_on_latents(tmp_path):
    encoder, _head, loss, optim = make_dqn()
    rb = ReplayBuffer(storage=LazyTensorStorage(64), batch_size=16)
    hook = FreezeEncoderHook(
        encoder,
        freeze_at=1,
        modules=[loss],
        optimizers=[optim],
        replay_buffer=rb,
        target_sync="encoder",
        replay_options=QUIET,
    )
    for step in range(3):
        rb.extend(batch(step * 8, 8))
        hook.step(step)
        train_steps(loss, optim, rb, 2)
    checkpoint = {
        "loss": loss.state_dict(),
        "hook": hook.state_dict(),
        "optim": optim.state_dict(),
        "rb": rb.state_dict(),
    }
    torch.save(checkpoint, tmp_path / "ckpt.pt")
    assert checkpoint["hook"]["frozen"] and checkpoint["hook"]["freeze_step"] == 1
    assert checkpoint["hook"]["storage_mode"] == "latent"

    # a fresh run built exactly like the first one (pixel buffer, unfrozen encoder)
    encoder2, _, loss2, optim2 = make_dqn()
    rb2 = ReplayBuffer(storage=LazyTensorStorage(64), batch_size=16)
    hook2 = FreezeEncoderHook(
        encoder2,
        freeze_at=1,
        modules=[loss2],
        optimizers=[optim2],
        replay_buffer=rb2,
        target_sync="encoder",
        replay_options=QUIET,
    )
    state = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    loss2.load_state_dict(state["loss"])
    optim2.load_state_dict(state["optim"])  # before the hook: the tagged state purges first
    hook2.load_state_dict(state["hook"])
    rb2.load_state_dict(state["rb"])
    frozen_ids = {id(p) for p in encoder2.frozen_part.parameters()}
    assert not any(id(p) in frozen_ids for g in optim2.param_groups for p in g["params"])
    assert hook2.frozen and hook2.freeze_step == 1 and not hook2.step(5)
    assert all(not p.requires_grad for p in encoder2.frozen_part.parameters())
    assert len(rb2) == len(rb) == 24
    assert rb2.storage.max_size == rb.storage.max_size
    torch.testing.assert_close(
        rb2.storage.get(torch.arange(24))["latent"], rb.storage.get(torch.arange(24))["latent"]
    )
    # resumes on latents: new pixel writes are encoded, training goes on
    rb2.extend(batch(100, 8))
    assert "pixels" not in rb2.storage._storage.keys()
    with torch.no_grad():
        expected = encoder2.frozen_part_forward(batch(100, 8)["pixels"])
    torch.testing.assert_close(rb2.storage.get(torch.arange(24, 32))["latent"], expected)
    frozen = copy.deepcopy(encoder2.frozen_part.state_dict())
    train_steps(loss2, optim2, rb2, 2)
    for name, value in encoder2.frozen_part.state_dict().items():
        assert torch.equal(value, frozen[name])


def test_auto_freeze_fires_when_parameters_stop_moving():
    encoder, _, loss, optim = make_dqn()
    rb = ReplayBuffer(storage=LazyTensorStorage(64), batch_size=16)
    criterion = ParameterConvergence(
        encoder.frozen_part.parameters(), check_interval=2, threshold=1e-3, patience=2
    )
    hook = FreezeEncoderHook(
        encoder,
        freeze_at="auto",
        convergence=criterion,
        modules=[loss],
        optimizers=[optim],
        replay_buffer=rb,
        replay_options=QUIET,
    )
    rb.extend(batch(0, 16))
    step = 0
    for step in range(4):  # training: parameters move, no freeze
        train_steps(loss, optim, rb, 2)
        assert not hook.step(step)
    for group in optim.param_groups:  # learning stops: the criterion fires
        group["lr"] = 0.0
    while not hook.frozen and step < 20:
        step += 1
        train_steps(loss, optim, rb, 1)
        hook.step(step)
    assert hook.frozen
    assert all(change > 1e-3 for _, change in criterion.history[:1])
    assert hook.freeze_report["convergence_history"][-1][1] < 1e-3


def test_fixed_freeze_step_only_watches_a_given_criterion():
    encoder, _, loss, optim = make_dqn()
    rb = ReplayBuffer(storage=LazyTensorStorage(64), batch_size=16)
    criterion = ParameterConvergence(
        encoder.frozen_part.parameters(), check_interval=1, threshold=10.0, patience=1,
        keep_trajectory=True,
    )  # fmt: skip
    hook = FreezeEncoderHook(
        encoder, freeze_at=5, convergence=criterion, modules=[loss], optimizers=[optim],
        replay_buffer=rb, replay_options=QUIET,
    )  # fmt: skip
    rb.extend(batch(0, 16))
    for step in range(5):  # the loose bound holds from the second check: recorded, no freeze
        train_steps(loss, optim, rb, 1)
        assert not hook.step(step)
    assert criterion.fired_at == 1 and not hook.frozen
    assert hook.step(5) and hook.freeze_step == 5
    assert hook.freeze_report["convergence_fired_at"] == 1
    assert len(criterion.trajectory) == 6
    hook.step(6)  # after the freeze the criterion is no longer updated
    assert len(criterion.trajectory) == 6


def test_bad_arguments():
    encoder, _, _loss, _ = make_dqn()
    with pytest.raises(ValueError, match="freeze_at"):
        FreezeEncoderHook(encoder, freeze_at=-1)
    with pytest.raises(ValueError, match="target_sync"):
        FreezeEncoderHook(encoder, freeze_at=0, target_sync="soft")
    with pytest.raises(TypeError, match="SplitEncoder"):
        FreezeEncoderHook(nn.Linear(2, 2), freeze_at=0)
