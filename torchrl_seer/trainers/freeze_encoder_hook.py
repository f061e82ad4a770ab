"""SEER's freeze as a TorchRL trainer hook: freeze the encoder, then switch replay to latents."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl import logger as torchrl_logger
from torchrl.data import LazyTensorStorage, ReplayBuffer
from torchrl.record.loggers import Logger
from torchrl.trainers import Trainer, TrainerHookBase

from torchrl_seer.data.latent_encode_transform import LatentEncodeTransform
from torchrl_seer.data.latent_migration import LatentReplayOptions, migrate_to_latent_replay
from torchrl_seer.data.torchrl_internals import (
    is_latent_replay,
    switch_to_latent_replay,
    watch_for_latent_checkpoint,
)
from torchrl_seer.modules.encoders import SplitEncoder
from torchrl_seer.trainers.encoder_convergence import ParameterConvergence
from torchrl_seer.trainers.encoder_freeze import (
    TARGET_SYNC_MODES,
    FreezeSnapshot,
    freeze_encoder,
    stop_training_frozen_layers,
)

__all__ = ["FreezeEncoderHook"]

_STATE_KEYS = ("frozen", "freeze_step", "storage_mode", "latent_capacity", "freeze_report")


class FreezeEncoderHook(TrainerHookBase):
    """Freezes the lower encoder layers at T_f and moves the replay buffer to latent storage.

    At the freeze step (``freeze_at``: a step count, or ``"auto"`` for
    :class:`~torchrl_seer.trainers.ParameterConvergence`) it runs two steps:

    1. the model side, :func:`~torchrl_seer.trainers.freeze_encoder`: ``requires_grad=False``
       on every copy of the frozen layers in ``encoder`` and ``modules`` (stacked Q copies,
       targets, low-precision copies), their optimizer state dropped, every copy synced to the
       encoder and the targets synced (``target_sync``);
    2. the replay side, :func:`~torchrl_seer.data.migrate_to_latent_replay` with
       ``replay_options``: every stored transition encoded, the buffer switched to a latent
       storage sized to the memory budget, the encode-on-write transform appended, the pixel
       storage released.

    Then it logs what it did (``torchrl`` logger, and ``logger`` if given), keeps it in
    :attr:`freeze_report` and calls ``on_freeze``. The freeze is atomic: if the migration fails,
    parameters, optimizers, buffer and hook are left exactly as they were and the error is
    raised.

    In a TorchRL :class:`~torchrl.trainers.Trainer` use :meth:`register`; in a hand-written loop
    call :meth:`step` once per collected batch, *after* writing it to the buffer, so the
    transition collected at T_f is migrated too. ``freeze_at=0`` with an empty buffer starts a
    run in latent mode from the first transition (transfer of a saved encoder).

    The hook is checkpointed (:meth:`state_dict`): frozen flag, T_f, storage mode and latent
    capacity. Restoring a frozen state re-applies the model-side freeze and switches the buffer
    to an empty latent storage of the saved capacity, into which the buffer's own checkpoint is
    then loaded. With ``dumps``/``loads`` checkpoints (``rb.dumps``, TorchRL's
    :class:`~torchrl.checkpoint.Checkpoint` used by the Trainer) the order does not matter: the
    buffer's checkpoint is marked as latent and the pixel buffer switches itself when it loads
    one. With ``state_dict`` checkpoints restore this hook before the replay buffer (in a
    Trainer, register it first); a buffer that already holds transitions when the hook is
    restored is refused with an error. Restoring is atomic too, and restoring a hook that is
    already frozen changes neither the parameters nor the buffer. Optimizer checkpoints taken
    after the freeze are tagged, and loading one purges the frozen parameters first, so
    optimizers may be restored before or after the hook.

    Args:
        encoder (SplitEncoder): the online encoder (its ``frozen_part`` defines the latents).

    Keyword Args:
        freeze_at (int or str): freeze step T_f, or ``"auto"``.
        modules (sequence of nn.Module): other modules or loss modules holding copies of the
            encoder. Defaults to ``()``.
        optimizers (sequence of torch.optim.Optimizer): optimizers to purge. Defaults to ``()``.
        target_sync (str): ``"full"`` or ``"encoder"``. Defaults to ``"full"``.
        replay_buffer (ReplayBuffer, optional): the pixel buffer to migrate.
        latent_transform (LatentEncodeTransform, optional): encode-on-write transform. Defaults to
            ``LatentEncodeTransform(encoder)`` built at the freeze.
        replay_options (LatentReplayOptions, optional): how the latent buffer is sized and
            filled (budget, capacity cap or rule, latent storage, encoding batch, progress bar).
            Defaults to ``LatentReplayOptions()``.
        convergence (ParameterConvergence, optional): criterion for ``freeze_at="auto"``.
            Defaults to ``ParameterConvergence(frozen parameters)``. With a fixed
            ``freeze_at`` a given criterion is only watched until the freeze: its history,
            the step at which it would have fired (``fired_at``) and, if it keeps one, the
            parameter trajectory are recorded, e.g. to calibrate a bound on a real run.
        logger (Logger, optional): TorchRL logger receiving ``seer/*`` scalars at the freeze.
        on_freeze (callable, optional): called with the hook right after the freeze.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> from torchrl_seer.data import LatentReplayOptions
        >>> from torchrl_seer.modules import DataEfficientAtariEncoder
        >>> encoder = DataEfficientAtariEncoder()
        >>> head = nn.Linear(576, 6)
        >>> optim = torch.optim.Adam([*encoder.parameters(), *head.parameters()])
        >>> rb = ReplayBuffer(storage=LazyTensorStorage(64), batch_size=8)
        >>> hook = FreezeEncoderHook(
        ...     encoder,
        ...     freeze_at=2,
        ...     optimizers=[optim],
        ...     replay_buffer=rb,
        ...     replay_options=LatentReplayOptions(progress=False),
        ... )
        >>> for step in range(4):
        ...     pixels = torch.randint(0, 255, (4, 4, 84, 84), dtype=torch.uint8)
        ...     _ = rb.extend(TensorDict({"pixels": pixels, ("next", "pixels"): pixels}, [4]))
        ...     _ = hook.step(step)
        >>> hook.frozen, hook.freeze_step, len(rb)
        (True, 2, 16)
        >>> any(p.requires_grad for p in encoder.frozen_part.parameters())
        False
    """

    def __init__(
        self,
        encoder: SplitEncoder,
        *,
        freeze_at: int | str,
        modules: Sequence[nn.Module] = (),
        optimizers: Sequence[torch.optim.Optimizer] = (),
        target_sync: str = "full",
        replay_buffer: ReplayBuffer | None = None,
        latent_transform: LatentEncodeTransform | None = None,
        replay_options: LatentReplayOptions | None = None,
        convergence: ParameterConvergence | None = None,
        logger: Logger | None = None,
        on_freeze: Callable[[FreezeEncoderHook], None] | None = None,
    ) -> None:
        if not isinstance(encoder, SplitEncoder):
            raise TypeError(f"encoder must be a SplitEncoder, got {type(encoder).__name__}.")
        if freeze_at != "auto" and not (isinstance(freeze_at, int) and freeze_at >= 0):
            raise ValueError(f"freeze_at must be a step >= 0 or 'auto', got {freeze_at!r}.")
        if target_sync not in TARGET_SYNC_MODES:
            raise ValueError(
                f"target_sync must be one of {TARGET_SYNC_MODES}, got {target_sync!r}."
            )
        if replay_options is not None and not isinstance(replay_options, LatentReplayOptions):
            raise TypeError(
                "replay_options must be a LatentReplayOptions, got "
                f"{type(replay_options).__name__}."
            )
        self.encoder = encoder
        self.freeze_at = freeze_at
        self.modules = list(modules)
        self.optimizers = list(optimizers)
        self.target_sync = target_sync
        self.replay_buffer = replay_buffer
        self.latent_transform = latent_transform
        self.replay_options = replay_options or LatentReplayOptions()
        self.logger = logger
        self.on_freeze = on_freeze
        if freeze_at == "auto" and convergence is None:
            convergence = ParameterConvergence(encoder.frozen_part.parameters())
        self.convergence = convergence
        for optimizer in self.optimizers:
            optimizer.register_state_dict_post_hook(self._tag_optimizer_state)
            optimizer.register_load_state_dict_pre_hook(self._prepare_optimizer_load)
        self.frozen = False
        self.freeze_step: int | None = None
        self.storage_mode = "pixels"
        self.latent_capacity: int | None = None
        self.freeze_report: dict[str, Any] = {}
        if replay_buffer is not None:
            watch_for_latent_checkpoint(replay_buffer, self._switch_for_buffer_checkpoint)

    # ----------------------------------------------------------------------------- stepping
    def step(self, step: int) -> bool:
        """Freezes if ``step`` is the freeze step (or the auto criterion fires).

        Args:
            step (int): the current step (agent steps, or collected frames in a Trainer).

        Returns:
            ``True`` at the call that froze the encoder, ``False`` otherwise.
        """
        if self.frozen:
            return False
        converged = self.convergence.update(step) if self.convergence is not None else False
        due = converged if self.freeze_at == "auto" else step >= int(self.freeze_at)
        if due:
            self.freeze(step)
        return due

    def freeze(self, step: int) -> dict[str, Any]:
        """Freezes now: the model side, then the replay migration; all of it or nothing.

        Args:
            step (int): the step recorded as T_f.

        Returns:
            The freeze report (also in :attr:`freeze_report`).
        """
        if self.frozen:
            raise RuntimeError(f"the encoder is already frozen (at step {self.freeze_step}).")
        snapshot = FreezeSnapshot(self.encoder, modules=self.modules, optimizers=self.optimizers)
        transform = self.latent_transform
        try:
            report: dict[str, Any] = {"freeze_step": step}
            report.update(
                freeze_encoder(
                    self.encoder,
                    modules=self.modules,
                    optimizers=self.optimizers,
                    target_sync=self.target_sync,
                ).as_dict()
            )
            if self.replay_buffer is not None:
                migration = migrate_to_latent_replay(
                    self.replay_buffer, self._make_transform(), **self.replay_options.as_kwargs()
                )
                report.update(migration.as_dict())
        except BaseException:
            snapshot.restore()
            self.latent_transform = transform
            raise
        if self.replay_buffer is not None:
            self.latent_capacity = report["latent_capacity"]
            self.storage_mode = "latent"
        self.frozen = True
        self.freeze_step = step
        if self.convergence is not None:
            report["convergence_history"] = list(self.convergence.history)
            report["convergence_fired_at"] = self.convergence.fired_at
        self.freeze_report = report
        torchrl_logger.info(f"SEER freeze at step {step}: {json.dumps(report, default=str)}")
        if self.logger is not None:
            for key, value in report.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.logger.log_scalar(f"seer/{key}", value, step=step)
        if self.on_freeze is not None:
            self.on_freeze(self)
        return report

    def _make_transform(self) -> LatentEncodeTransform:
        if self.latent_transform is None:
            self.latent_transform = LatentEncodeTransform(self.encoder)
        return self.latent_transform

    def _latent_storage(self, capacity: int) -> Any:
        factory = self.replay_options.storage_factory
        return (factory if factory is not None else LazyTensorStorage)(capacity)

    def _switch_to_empty_latent_storage(self, capacity: int) -> None:
        assert self.replay_buffer is not None
        switch_to_latent_replay(
            self.replay_buffer,
            self._latent_storage(capacity),
            self._make_transform(),
            old_slots=torch.arange(0),
            length=0,
        )

    def _switch_for_buffer_checkpoint(self, capacity: int) -> Any:
        """Called when the pixel buffer loads a latent checkpoint before this hook is restored."""
        assert self.replay_buffer is not None
        if self.frozen and self.storage_mode == "latent":
            raise RuntimeError(
                "the replay buffer's pixel storage was asked to load a latent checkpoint while "
                "this hook is already in latent replay."
            )
        self._switch_to_empty_latent_storage(capacity)
        return self.replay_buffer.storage

    # ------------------------------------------------------------------------ checkpointing
    def _tag_optimizer_state(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
    ) -> dict[str, Any]:
        """Marks an optimizer checkpoint taken after the freeze (frozen params purged)."""
        if self.frozen:
            state_dict["seer_frozen_encoder"] = True
        return state_dict

    def _prepare_optimizer_load(
        self, optimizer: torch.optim.Optimizer, state_dict: dict[str, Any]
    ) -> dict[str, Any]:
        """Purges the frozen params before a post-freeze optimizer checkpoint is loaded.

        This makes the restore order of optimizers and this hook irrelevant.
        """
        state_dict = dict(state_dict)
        if state_dict.pop("seer_frozen_encoder", False):
            stop_training_frozen_layers(self.encoder, modules=self.modules, optimizers=[optimizer])
        return state_dict

    def state_dict(self) -> dict[str, Any]:
        """Frozen flag, T_f, storage mode, latent capacity, freeze report and criterion state."""
        return {
            "frozen": self.frozen,
            "freeze_step": self.freeze_step,
            "storage_mode": self.storage_mode,
            "latent_capacity": self.latent_capacity,
            "freeze_report": dict(self.freeze_report),
            "convergence": self.convergence.state_dict() if self.convergence else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the hook; a frozen state re-applies the freeze and prepares latent storage.

        The state is validated before anything changes, and the restore is atomic. Restoring a
        frozen state into a hook that is already frozen only updates the hook's records.

        Args:
            state_dict (dict): what :meth:`state_dict` returned.

        Raises:
            KeyError: if ``state_dict`` misses an entry.
            ValueError: if a latent-mode state has no latent capacity.
            RuntimeError: if a state taken before the freeze is restored into a frozen hook, or
                if the replay buffer already holds transitions that a switch to latent replay
                would drop (it was restored before the hook).
        """
        missing = [key for key in _STATE_KEYS if key not in state_dict]
        if missing:
            raise KeyError(f"FreezeEncoderHook state is missing {missing}.")
        if not state_dict["frozen"]:
            if self.frozen:
                raise RuntimeError(
                    "cannot restore a checkpoint taken before the freeze into a hook that is "
                    "already frozen: build a new hook (and networks) for it."
                )
            self._load_convergence(state_dict)
            return
        capacity = state_dict["latent_capacity"]
        switch = (
            state_dict["storage_mode"] == "latent"
            and self.replay_buffer is not None
            and not (
                self.latent_transform is not None
                and is_latent_replay(self.replay_buffer, self.latent_transform)
            )
        )
        if switch:
            assert self.replay_buffer is not None
            if capacity is None:
                raise ValueError("a latent-mode checkpoint must record the latent capacity.")
            if len(self.replay_buffer) > 0:
                raise RuntimeError(
                    f"the replay buffer already holds {len(self.replay_buffer)} transitions, "
                    "which switching it to latent replay would drop: restore FreezeEncoderHook "
                    "before the replay buffer (in a Trainer, register the hook first)."
                )
        snapshot = FreezeSnapshot(self.encoder, modules=self.modules, optimizers=self.optimizers)
        transform = self.latent_transform
        try:
            if not self.frozen:
                stop_training_frozen_layers(
                    self.encoder, modules=self.modules, optimizers=self.optimizers
                )
            if switch:
                self._switch_to_empty_latent_storage(int(capacity))
        except BaseException:
            snapshot.restore()
            self.latent_transform = transform
            raise
        self.frozen = True
        self.freeze_step = state_dict["freeze_step"]
        self.storage_mode = state_dict["storage_mode"]
        self.latent_capacity = capacity
        self.freeze_report = dict(state_dict["freeze_report"])
        self._load_convergence(state_dict)

    def _load_convergence(self, state_dict: dict[str, Any]) -> None:
        if self.convergence is not None and state_dict.get("convergence") is not None:
            self.convergence.load_state_dict(state_dict["convergence"])

    def register(self, trainer: Trainer, name: str = "freeze_encoder") -> None:
        """Registers the freeze check after each collected batch and checkpoints the hook.

        Args:
            trainer (Trainer): the TorchRL trainer.
            name (str, optional): module name in the checkpoint. Defaults to
                ``"freeze_encoder"``.
        """
        trainer.register_op("post_steps", self._step_trainer, trainer=trainer)
        trainer.register_op("post_steps_log", self._log)
        trainer.register_module(name, self)

    def _step_trainer(self, trainer: Trainer) -> None:
        self.step(trainer.collected_frames)

    def _log(self, batch: TensorDictBase | None) -> dict[str, float]:
        out = {"seer_frozen": float(self.frozen)}
        if self.latent_capacity is not None and self.frozen:
            out["seer_latent_capacity"] = float(self.latent_capacity)
        return out
