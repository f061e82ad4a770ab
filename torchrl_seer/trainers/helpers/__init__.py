"""What every recipe shares: config checks, device, seeds, run folder, logger, checkpoints, report.

Mirrors :mod:`torchrl.trainers.helpers`: small functions and classes a training script calls in
order, each documented with an example. A recipe reads:

1. :func:`check_config` (and the ``check_*`` functions) before anything is created;
2. :func:`resolve_device` and :func:`seed_everything`;
3. :class:`RecipeRun` (the run folder, its saved configuration, the TorchRL logger);
4. :class:`RunCheckpointer` (save every ``checkpoint.interval`` frames, ``resume=<run dir>``);
5. :class:`EpisodeReturns` (finished episodes, logged at environment frames);
6. :func:`write_report` (markdown + PNG + JSON) at every evaluation and at the end.

It needs the ``examples`` extra (hydra, OmegaConf, matplotlib): importing it without that extra
raises an :class:`ImportError` that names the extra.
"""

from torchrl_seer.optional_dependencies import import_optional

# The recipe toolkit reads hydra/OmegaConf configs and plots reports: the ``examples`` extra.
import_optional("omegaconf", extra="examples")

from torchrl_seer.trainers.helpers.checkpoint import RunCheckpointer, frame_segments  # noqa: E402
from torchrl_seer.trainers.helpers.config import (  # noqa: E402
    check_atari_game,
    check_choice,
    check_config,
    check_positive,
    load_recipe_config,
)
from torchrl_seer.trainers.helpers.device import autocast, resolve_device  # noqa: E402
from torchrl_seer.trainers.helpers.episodes import EpisodeReturns  # noqa: E402
from torchrl_seer.trainers.helpers.report import ReportPlot, ReportTable, write_report  # noqa: E402
from torchrl_seer.trainers.helpers.run import RecipeRun  # noqa: E402
from torchrl_seer.trainers.helpers.seeding import get_rng_state, seed_everything, set_rng_state  # noqa: E402
from torchrl_seer.trainers.helpers.seer_freeze import (  # noqa: E402
    check_freeze_at,
    freeze_criterion,
    save_encoder_trajectory,
)
from torchrl_seer.trainers.helpers.seer_report import write_seer_report  # noqa: E402

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
    "check_freeze_at",
    "check_positive",
    "frame_segments",
    "freeze_criterion",
    "get_rng_state",
    "load_recipe_config",
    "resolve_device",
    "save_encoder_trajectory",
    "seed_everything",
    "set_rng_state",
    "write_report",
    "write_seer_report",
]
