"""What every recipe shares: config checks, device, seeds, run folder, logger, checkpoints, report.

Mirrors :mod:`torchrl.trainers.helpers`: small functions and classes a training script calls in
order, each documented with an example. A recipe reads:

1. :func:`check_config` (and the ``check_*`` functions) before anything is created;
2. :func:`resolve_device` and :func:`seed_everything`;
3. :class:`RecipeRun` (the run folder, its saved configuration, the TorchRL logger);
4. :class:`RunCheckpointer` (save every ``checkpoint.interval`` frames, ``resume=<run dir>``);
5. :class:`EpisodeReturns` (finished episodes, logged at environment frames);
6. :func:`write_report` (markdown + PNG + JSON) at every evaluation and at the end.
"""

from torchrl_seer.trainers.helpers.checkpoint import RunCheckpointer, frame_segments
from torchrl_seer.trainers.helpers.config import (
    check_atari_game,
    check_choice,
    check_config,
    check_positive,
    load_recipe_config,
)
from torchrl_seer.trainers.helpers.device import autocast, resolve_device
from torchrl_seer.trainers.helpers.episodes import EpisodeReturns
from torchrl_seer.trainers.helpers.report import ReportPlot, ReportTable, write_report
from torchrl_seer.trainers.helpers.run import RecipeRun
from torchrl_seer.trainers.helpers.seeding import get_rng_state, seed_everything, set_rng_state
from torchrl_seer.trainers.helpers.seer_report import write_seer_report

__all__ = [
    "EpisodeReturns",
    "RecipeRun",
    "ReportPlot",
    "ReportTable",
    "RunCheckpointer",
    "autocast",
    "check_atari_game",
    "check_choice",
    "check_config",
    "check_positive",
    "frame_segments",
    "get_rng_state",
    "load_recipe_config",
    "resolve_device",
    "seed_everything",
    "set_rng_state",
    "write_report",
    "write_seer_report",
]
