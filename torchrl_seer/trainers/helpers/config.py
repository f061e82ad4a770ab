"""Loading and checking a recipe's hydra configuration before anything is created."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

__all__ = [
    "check_atari_game",
    "check_choice",
    "check_config",
    "check_positive",
    "load_recipe_config",
]

LOGGER_BACKENDS = (None, "csv", "tensorboard", "wandb", "mlflow")


def load_recipe_config(
    config_dir: str | Path, config_name: str, overrides: Sequence[str] = ()
) -> DictConfig:
    """Composes a recipe's configuration as ``python recipe.py <overrides>`` would.

    Uses hydra's compose API, for tests and notebooks that call a recipe's ``train(cfg)``.

    Args:
        config_dir (str or Path): the folder of the recipe's config files.
        config_name (str): the config file name, without ``.yaml``.
        overrides (sequence of str, optional): hydra overrides, e.g. ``["seed=3"]``.

    Returns:
        The composed :class:`~omegaconf.DictConfig`.
    """
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides))


_MISSING = object()


def _get(cfg: DictConfig | Mapping, key: str) -> Any:
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(dict(cfg))
    value = OmegaConf.select(node, key, default=_MISSING)
    if value is _MISSING:
        raise KeyError(f"the configuration has no {key!r}.")
    return value


def check_positive(cfg: DictConfig | Mapping, *keys: str, allow_zero: bool = False) -> None:
    """Refuses a setting that is not a positive number (``> 0``, or ``>= 0`` with allow_zero).

    Args:
        cfg (DictConfig or Mapping): the configuration.
        *keys (str): dotted setting names, e.g. ``"collector.total_frames"``.

    Keyword Args:
        allow_zero (bool, optional): accept ``0``. Defaults to ``False``.

    Raises:
        ValueError: naming the setting, what was expected and what was given.

    Examples:
        >>> from omegaconf import OmegaConf
        >>> from torchrl_seer.trainers.helpers import check_positive
        >>> check_positive(OmegaConf.create({"optim": {"batch_size": 0}}), "optim.batch_size")
        Traceback (most recent call last):
            ...
        ValueError: optim.batch_size must be > 0, got 0.
    """
    for key in keys:
        value = _get(cfg, key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} must be a number, got {value!r}.")
        if value < 0 or (value == 0 and not allow_zero):
            raise ValueError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}.")


def check_choice(cfg: DictConfig | Mapping, key: str, choices: Iterable[Any]) -> None:
    """Refuses a setting outside ``choices`` (every value of a list setting is checked).

    Args:
        cfg (DictConfig or Mapping): the configuration.
        key (str): dotted setting name.
        choices (iterable): the accepted values.

    Raises:
        ValueError: naming the setting and the accepted values.

    Examples:
        >>> from omegaconf import OmegaConf
        >>> from torchrl_seer.trainers.helpers import check_choice
        >>> check_choice(OmegaConf.create({"loss": {"precision": "fp8"}}), "loss.precision",
        ...              ["fp32", "bf16"])
        Traceback (most recent call last):
            ...
        ValueError: loss.precision must be one of ['fp32', 'bf16'], got 'fp8'.
    """
    choices = list(choices)
    value = _get(cfg, key)
    values = list(value) if OmegaConf.is_list(value) or isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"{key} must hold at least one of {choices}, got an empty list.")
    for item in values:
        if item not in choices:
            raise ValueError(f"{key} must be one of {choices}, got {item!r}.")


def check_atari_game(game: str) -> None:
    """Refuses an Atari game that ALE does not know, without creating an emulator.

    Args:
        game (str): a game name such as ``"Pong"`` or an id such as ``"ALE/Pong-v5"``.

    Raises:
        ValueError: naming the game and the closest known names.
    """
    import ale_py
    import gymnasium as gym

    gym.register_envs(ale_py)
    env_id = game if game.startswith("ALE/") else f"ALE/{game}-v5"
    if env_id in gym.registry:
        return
    known = sorted(
        name[4:-3] for name in gym.registry if name.startswith("ALE/") and name.endswith("-v5")
    )
    close = difflib.get_close_matches(str(game), known, n=3)
    hint = f" Did you mean {close}?" if close else ""
    raise ValueError(f"env.name={game!r} is not an ALE game.{hint}")


def check_config(
    cfg: DictConfig,
    *,
    positive: Sequence[str] = (),
    non_negative: Sequence[str] = (),
    choices: Mapping[str, Iterable[Any]] | None = None,
) -> None:
    """Checks the settings every recipe shares, then the recipe's own ones.

    Shared settings: ``seed`` (an integer), ``logger.backend`` (``null``, ``csv``,
    ``tensorboard``, ``wandb`` or ``mlflow``), ``checkpoint.interval`` (``>= 0``; ``0``
    disables checkpoints; a multiple of ``collector.frames_per_batch`` when the recipe has it)
    and ``resume`` (``null`` or an existing run folder).

    Args:
        cfg (DictConfig): the recipe's configuration.

    Keyword Args:
        positive (sequence of str): settings that must be ``> 0``.
        non_negative (sequence of str): settings that must be ``>= 0``.
        choices (mapping, optional): setting name -> accepted values.

    Raises:
        ValueError: on the first setting that fails, naming it.

    Examples:
        >>> from omegaconf import OmegaConf
        >>> from torchrl_seer.trainers.helpers import check_config
        >>> cfg = OmegaConf.create({"seed": 0, "resume": None, "logger": {"backend": None},
        ...                         "checkpoint": {"interval": 0},
        ...                         "collector": {"total_frames": -5}})
        >>> check_config(cfg, positive=["collector.total_frames"])
        Traceback (most recent call last):
            ...
        ValueError: collector.total_frames must be > 0, got -5.
    """
    if isinstance(cfg.seed, bool) or not isinstance(cfg.seed, int):
        raise ValueError(f"seed must be an integer, got {cfg.seed!r}.")
    check_choice(cfg, "logger.backend", LOGGER_BACKENDS)
    check_positive(cfg, "checkpoint.interval", allow_zero=True)
    frames_per_batch = OmegaConf.select(cfg, "collector.frames_per_batch")
    if frames_per_batch and cfg.checkpoint.interval % frames_per_batch:
        raise ValueError(
            f"checkpoint.interval ({cfg.checkpoint.interval}) must be a multiple of "
            f"collector.frames_per_batch ({frames_per_batch})."
        )
    if cfg.resume is not None and not (Path(cfg.resume) / "config.yaml").is_file():
        raise ValueError(f"resume={cfg.resume!r} is not a run folder (no config.yaml in it).")
    check_positive(cfg, *positive)
    check_positive(cfg, *non_negative, allow_zero=True)
    for key, accepted in (choices or {}).items():
        check_choice(cfg, key, accepted)
