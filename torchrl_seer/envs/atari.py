"""Atari environments with the standard DQN preprocessing, as TorchRL environments."""

from __future__ import annotations

from tensordict import NestedKey
from torchrl.envs import (
    CatFrames,
    EnvBase,
    GymWrapper,
    RenameTransform,
    RewardClipping,
    RewardSum,
    StepCounter,
    TransformedEnv,
    UnsqueezeTransform,
)

from torchrl_seer.optional_dependencies import import_optional

__all__ = ["make_atari_env"]


def make_atari_env(
    game: str,
    *,
    frame_stack: int = 4,
    frame_skip: int = 4,
    screen_size: int = 84,
    noop_max: int = 30,
    sticky_action_prob: float = 0.0,
    terminal_on_life_loss: bool = False,
    clip_rewards: bool = False,
    max_episode_steps: int | None = 108_000,
    pixels_key: NestedKey = "pixels",
    seed: int | None = None,
    device: str = "cpu",
) -> TransformedEnv:
    """Builds an Atari environment with DQN preprocessing as a TorchRL environment.

    The emulator runs without its own frame skip; gymnasium's
    :class:`~gymnasium.wrappers.AtariPreprocessing` then applies the preprocessing of
    Mnih et al. (2015): up to ``noop_max`` random no-ops at reset, ``frame_skip`` repeats of
    each action with a max-pool over the last two frames, conversion to grayscale and an
    area resize to ``screen_size`` x ``screen_size``. TorchRL transforms add the channel
    dimension and stack the last ``frame_stack`` frames with :class:`~torchrl.envs.CatFrames`,
    so ``pixels`` is a ``uint8`` tensor of shape ``[frame_stack, screen_size, screen_size]``
    and ``("next", "pixels")`` follows CatFrames' conventions (the first frame of an episode
    is repeated to fill the stack at reset).

    Pixels stay ``uint8``: models divide by 255 themselves, and replay buffers hold one byte
    per pixel.

    Args:
        game: the ALE game, e.g. ``"Pong"`` or ``"ALE/Pong-v5"``.

    Keyword Args:
        frame_stack: how many frames CatFrames stacks along dim ``-3``; ``1`` keeps single
            frames (shape ``[1, H, W]``).
        frame_skip: action repeat inside :class:`AtariPreprocessing`.
        screen_size: side of the square grayscale frame.
        noop_max: the largest number of no-op actions taken at reset (0 disables).
        sticky_action_prob: ALE's ``repeat_action_probability`` (0.25 in the v5 protocol of
            Machado et al. 2018; 0.0 in the classic DQN protocol).
        terminal_on_life_loss: ends the episode (``terminated=True``) when a life is lost.
        clip_rewards: clips rewards to ``[-1, 1]`` with :class:`~torchrl.envs.RewardClipping`.
        max_episode_steps: truncates episodes after this many agent steps
            (``108_000`` = 30 minutes of play at frame skip 4); ``None`` disables.
        pixels_key: the key the stacked frames are written to.
        seed: seeds the emulator and the no-op sampling.
        device: the device of the returned tensors.

    Returns:
        A :class:`~torchrl.envs.TransformedEnv` with a scalar integer action
        (``categorical_action_encoding=True``), ``pixels`` of dtype ``uint8``, an
        ``episode_reward`` accumulated by :class:`~torchrl.envs.RewardSum` and a
        ``step_count`` from :class:`~torchrl.envs.StepCounter`.

    Examples:
        >>> from torchrl_seer.envs import make_atari_env
        >>> env = make_atari_env("Pong", frame_stack=4, seed=0)
        >>> rollout = env.rollout(3)
        >>> rollout["pixels"].shape, rollout["pixels"].dtype
        (torch.Size([3, 4, 84, 84]), torch.uint8)
        >>> bool((rollout["next", "pixels"][:-1] == rollout["pixels"][1:]).all())
        True
    """
    ale_py = import_optional("ale_py", extra="atari")
    gym = import_optional("gymnasium", extra="atari")
    import_optional("cv2", extra="atari")  # AtariPreprocessing resizes frames with OpenCV
    from gymnasium.wrappers import AtariPreprocessing

    if frame_stack < 1:
        raise ValueError(f"frame_stack must be >= 1, got {frame_stack}.")
    if not 0.0 <= sticky_action_prob <= 1.0:
        raise ValueError(f"sticky_action_prob must be in [0, 1], got {sticky_action_prob}.")
    gym.register_envs(ale_py)
    env_id = game if game.startswith("ALE/") else f"ALE/{game}-v5"
    gym_env = gym.make(
        env_id,
        frameskip=1,
        repeat_action_probability=sticky_action_prob,
        max_episode_steps=None,
        full_action_space=False,
    )
    gym_env = AtariPreprocessing(
        gym_env,
        noop_max=noop_max,
        frame_skip=frame_skip,
        screen_size=screen_size,
        terminal_on_life_loss=terminal_on_life_loss,
        grayscale_obs=True,
        grayscale_newaxis=False,
        scale_obs=False,
    )
    if max_episode_steps is not None:
        gym_env = gym.wrappers.TimeLimit(gym_env, max_episode_steps=max_episode_steps)
    base: EnvBase = GymWrapper(gym_env, categorical_action_encoding=True, device=device)
    env = TransformedEnv(base, RenameTransform(["observation"], [pixels_key]))
    env.append_transform(UnsqueezeTransform(dim=-3, in_keys=[pixels_key]))
    if frame_stack > 1:
        env.append_transform(CatFrames(N=frame_stack, dim=-3, in_keys=[pixels_key]))
    if clip_rewards:
        env.append_transform(RewardClipping(-1.0, 1.0))
    env.append_transform(RewardSum())
    env.append_transform(StepCounter())
    if seed is not None:
        env.set_seed(seed)
    return env
