"""The environment factories run real Atari and DMC environments for a few steps."""

import pytest
import torch
from torchrl.envs.utils import check_env_specs

from torchrl_seer.envs import make_atari_env, make_dmc_env


@pytest.mark.parametrize("frame_stack", [1, 4])
def test_atari_pixels_follow_catframes_conventions(frame_stack):
    env = make_atari_env("Pong", frame_stack=frame_stack, seed=0)
    rollout = env.rollout(12)
    pixels = rollout["pixels"]
    assert pixels.shape == (12, frame_stack, 84, 84)
    assert pixels.dtype == torch.uint8
    assert rollout["action"].dtype == torch.int64
    # next obs of step t is the obs of step t+1
    assert torch.equal(rollout["next", "pixels"][:-1], pixels[1:])
    if frame_stack > 1:
        # at reset CatFrames repeats the first frame across the stack
        first = pixels[0]
        assert all(torch.equal(first[i], first[-1]) for i in range(frame_stack))
        # stacks shift by one frame per step
        assert torch.equal(pixels[1][:-1], pixels[0][1:])
    env.close()


def test_atari_specs_and_options():
    env = make_atari_env(
        "Breakout",
        frame_stack=2,
        sticky_action_prob=0.25,
        terminal_on_life_loss=True,
        clip_rewards=True,
        seed=1,
    )
    check_env_specs(env, seed=1)
    rollout = env.rollout(20)
    assert rollout["next", "reward"].abs().max() <= 1.0
    env.close()


def test_atari_seed_is_reproducible():
    a = make_atari_env("Pong", frame_stack=1, seed=3)
    b = make_atari_env("Pong", frame_stack=1, seed=3)
    torch.manual_seed(0)
    ra = a.rollout(8)
    torch.manual_seed(0)
    rb = b.rollout(8)
    assert torch.equal(ra["pixels"], rb["pixels"])


def test_atari_rejects_bad_arguments():
    with pytest.raises(ValueError, match="frame_stack"):
        make_atari_env("Pong", frame_stack=0)
    with pytest.raises(ValueError, match="sticky_action_prob"):
        make_atari_env("Pong", sticky_action_prob=1.5)


def test_dmc_pixels_render_headless_and_stack():
    env = make_dmc_env("cartpole", "swingup", frame_stack=3, seed=0)
    rollout = env.rollout(4)
    pixels = rollout["pixels"]
    assert pixels.shape == (4, 9, 84, 84)
    assert pixels.dtype == torch.uint8
    assert pixels.float().std() > 0  # a real rendered image, not a blank buffer
    assert torch.equal(rollout["next", "pixels"][:-1], pixels[1:])
    # first stack: the reset frame three times
    assert torch.equal(pixels[0][:3], pixels[0][6:])
    assert rollout["action"].dtype == torch.float32
    env.close()


def test_dmc_action_repeat_renders_once_per_agent_step():
    env = make_dmc_env("cartpole", "swingup", frame_stack=1, action_repeat=8, seed=0)
    rollout = env.rollout(3)
    assert rollout["pixels"].shape == (3, 3, 84, 84)
    # cartpole swingup: 1000 physics steps / 8 = 125 agent steps per episode
    env_full = make_dmc_env("cartpole", "swingup", frame_stack=1, action_repeat=8, seed=0)
    assert env_full.rollout(200)["next", "truncated"].nonzero()[0, 0].item() == 124
    env.close()


def test_dmc_states():
    env = make_dmc_env("walker", "walk", from_pixels=False, seed=0)
    check_env_specs(env, seed=0)
    rollout = env.rollout(5)
    assert rollout["observation"].shape == (5, 24)
    assert rollout["observation"].dtype == torch.float32


def test_dmc_rejects_unknown_task():
    with pytest.raises(ValueError, match="Unknown DMC task"):
        make_dmc_env("cartpole", "fly")
