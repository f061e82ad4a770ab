"""DeepMind Control Suite environments (pixels or states) as TorchRL environments."""

from __future__ import annotations

import os
from typing import Any

from tensordict import NestedKey
from torchrl.envs import (
    CatFrames,
    CatTensors,
    DMControlWrapper,
    DoubleToFloat,
    PermuteTransform,
    RewardSum,
    StepCounter,
    TransformedEnv,
)

from torchrl_seer.optional_dependencies import import_optional

__all__ = ["PLANET_ACTION_REPEAT", "make_dmc_env", "split_dmc_task"]

#: Action repeat of the PlaNet benchmark (Hafner et al., 2019), used by CURL, DrQ and SEER.
PLANET_ACTION_REPEAT: dict[str, int] = {
    "cartpole_swingup": 8,
    "reacher_easy": 4,
    "cheetah_run": 4,
    "finger_spin": 2,
    "ball_in_cup_catch": 4,
    "walker_walk": 2,
}


def _ensure_headless_rendering() -> None:
    """Selects Mesa EGL for MuJoCo when no display is available.

    MuJoCo reads ``MUJOCO_GL`` when it is first imported, so this must run before
    ``dm_control`` is imported anywhere in the process.
    """
    if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
        os.environ["MUJOCO_GL"] = "egl"
    if os.environ.get("MUJOCO_GL") == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")


def split_dmc_task(name: str) -> tuple[str, str]:
    """Splits a ``<domain>_<task>`` name into the Control Suite's domain and task.

    Domains may hold underscores (``ball_in_cup_catch`` is ``("ball_in_cup", "catch")``), so
    the name is matched against the suite's task list; nothing is built or rendered.

    Args:
        name (str): e.g. ``"cartpole_swingup"``.

    Returns:
        ``(domain, task)``.

    Raises:
        ValueError: the suite has no such task (the closest names are suggested).

    Examples:
        >>> from torchrl_seer.envs import split_dmc_task
        >>> split_dmc_task("ball_in_cup_catch")
        ('ball_in_cup', 'catch')
    """
    import difflib

    _ensure_headless_rendering()
    suite = import_optional("dm_control.suite", extra="dmc")
    tasks = {f"{domain}_{task}": (domain, task) for domain, task in suite.ALL_TASKS}
    if name in tasks:
        return tasks[name]
    close = difflib.get_close_matches(name, list(tasks), n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise ValueError(f"{name!r} is not a DeepMind Control Suite task <domain>_<task>.{hint}")


class _ActionRepeat:
    """A dm_env wrapper that repeats each action, summing rewards.

    It sits *below* dm_control's pixel wrapper so that frames are rendered once per agent
    step, not once per physics step (rendering is the dominant cost on a CPU).
    """

    def __init__(self, env: Any, repeat: int) -> None:
        self._env = env
        self._repeat = repeat

    def step(self, action: Any) -> Any:
        reward = 0.0
        discount = 1.0
        for _ in range(self._repeat):
            time_step = self._env.step(action)
            reward += (time_step.reward or 0.0) * discount
            discount *= time_step.discount if time_step.discount is not None else 1.0
            if time_step.last():
                break
        return time_step._replace(reward=reward, discount=discount)

    def __getattr__(self, name: str) -> Any:
        # reset, specs, physics and task (DMControlWrapper seeds task._random) pass through.
        return getattr(self._env, name)


def make_dmc_env(
    domain: str,
    task: str,
    *,
    from_pixels: bool = True,
    size: int = 84,
    frame_stack: int = 3,
    action_repeat: int | None = None,
    camera_id: int | None = None,
    pixels_key: NestedKey = "pixels",
    observation_key: NestedKey = "observation",
    seed: int | None = None,
    device: str = "cpu",
) -> TransformedEnv:
    """Builds a DeepMind Control Suite task as a TorchRL environment.

    From pixels, frames are rendered headless (``MUJOCO_GL=egl`` is set before MuJoCo is
    imported when no display is present) at ``size`` x ``size``, permuted to channels-first
    ``uint8`` and stacked along dim ``-3`` by :class:`~torchrl.envs.CatFrames`: ``pixels``
    has shape ``[3 * frame_stack, size, size]``. From states, the task's observation
    dictionary is flattened into one float32 vector under ``observation``.

    TorchRL's ``DMControlEnv(render_kwargs=...)`` forwards the keyword to the suite and
    fails; this factory loads the task with ``dm_control.suite.load`` and wraps it with
    :class:`~torchrl.envs.DMControlWrapper` instead. From pixels, the action repeat runs
    below the pixel wrapper, so one frame is rendered per agent step.

    Args:
        domain: the suite domain, e.g. ``"cartpole"``.
        task: the task, e.g. ``"swingup"``.

    Keyword Args:
        from_pixels: return rendered frames (``True``) or the state vector (``False``).
        size: height and width of rendered frames.
        frame_stack: frames stacked along the channel dim (pixels only; ``1`` disables).
        action_repeat: physics steps per agent step; defaults to the PlaNet value of the
            task (:data:`PLANET_ACTION_REPEAT`), or 1 for other tasks.
        camera_id: the camera to render; defaults to 2 for quadruped and 0 otherwise.
        pixels_key: the key for stacked frames.
        observation_key: the key for the state vector.
        seed: seeds the task's random state.
        device: the device of the returned tensors.

    Returns:
        A :class:`~torchrl.envs.TransformedEnv` with float32 actions in ``[-1, 1]``, float32
        rewards, ``episode_reward`` (:class:`~torchrl.envs.RewardSum`) and ``step_count``.
        Episodes end with ``truncated=True`` after 1000 physics steps.

    Examples:
        >>> from torchrl_seer.envs import make_dmc_env
        >>> env = make_dmc_env("cartpole", "swingup", frame_stack=3, seed=0)
        >>> td = env.rollout(2)
        >>> td["pixels"].shape, td["pixels"].dtype
        (torch.Size([2, 9, 84, 84]), torch.uint8)
        >>> states = make_dmc_env("cartpole", "swingup", from_pixels=False, seed=0)
        >>> states.rollout(2)["observation"].shape
        torch.Size([2, 5])
    """
    _ensure_headless_rendering()
    suite = import_optional("dm_control.suite", extra="dmc")

    if frame_stack < 1:
        raise ValueError(f"frame_stack must be >= 1, got {frame_stack}.")
    if (domain, task) not in suite.ALL_TASKS:
        raise ValueError(
            f"Unknown DMC task {domain}_{task}; expected one of "
            f"{sorted(f'{d}_{t}' for d, t in suite.ALL_TASKS)}."
        )
    if action_repeat is None:
        action_repeat = PLANET_ACTION_REPEAT.get(f"{domain}_{task}", 1)
    if action_repeat < 1:
        raise ValueError(f"action_repeat must be >= 1, got {action_repeat}.")
    task_kwargs = {"random": seed} if seed is not None else {}
    suite_env = suite.load(domain, task, task_kwargs=task_kwargs)

    if from_pixels:
        from dm_control.suite.wrappers import pixels

        if camera_id is None:
            camera_id = 2 if domain == "quadruped" else 0
        repeated = _ActionRepeat(suite_env, action_repeat) if action_repeat > 1 else suite_env
        pixel_env = pixels.Wrapper(
            repeated,
            pixels_only=True,
            render_kwargs={"height": size, "width": size, "camera_id": camera_id},
        )
        base = DMControlWrapper(pixel_env, device=device)
        env = TransformedEnv(base, DoubleToFloat())
        if pixels_key != "pixels":
            from torchrl.envs import RenameTransform

            env.append_transform(RenameTransform(["pixels"], [pixels_key]))
        env.append_transform(PermuteTransform(dims=(-1, -3, -2), in_keys=[pixels_key]))
        if frame_stack > 1:
            env.append_transform(CatFrames(N=frame_stack, dim=-3, in_keys=[pixels_key]))
    else:
        base = DMControlWrapper(suite_env, frame_skip=action_repeat, device=device)
        state_keys = list(base.observation_spec.keys())
        env = TransformedEnv(base, DoubleToFloat())
        env.append_transform(
            CatTensors(in_keys=state_keys, out_key=observation_key, del_keys=True, sort=True)
        )
    env.append_transform(RewardSum())
    env.append_transform(StepCounter())
    if seed is not None:
        env.set_seed(seed)
    return env
