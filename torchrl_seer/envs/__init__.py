"""Environment factories that return TorchRL environments with standard preprocessing."""

from torchrl_seer.envs.atari import make_atari_env
from torchrl_seer.envs.dmc import PLANET_ACTION_REPEAT, make_dmc_env, split_dmc_task

__all__ = ["PLANET_ACTION_REPEAT", "make_atari_env", "make_dmc_env", "split_dmc_task"]
