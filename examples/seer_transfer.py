"""SEER transfer: freeze an encoder on one Atari game, then start another game frozen at step 0.

1. train DQN + SEER on the source game (``seer_atari.py``), freezing the data-efficient CNN at
   T_f and saving its frozen layers at the end;
2. train on the target game with that CNN loaded and ``seer.freeze_at=0``: the hook freezes
   before the first transition is written, so the buffer stores 576-float latents from the start
   and only the Q head ever trains.

Both runs write their usual report; the target run's report shows no "before freeze" updates.
Both live in the transfer's run folder (``source/``, ``target/``, the encoder, ``stages.json``);
``resume=<transfer run dir>`` skips a finished stage and resumes an unfinished one from its last
checkpoint (``checkpoint.interval`` is passed on to both runs).

Configuration: ``examples/configs/seer_transfer.yaml``, e.g.::

    python examples/seer_transfer.py source.env_name=Pong target.env_name=Breakout seed=1
"""

from __future__ import annotations

import json
from pathlib import Path

import hydra
import seer_atari
from omegaconf import DictConfig, OmegaConf

from torchrl_seer.trainers.helpers import (
    RecipeRun,
    check_atari_game,
    check_config,
    load_recipe_config,
)

CONFIGS = Path(__file__).resolve().parent / "configs"
PASSED_ON = ("seed", "device", "threads", "logger.backend", "logger.project_name",
             "logger.group_name", "checkpoint.interval")  # fmt: skip


def _recipe_config(cfg: DictConfig, *overrides: str) -> DictConfig:
    shared = [f"{key}={_value(cfg, key)}" for key in PASSED_ON]
    return load_recipe_config(CONFIGS, "seer_atari", [*shared, *cfg.recipe_overrides, *overrides])


def _value(cfg: DictConfig, key: str) -> str:
    value = OmegaConf.select(cfg, key)
    return "null" if value is None else str(value)


def train(cfg: DictConfig) -> tuple[Path, Path]:
    """Runs the source then the target game; returns both report paths.

    The transfer's run folder holds the two ``seer_atari`` runs (``source/`` and ``target/``),
    the source's frozen encoder and ``stages.json`` (the stages that finished). With
    ``resume=<transfer run dir>`` a finished stage is skipped and an unfinished one is resumed
    from its last checkpoint (``seer_atari.py resume=<its run dir>``).
    """
    check_config(
        cfg,
        positive=["source.total_frames", "target.total_frames", "target.latent_capacity"],
        non_negative=["source.freeze_at"],
    )
    check_atari_game(cfg.source.env_name)
    check_atari_game(cfg.target.env_name)
    for stage in ("source", "target"):  # a bad target setting fails before the source runs
        seer_atari.check(_stage_config(cfg, stage, Path(cfg.logger.output_dir)))
    run = RecipeRun(cfg, "seer_transfer", tag=f"{cfg.source.env_name}-{cfg.target.env_name}")
    cfg = run.cfg
    stages_file = run.dir / "stages.json"
    finished = json.loads(stages_file.read_text()) if stages_file.is_file() else {}
    reports = []
    for stage in ("source", "target"):
        if stage in finished:
            reports.append(Path(finished[stage]))
            continue
        stage_cfg = _stage_config(cfg, stage, run.dir)
        started = sorted(p.parent for p in (run.dir / stage).glob("*/run.json"))
        if started:  # stopped during this stage: continue its run
            stage_cfg.resume = str(started[0])
        seer_atari.check(stage_cfg)
        reports.append(seer_atari.train(stage_cfg))
        finished[stage] = str(reports[-1])
        stages_file.write_text(json.dumps(finished, indent=1))
    return reports[0], reports[1]


def _stage_config(cfg: DictConfig, stage: str, run_dir: Path) -> DictConfig:
    """The ``seer_atari`` configuration of the ``source`` or ``target`` stage."""
    encoder_path = run_dir / f"seer_encoder_{cfg.source.env_name}.pt"
    if stage == "source":
        overrides = [
            f"env.name={cfg.source.env_name}",
            f"collector.total_frames={cfg.source.total_frames}",
            f"seer.freeze_at={cfg.source.freeze_at}",
            f"seer.save_encoder={encoder_path}",
        ]
    else:
        overrides = [
            f"env.name={cfg.target.env_name}",
            f"collector.total_frames={cfg.target.total_frames}",
            "seer.freeze_at=0",
            f"seer.latent_capacity={cfg.target.latent_capacity}",
        ]
    stage_cfg = _recipe_config(cfg, *overrides, f"logger.output_dir={run_dir / stage}")
    if stage == "target" and encoder_path.is_file():
        stage_cfg.seer.load_encoder = str(encoder_path)
    return stage_cfg


@hydra.main(config_path="configs", config_name="seer_transfer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    """Command-line entry point: hydra composes the configuration."""
    train(cfg)


if __name__ == "__main__":
    main()
