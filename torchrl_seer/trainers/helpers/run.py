"""A recipe's run: its folder, saved configuration, TorchRL logger and checkpoints."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torchrl.data import ReplayBuffer
from torchrl.record.loggers import Logger, generate_exp_name, get_logger

from torchrl_seer.trainers.helpers.checkpoint import FrameSegment, RunCheckpointer, frame_segments

__all__ = ["RecipeRun"]

# settings a resumed run may change: the run's length, where it runs, and how it logs
RESUMABLE_OVERRIDES = ("collector.total_frames", "device", "threads", "resume")
# settings a resumed run ignores: the run folder is the resumed one
IGNORED_ON_RESUME = ("logger.output_dir",)


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(cfg, dict):
        out: dict[str, Any] = {}
        for key, value in cfg.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: cfg}


class RecipeRun:
    """The run folder of a recipe, its configuration, its TorchRL logger and its checkpoints.

    A new run creates ``<logger.output_dir>/<exp_name>/`` (``exp_name`` from TorchRL's
    ``generate_exp_name``), saves the configuration there as ``config.yaml``, creates the
    logger with ``get_logger`` (``logger.backend: null`` logs nothing; W&B gets
    ``logger.project_name`` and ``logger.group_name``) and logs the hyper-parameters.

    With ``resume=<run dir>`` the run continues in that folder: the saved configuration is
    used (only ``collector.total_frames``, ``device`` and ``threads`` may be changed on the
    command line; ``logger.output_dir`` and the ``kept_on_resume`` settings are ignored; any
    other difference is refused), and the
    logger continues from the state saved with the last checkpoint, in the resumed folder (a
    run folder that was moved or copied logs into itself). Every scalar is logged at
    environment frames.

    Args:
        cfg (DictConfig): the recipe's configuration, already checked.
        recipe (str): the recipe's name (first part of the experiment name).

    Keyword Args:
        tag (str, optional): second part of the experiment name, e.g. the environment.
        kept_on_resume (sequence of str, optional): settings the recipe resolved for the machine
            when the run started (e.g. an ``auto`` it replaced by ``true`` or ``false`` before
            creating the run): a resumed run keeps the saved value, whatever is given.

    Attributes:
        cfg (DictConfig): the configuration the run uses (the saved one when resumed).
        dir (Path): the run folder.
        exp_name (str): the experiment name.
        logger (Logger or None): the TorchRL logger.
        checkpointer (RunCheckpointer): the run's checkpoint folder, ``<dir>/checkpoint``.
        resumed (dict or None): the checkpoint payload restored by :meth:`restore`.

    Examples:
        >>> import tempfile
        >>> from omegaconf import OmegaConf
        >>> from torchrl_seer.trainers.helpers import RecipeRun
        >>> cfg = OmegaConf.create({"seed": 0, "resume": None, "checkpoint": {"interval": 0},
        ...     "logger": {"backend": None, "output_dir": tempfile.mkdtemp(), "exp_name": "demo",
        ...                "project_name": "p", "group_name": None}})
        >>> run = RecipeRun(cfg, "my_recipe", tag="Pong")
        >>> run.dir.name.startswith("my_recipe_Pong_"), run.logger is None
        (True, True)
        >>> run.log_scalar("loss", 1.0, step=10)  # no logger: nothing happens
    """

    def __init__(
        self,
        cfg: DictConfig,
        recipe: str,
        *,
        tag: str = "",
        kept_on_resume: Sequence[str] = (),
    ) -> None:
        self.resumed: dict[str, Any] | None = None
        logger_state = None
        if cfg.resume is not None:
            self.dir = Path(cfg.resume)
            saved = OmegaConf.load(self.dir / "config.yaml")
            assert isinstance(saved, DictConfig)
            self.cfg = self._merge_resumed(saved, cfg, kept=tuple(kept_on_resume))
            self.exp_name = json.loads((self.dir / "run.json").read_text())["exp_name"]
        else:
            self.cfg = cfg
            name = "_".join(part for part in (tag, cfg.logger.exp_name) if part)
            self.exp_name = generate_exp_name(recipe, name.replace("/", "-"))
            self.dir = Path(cfg.logger.output_dir) / self.exp_name
            self.dir.mkdir(parents=True)
            (self.dir / "run.json").write_text(json.dumps({"exp_name": self.exp_name}))
        OmegaConf.save(self.cfg, self.dir / "config.yaml")
        self.checkpointer = RunCheckpointer(self.dir / "checkpoint")
        if cfg.resume is not None and self.checkpointer.exists():
            logger_state = self.checkpointer.read()["logger"]
            if logger_state is not None:
                # the saved state names the folder the run was in when it was saved: a run
                # folder moved or copied since then logs into itself, not into the original
                logger_state = {**logger_state, "log_dir": str(self.dir.resolve())}
        self.logger = self._make_logger(logger_state)
        if self.logger is not None and logger_state is None:
            # scalars and strings only: TensorBoard's hparams refuse None and lists
            hparams = _flatten(OmegaConf.to_container(self.cfg, resolve=True))
            self.logger.log_hparams(
                {
                    key: value if isinstance(value, (bool, int, float, str)) else str(value)
                    for key, value in hparams.items()
                }
            )

    @staticmethod
    def _merge_resumed(
        saved: DictConfig, given: DictConfig, *, kept: tuple[str, ...]
    ) -> DictConfig:
        saved_flat = _flatten(OmegaConf.to_container(saved, resolve=True))
        given_flat = _flatten(OmegaConf.to_container(given, resolve=True))
        # settings the recipe gained after the run was saved take their given value; every
        # saved setting must be given unchanged
        added = sorted(set(given_flat) - set(saved_flat))
        differ = sorted(
            key
            for key in saved_flat
            if key not in RESUMABLE_OVERRIDES + IGNORED_ON_RESUME + kept
            and saved_flat[key] != given_flat.get(key)
        )
        if differ:
            changes = ", ".join(
                f"{key}: {saved_flat.get(key)!r} -> {given_flat.get(key)!r}" for key in differ
            )
            raise ValueError(
                f"a resumed run keeps its saved configuration; only {RESUMABLE_OVERRIDES[:-1]} "
                f"may change, got {changes}."
            )
        merged = saved.copy()
        for key in added:
            OmegaConf.update(merged, key, given_flat[key], force_add=True)
        for key in RESUMABLE_OVERRIDES:
            if OmegaConf.select(given, key) is not None or key == "resume":
                OmegaConf.update(merged, key, OmegaConf.select(given, key), force_add=True)
        return merged

    def _make_logger(self, state: Mapping[str, Any] | None) -> Logger | None:
        backend = self.cfg.logger.backend
        if backend is None:
            return None
        kwargs: dict[str, Any] = {}
        if backend == "wandb":
            kwargs["wandb_kwargs"] = {
                "project": self.cfg.logger.project_name,
                "group": self.cfg.logger.group_name,
                "config": OmegaConf.to_container(self.cfg, resolve=True),
            }
        return get_logger(
            backend, logger_name=str(self.dir), experiment_name=self.exp_name,
            state_dict=state, **kwargs,
        )  # fmt: skip

    def log_scalar(self, name: str, value: float, step: int) -> None:
        """Logs ``value`` at ``step`` (environment frames); does nothing without a logger."""
        if self.logger is not None:
            self.logger.log_scalar(name, float(value), step=step)

    def segments(self, total_frames: int, *, start: int = 0) -> list[FrameSegment]:
        """The run's checkpoint intervals from ``start`` (see :func:`frame_segments`)."""
        return list(
            frame_segments(
                total_frames, self.cfg.checkpoint.interval, start=start, seed=self.cfg.seed
            )
        )

    def save(
        self,
        frames: int,
        *,
        state: Mapping[str, Any],
        replay_buffers: Mapping[str, ReplayBuffer] | None = None,
        extra: Any = None,
    ) -> None:
        """Checkpoints the run if checkpoints are on (``checkpoint.interval > 0``).

        Args:
            frames (int): collector frames reached.

        Keyword Args:
            state (mapping): name -> object with ``state_dict()``.
            replay_buffers (mapping, optional): name -> replay buffer.
            extra (optional): any picklable record (e.g. what the report plots).
        """
        if self.cfg.checkpoint.interval > 0:
            self.checkpointer.save(
                frames, state=state, replay_buffers=replay_buffers, extra=extra, logger=self.logger
            )

    def restore(
        self,
        *,
        state: Mapping[str, Any],
        replay_buffers: Mapping[str, ReplayBuffer] | None = None,
    ) -> tuple[int, Any]:
        """Restores the last checkpoint of a resumed run.

        Keyword Args:
            state (mapping): name -> object with ``load_state_dict()``, in restore order.
            replay_buffers (mapping, optional): name -> replay buffer.

        Returns:
            ``(frames, extra)``: collector frames reached and the saved record;
            ``(0, None)`` when the run is new or was stopped before its first checkpoint.
        """
        if self.cfg.resume is None or not self.checkpointer.exists():
            return 0, None
        self.resumed = self.checkpointer.load(state=state, replay_buffers=replay_buffers)
        return self.resumed["frames"], self.resumed["extra"]
