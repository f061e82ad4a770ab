"""SEER's freeze: stop training the lower encoder layers and switch the replay buffer to latents."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tensordict import TensorDictBase
from torch import nn
from torchrl._utils import logger as torchrl_logger
from torchrl.data import ReplayBuffer
from torchrl.data.replay_buffers.storages import LazyTensorStorage, TensorStorage
from torchrl.record.loggers import Logger
from torchrl.trainers import Trainer, TrainerHookBase

from torchrl_seer.data.latent_capacity import install_storage
from torchrl_seer.data.latent_encode_transform import LatentEncodeTransform
from torchrl_seer.data.latent_migration import LatentMigrationReport, migrate_to_latent_replay
from torchrl_seer.modules.encoders import SplitEncoder
from torchrl_seer.trainers.encoder_convergence import ParameterConvergence

__all__ = ["FreezeEncoderHook"]

_FROZEN_NAME = "frozen_part"
_TARGET_SYNC = ("full", "encoder")


def _is_frozen_name(name: str | tuple) -> bool:
    parts = name.split(".") if isinstance(name, str) else name
    return _FROZEN_NAME in parts


def _target_pairs(module: nn.Module) -> list[tuple[TensorDictBase, TensorDictBase]]:
    """``(online_params, target_params)`` pairs of a TorchRL LossModule (``target_<x>_params``)."""
    pairs = []
    for name in list(vars(module).get("_modules", {})) + list(vars(module).get("_buffers", {})):
        if name.startswith("target_") and name.endswith("_params"):
            online = getattr(module, name[len("target_") :], None)
            target = getattr(module, name, None)
            if isinstance(online, TensorDictBase) and isinstance(target, TensorDictBase):
                pairs.append((online, target))
    return pairs


class FreezeEncoderHook(TrainerHookBase):
    """Freezes the lower encoder layers at T_f and moves the replay buffer to latent storage.

    At the freeze step (``freeze_at``: a step count, or ``"auto"`` for
    :class:`~torchrl_seer.trainers.ParameterConvergence`) it:

    1. sets ``requires_grad=False`` on every parameter whose name contains ``frozen_part`` in
       ``encoder`` and in each of ``modules`` (actor, critic, and TorchRL losses, which hold their
       own copies: e.g. ``SACLoss.qvalue_network_params`` stacked ``[num_q, ...]``);
    2. removes those parameters from every optimizer's param groups and drops their optimizer
       state (Adam moments are freed);
    3. copies the encoder's frozen weights into every other copy in ``modules`` (actor, each
       stacked Q copy, target copies), since one set of latents serves them all; then syncs
       targets (SEER spec §7): ``"full"`` hard-copies every online parameter of each loss into
       its ``target_*_params`` (DMC default, τ = 1), ``"encoder"`` leaves the target heads alone
       (Atari: target convs equal online convs, target heads keep their periodic update);
    4. migrates ``replay_buffer`` to latents with
       :func:`~torchrl_seer.data.migrate_to_latent_replay` (every stored transition encoded,
       pixel storage released, capacity re-sized to the memory budget, encode-on-write
       transform appended);
    5. logs what it did (``torchrl`` logger, and ``logger`` if given) and keeps it in
       :attr:`freeze_report`.

    In a TorchRL :class:`~torchrl.trainers.Trainer` use :meth:`register`; in a hand-written loop
    call :meth:`step` once per collected batch, *after* writing it to the buffer, so the
    transition collected at T_f is migrated too. ``freeze_at=0`` with an empty buffer starts a
    run in latent mode from the first transition (transfer of a saved encoder).

    The hook is checkpointed (:meth:`state_dict`): frozen flag, T_f, storage mode and latent
    capacity. Restoring a frozen state re-applies steps 1-2 and prepares an empty latent storage
    of the saved capacity so the replay buffer's own checkpoint can be loaded into it: restore
    this hook before the replay buffer (in a Trainer, register it before the replay-buffer hook).
    Optimizer checkpoints taken after the freeze are tagged, and loading one purges the frozen
    parameters first, so optimizers may be restored before or after the hook.

    Args:
        encoder (SplitEncoder): the online encoder (its ``frozen_part`` defines the latents).

    Keyword Args:
        freeze_at (int or str): freeze step T_f, or ``"auto"``.
        modules (sequence of nn.Module): other modules or loss modules holding copies of the
            encoder. Defaults to ``()``.
        optimizers (sequence of torch.optim.Optimizer): optimizers to purge. Defaults to ``()``.
        replay_buffer (ReplayBuffer, optional): the pixel buffer to migrate.
        latent_transform (LatentEncodeTransform, optional): encode-on-write transform. Defaults to
            ``LatentEncodeTransform(encoder)`` built at the freeze.
        target_sync (str): ``"full"`` or ``"encoder"``. Defaults to ``"full"``.
        budget_bytes (int, optional): latent-buffer memory budget; defaults to the measured
            bytes of the pixel storage.
        max_capacity (int, optional): cap on the latent capacity.
        reference_capacity (callable, optional): ``pixel_capacity -> capacity`` reproducing a
            reference formula (e.g. ``partial(reference_capacity_atari, t_max=500_000)``);
            overrides the measured budget rule.
        latent_storage (callable, optional): ``capacity -> TensorStorage`` for latents (e.g. a
            :class:`~torchrl_seer.data.QuantizedStorage`). Defaults to ``LazyTensorStorage``.
        latent_capacity (int, optional): capacity of the latent buffer when it starts empty
            (freeze at step 0). Defaults to the pixel buffer's capacity.
        convergence (ParameterConvergence, optional): criterion for ``freeze_at="auto"``.
            Defaults to ``ParameterConvergence(frozen parameters)``.
        migration_batch_size (int): transitions encoded per batch. Defaults to ``512``.
        progress (bool): tqdm progress bar during migration. Defaults to ``True``.
        logger (Logger, optional): TorchRL logger receiving ``seer/*`` scalars at the freeze.
        on_freeze (callable, optional): called with the hook right after the freeze.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from tensordict import TensorDict
        >>> from torchrl.data import LazyTensorStorage, ReplayBuffer
        >>> from torchrl_seer.modules import DataEfficientAtariEncoder
        >>> encoder = DataEfficientAtariEncoder()
        >>> head = nn.Linear(576, 6)
        >>> optim = torch.optim.Adam([*encoder.parameters(), *head.parameters()])
        >>> rb = ReplayBuffer(storage=LazyTensorStorage(64), batch_size=8)
        >>> hook = FreezeEncoderHook(
        ...     encoder, freeze_at=2, optimizers=[optim], replay_buffer=rb, progress=False
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
        replay_buffer: ReplayBuffer | None = None,
        latent_transform: LatentEncodeTransform | None = None,
        target_sync: str = "full",
        budget_bytes: int | None = None,
        max_capacity: int | None = None,
        reference_capacity: Callable[[int], int] | None = None,
        latent_storage: Callable[[int], TensorStorage] | None = None,
        latent_capacity: int | None = None,
        convergence: ParameterConvergence | None = None,
        migration_batch_size: int = 512,
        progress: bool = True,
        logger: Logger | None = None,
        on_freeze: Callable[[FreezeEncoderHook], None] | None = None,
    ) -> None:
        if not isinstance(encoder, SplitEncoder):
            raise TypeError(f"encoder must be a SplitEncoder, got {type(encoder).__name__}.")
        if freeze_at != "auto" and not (isinstance(freeze_at, int) and freeze_at >= 0):
            raise ValueError(f"freeze_at must be a step >= 0 or 'auto', got {freeze_at!r}.")
        if target_sync not in _TARGET_SYNC:
            raise ValueError(f"target_sync must be one of {_TARGET_SYNC}, got {target_sync!r}.")
        self.encoder = encoder
        self.freeze_at = freeze_at
        self.modules = list(modules)
        self.optimizers = list(optimizers)
        self.replay_buffer = replay_buffer
        self.latent_transform = latent_transform
        self.target_sync = target_sync
        self.budget_bytes = budget_bytes
        self.max_capacity = max_capacity
        self.reference_capacity = reference_capacity
        self.latent_storage = latent_storage if latent_storage is not None else LazyTensorStorage
        self.latent_capacity = latent_capacity
        self.migration_batch_size = migration_batch_size
        self.progress = progress
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
        self.freeze_report: dict[str, Any] = {}

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
        if self.freeze_at == "auto":
            assert self.convergence is not None
            due = self.convergence.update(step)
        else:
            due = step >= int(self.freeze_at)
        if due:
            self.freeze(step)
        return due

    def freeze(self, step: int) -> dict[str, Any]:
        """Freezes now (see the class docstring for what it does).

        Args:
            step (int): the step recorded as T_f.

        Returns:
            The freeze report (also in :attr:`freeze_report`).
        """
        if self.frozen:
            raise RuntimeError(f"the encoder is already frozen (at step {self.freeze_step}).")
        frozen = self._freeze_parameters()
        dropped_state = self._purge_optimizers(frozen)
        synced = self._sync_targets()
        report: dict[str, Any] = {
            "freeze_step": step,
            "frozen_tensors": len(frozen),
            "frozen_parameters": int(sum(p.numel() for p in frozen)),
            "optimizer_states_dropped": dropped_state,
            "targets_synced": synced,
            "target_sync": self.target_sync,
        }
        if self.replay_buffer is not None:
            migration = self._migrate()
            report.update(migration.as_dict())
            self.latent_capacity = migration.latent_capacity
            self.storage_mode = "latent"
        self.frozen = True
        self.freeze_step = step
        if self.convergence is not None:
            report["convergence_history"] = list(self.convergence.history)
        self.freeze_report = report
        torchrl_logger.info(f"SEER freeze at step {step}: {json.dumps(report, default=str)}")
        if self.logger is not None:
            for key, value in report.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.logger.log_scalar(f"seer/{key}", value, step=step)
        if self.on_freeze is not None:
            self.on_freeze(self)
        return report

    # ---------------------------------------------------------------------------- internals
    def _frozen_tensors(self) -> list[torch.Tensor]:
        seen: dict[int, torch.Tensor] = {}
        for module in (self.encoder, *self.modules):
            named = [*module.named_parameters(), *module.named_buffers()]
            for name, tensor in named:
                if _is_frozen_name(name):
                    seen.setdefault(id(tensor), tensor)
        return list(seen.values())

    def _freeze_parameters(self) -> list[torch.Tensor]:
        frozen = self._frozen_tensors()
        for tensor in frozen:
            if isinstance(tensor, nn.Parameter):
                tensor.grad = None
                tensor.requires_grad_(False)
        if not frozen:
            raise RuntimeError("found no parameter named '*frozen_part*' to freeze.")
        return frozen

    def _purge_optimizers(
        self,
        frozen: Sequence[torch.Tensor],
        optimizers: Sequence[torch.optim.Optimizer] | None = None,
    ) -> int:
        frozen_ids = {id(t) for t in frozen}
        dropped = 0
        for optimizer in self.optimizers if optimizers is None else optimizers:
            for param in [p for group in optimizer.param_groups for p in group["params"]]:
                if id(param) in frozen_ids and param in optimizer.state:
                    del optimizer.state[param]
                    dropped += 1
            for group in optimizer.param_groups:
                group["params"] = [p for p in group["params"] if id(p) not in frozen_ids]
            optimizer.param_groups = [g for g in optimizer.param_groups if g["params"]]
        return dropped

    def _sync_frozen_copies(self) -> int:
        """Copies the encoder's frozen weights into every other copy (stacked ones broadcast).

        Latents are computed once, by ``encoder``; every network that consumes them (actor,
        each stacked Q copy, targets) must hold the same frozen weights (spec §7).
        """
        source = {
            name: tensor
            for name, tensor in [
                *self.encoder.frozen_part.named_parameters(),
                *self.encoder.frozen_part.named_buffers(),
            ]
        }
        synced = 0
        with torch.no_grad():
            for module in self.modules:
                for name, tensor in [*module.named_parameters(), *module.named_buffers()]:
                    if not _is_frozen_name(name):
                        continue
                    suffix = name.split(f"{_FROZEN_NAME}.", 1)[1]
                    value = source.get(suffix)
                    if value is None or value is tensor:
                        continue
                    if value.shape != tensor.shape[tensor.ndim - value.ndim :]:
                        raise ValueError(
                            f"{name} has shape {tuple(tensor.shape)}, which does not hold the "
                            f"encoder's {suffix} of shape {tuple(value.shape)}."
                        )
                    tensor.data.copy_(value.expand_as(tensor))
                    synced += 1
        return synced

    def _sync_targets(self) -> int:
        synced = self._sync_frozen_copies()
        if self.target_sync != "full":
            return synced
        with torch.no_grad():
            for module in self.modules:
                for online, target in _target_pairs(module):
                    target.data.update_(online.data)
                    synced += len(list(target.keys(True, True)))
        return synced

    def _make_transform(self) -> LatentEncodeTransform:
        if self.latent_transform is None:
            self.latent_transform = LatentEncodeTransform(self.encoder)
        return self.latent_transform

    def _migrate(self) -> LatentMigrationReport:
        assert self.replay_buffer is not None
        pixel_capacity = int(self.replay_buffer.storage.max_size)
        capacity = None
        if self.reference_capacity is not None:
            capacity = self.reference_capacity(pixel_capacity)
        elif len(self.replay_buffer.storage) == 0:
            capacity = self.latent_capacity if self.latent_capacity is not None else pixel_capacity
        return migrate_to_latent_replay(
            self.replay_buffer,
            self._make_transform(),
            budget_bytes=self.budget_bytes,
            max_capacity=self.max_capacity,
            capacity=capacity,
            storage_factory=self.latent_storage,
            batch_size=self.migration_batch_size,
            progress=self.progress,
        )

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
            self._purge_optimizers(self._freeze_parameters(), [optimizer])
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

        Args:
            state_dict (dict): what :meth:`state_dict` returned.
        """
        if self.convergence is not None and state_dict.get("convergence") is not None:
            self.convergence.load_state_dict(state_dict["convergence"])
        if not state_dict["frozen"]:
            return
        frozen = self._freeze_parameters()
        self._purge_optimizers(frozen)
        self.frozen = True
        self.freeze_step = state_dict["freeze_step"]
        self.storage_mode = state_dict["storage_mode"]
        self.latent_capacity = state_dict["latent_capacity"]
        self.freeze_report = dict(state_dict["freeze_report"])
        if self.storage_mode == "latent" and self.replay_buffer is not None:
            if self.latent_capacity is None:
                raise ValueError("a latent-mode checkpoint must record the latent capacity.")
            storage = self.latent_storage(self.latent_capacity)
            install_storage(self.replay_buffer, storage, old_slots=torch.arange(0), length=0)
            self.replay_buffer.append_transform(self._make_transform())

    def register(self, trainer: Trainer, name: str = "freeze_encoder") -> None:
        """Registers the freeze check after each collected batch and checkpoints the hook.

        Args:
            trainer (Trainer): the TorchRL trainer.
            name (str, optional): module name in the checkpoint. Defaults to
                ``"freeze_encoder"``.
        """
        trainer.register_op("post_steps", lambda: self.step(trainer.collected_frames))
        trainer.register_op("post_steps_log", self._log)
        trainer.register_module(name, self)

    def _log(self, batch: TensorDictBase) -> dict[str, float]:
        out = {"seer_frozen": float(self.frozen)}
        if self.latent_capacity is not None and self.frozen:
            out["seer_latent_capacity"] = float(self.latent_capacity)
        return out
