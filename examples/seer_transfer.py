"""SEER transfer: freeze an encoder on one Atari game, then start another game frozen at step 0.

1. train DQN + SEER on the source game (``seer_atari.py``), freezing the data-efficient CNN at
   T_f and saving its frozen layers at the end;
2. train on the target game with that CNN loaded and ``seer.freeze_at=0``: the hook freezes
   before the first transition is written, so the buffer stores 576-float latents from the start
   and only the Q head ever trains.

Both runs write their usual report; the target run's report shows no "before freeze" updates.
Configuration: ``examples/configs/seer_transfer.yaml``, e.g.::

    python examples/seer_transfer.py source.env_name=Pong target.env_name=Breakout seed=1
"""

from __future__ import annotations

from pathlib import Path

import hydra
import seer_atari
from omegaconf import DictConfig, OmegaConf

from torchrl_seer.trainers.helpers import (
    check_atari_game,
    check_config,
    load_recipe_config,
)

CONFIGS = Path(__file__).resolve().parent / "configs"
PASSED_ON = ("seed", "device", "threads", "logger.backend", "logger.output_dir",
             "logger.project_name", "logger.group_name", "checkpoint.interval")  # fmt: skip


def _recipe_config(cfg: DictConfig, *overrides: str) -> DictConfig:
    shared = [f"{key}={_value(cfg, key)}" for key in PASSED_ON]
    return load_recipe_config(CONFIGS, "seer_atari", [*shared, *cfg.recipe_overrides, *overrides])


def _value(cfg: DictConfig, key: str) -> str:
    value = OmegaConf.select(cfg, key)
    return "null" if value is None else str(value)


def train(cfg: DictConfig) -> tuple[Path, Path]:
    """Runs the source then the target game; returns both report paths."""
    check_config(
        cfg,
        positive=["source.total_frames", "target.total_frames", "target.latent_capacity"],
        non_negative=["source.freeze_at"],
    )
    if cfg.resume is not None:
        raise ValueError("resume each of the two runs with seer_atari.py resume=<its run dir>.")
    check_atari_game(cfg.source.env_name)
    check_atari_game(cfg.target.env_name)
    encoder_path = Path(cfg.logger.output_dir) / f"seer_encoder_{cfg.source.env_name}.pt"
    source = _recipe_config(
        cfg,
        f"env.name={cfg.source.env_name}",
        f"collector.total_frames={cfg.source.total_frames}",
        f"seer.freeze_at={cfg.source.freeze_at}",
        f"seer.save_encoder={encoder_path}",
    )
    target = _recipe_config(
        cfg,
        f"env.name={cfg.target.env_name}",
        f"collector.total_frames={cfg.target.total_frames}",
        "seer.freeze_at=0",
        f"seer.latent_capacity={cfg.target.latent_capacity}",
    )
    seer_atari.check(source)
    seer_atari.check(target)  # before the source run: a bad target setting fails first
    encoder_path.parent.mkdir(parents=True, exist_ok=True)
    source_report = seer_atari.train(source)
    target.seer.load_encoder = str(encoder_path)
    return source_report, seer_atari.train(target)


@hydra.main(config_path="configs", config_name="seer_transfer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point: hydra composes the configuration."""
    train(cfg)


if __name__ == "__main__":
    main()
