"""What is specific to composing the parts: placement, actors, the Trainer's hooks, report.

Config checks, seeds, the run folder, checkpoints, the logger and the report writer come from
the recipe toolkit :mod:`torchrl_seer.trainers.helpers`; this module holds what the two
composed recipes add to it:

* :func:`check_composed_config`: the settings both recipes share (checked before anything is
  created);
* :class:`Placement` and :func:`composed_placement`: which device each part runs on (the
  learner on the run's device, the actors and the frame codec on the CPU);
* :class:`Actors`: the actors' policy (compressed or not, always on the CPU), one fresh
  collector per checkpoint interval (TorchRL's ``MultiAsyncCollector`` whose workers act while
  the learner learns, or a ``Collector`` in the learner's process with ``collector.workers=0``)
  and the learner's weights shipped to them (compressed packets through
  :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme`); checkpointed;
* :func:`int8_latent_replay` and :func:`latent_transform`: the SEER migration's options (int8
  latents, capacity from bytes, on the learner's device);
* :class:`TrajectoryIds`: trajectory ids kept unique across checkpoint intervals;
* :class:`RunRecord`: a TorchRL trainer hook that logs returns, losses, replay bytes and the
  freeze at environment frames, times the learner's updates before and after the freeze, and
  rewrites the report (the toolkit's ``write_report``) every ``logger.report_every`` agent
  steps and at the end; checkpointed;
* :func:`make_trainer`: the TorchRL ``Trainer`` of one checkpoint interval and its hooks, in
  their order.
"""

from __future__ import annotations

import copy
import functools
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import NestedKey, TensorDictBase
from torch import nn
from torchrl.collectors import Collector, MultiAsyncCollector
from torchrl.data import ReplayBuffer
from torchrl.trainers import (
    ReplayBufferTrainer,
    SelectKeys,
    Trainer,
    TrainerHookBase,
)

from torchrl_seer.collectors import CompressedPolicy, CompressedWeightSyncScheme
from torchrl_seer.data import (
    LatentEncodeTransform,
    LatentReplayOptions,
    QuantizedStorage,
    storage_nbytes,
)
from torchrl_seer.modules import SplitEncoder
from torchrl_seer.optim import has_native_kernels
from torchrl_seer.trainers.helpers import (
    EpisodeReturns,
    RecipeRun,
    ReportPlot,
    ReportTable,
    check_config,
    write_report,
)
from torchrl_seer.trainers.helpers.accerl import choose_compressor, ship_weights
from torchrl_seer.trainers.helpers.checkpoint import FrameSegment

__all__ = [
    "LATENT_KEYS",
    "Actors",
    "ComposedRun",
    "Placement",
    "RunRecord",
    "ToDevice",
    "TrajectoryIds",
    "check_composed_config",
    "composed_placement",
    "int8_latent_replay",
    "latent_transform",
    "make_trainer",
    "resolve_low_precision",
]

LATENT_KEYS = ["latent", ("next", "latent")]
WORKER_SEED_STRIDE = 1000  # worker i's environment is seeded with the interval's seed + 1000 * i
CPU = torch.device("cpu")


@dataclass
class ComposedRun:
    """What a composed recipe's run leaves behind.

    Attributes:
        report: the path of ``report.md``.
        replay_buffer: the replay buffer (latent after a SEER freeze).
        freeze_hook: the ``FreezeEncoderHook`` (``None`` with SEER off).
        record: the run's :class:`RunRecord`.
    """

    report: Path
    replay_buffer: ReplayBuffer
    freeze_hook: Any
    record: RunRecord


def check_composed_config(cfg: DictConfig, *, positive: list[str]) -> None:
    """Refuses a bad configuration of a composed recipe before anything is created.

    ``device`` must be ``cpu``, ``auto`` or a CUDA device (see :func:`composed_placement`);
    ``checkpoint.interval`` a multiple of ``collector.frames_per_batch``; ``collector.workers``
    ``>= 0`` (``0``: the actors act in the learner's process, which makes a resumed run exact).

    Args:
        cfg (DictConfig): the recipe's configuration.

    Keyword Args:
        positive (list of str): the recipe's own settings that must be ``> 0``.

    Raises:
        ValueError: naming the setting.
    """
    device = str(cfg.device)
    if device not in ("cpu", "auto") and torch.device(device).type != "cuda":
        raise ValueError(
            f"device={cfg.device!r}: the composed recipes run their learner on cpu or cuda "
            "(device=cpu, cuda, cuda:<index> or auto); their actors and frame codec are CPU code."
        )
    check_config(
        cfg,
        positive=[
            "collector.total_frames", "collector.frames_per_batch", "replay_buffer.size",
            "replay_buffer.chunk_len", "optim.lr", "optim.batch_size", "optim.updates_per_batch",
            "accerl.kl_bound", "accerl.ship_every", "logger.report_every", *positive,
        ],
        non_negative=["collector.workers", "collector.init_random_frames", "seer.freeze_at"],
        choices={"seer.latent_dtype": ["int8", "bf16", "fp16"]},
    )  # fmt: skip
    if cfg.seer.max_capacity is not None:
        check_config(cfg, positive=["seer.max_capacity"])
    if not isinstance(cfg.parts.low_precision, bool) and cfg.parts.low_precision != "auto":
        raise ValueError(
            f"parts.low_precision must be true, false or auto, got {cfg.parts.low_precision!r}."
        )


def resolve_low_precision(cfg: DictConfig, learner: torch.device) -> list[str]:
    """Replaces ``parts.low_precision=auto`` in ``cfg`` by ``true`` or ``false``.

    ``auto`` turns the bf16 learner on where the learner's device runs bf16 natively (a CUDA
    device of compute capability 8.0 or newer, a CPU with AVX-512 BF16 or AMX): elsewhere bf16
    saves memory but runs several times slower than fp32. Call it before creating the
    :class:`~torchrl_seer.trainers.helpers.RecipeRun` (with
    ``kept_on_resume=["parts.low_precision"]``), so that the run saves what ``auto`` chose and a
    resumed run keeps it on any machine (a resumed run's ``cfg`` is left as it is).

    Args:
        cfg (DictConfig): the recipe's configuration (edited in place).
        learner (torch.device): the learner's device.

    Returns:
        The report's note on what ``auto`` chose and why (:class:`RunRecord`'s ``notes``);
        none when ``parts.low_precision`` was not ``auto`` or the run is resumed.
    """
    if cfg.parts.low_precision != "auto" or cfg.resume is not None:
        return []
    native = has_native_kernels(torch.bfloat16, learner)
    cfg.parts.low_precision = native
    if native:
        return [f"parts.low_precision=auto: bf16 learner on, {learner} runs bf16 natively."]
    hardware = torch.backends.cpu.get_cpu_capability() if learner.type == "cpu" else learner
    return [
        f"parts.low_precision=auto: bf16 learner off (fp32), {learner} has no native bf16 "
        f"kernels ({hardware}); set parts.low_precision=true to train in bf16 anyway."
    ]


@dataclass(frozen=True)
class Placement:
    """The device of every part of a composed recipe.

    Attributes:
        learner: networks, losses, optimizers and the learner's batches.
        actors: the actors' policy (compressed or not) and their environments.
        pixel_replay: the pixel replay storage (``DeltaFrameStorage`` or ``LazyTensorStorage``).
        latent_replay: the latent storage the SEER freeze moves the buffer to.
    """

    learner: torch.device
    actors: torch.device
    pixel_replay: torch.device
    latent_replay: torch.device


def composed_placement(learner: torch.device, *, delta_frames: bool) -> Placement:
    """Where a composed recipe puts each part, given its learner's device.

    The actors always act on the CPU: the compressed actors' int8 kernels are CPU code, and the
    learner's weights travel to them as packets (learner -> CPU actors). ``DeltaFrameStorage``
    stays on the CPU too (its frame codec is CPU code): its samples are moved to the learner's
    device. TorchRL's ``LazyTensorStorage`` (``parts.delta_frames=false``) and the latent
    storage after the SEER freeze live on the learner's device, where the learner reads them.

    Args:
        learner (torch.device): the learner's device (``resolve_device(cfg.device)``).

    Keyword Args:
        delta_frames (bool): whether the pixel storage is a ``DeltaFrameStorage``.

    Returns:
        The :class:`Placement`.

    Examples:
        >>> import torch
        >>> place = composed_placement(torch.device("cuda"), delta_frames=True)
        >>> place.actors.type, place.pixel_replay.type, place.latent_replay.type
        ('cpu', 'cpu', 'cuda')
        >>> composed_placement(torch.device("cuda"), delta_frames=False).pixel_replay.type
        'cuda'
    """
    return Placement(
        learner=learner,
        actors=CPU,
        pixel_replay=CPU if delta_frames else learner,
        latent_replay=learner,
    )


class ToDevice(nn.Module):
    """Moves its input to ``device`` (pixels read from a CPU storage for a CUDA encoder).

    Args:
        device (torch.device): where the input goes.
    """

    def __init__(self, device: torch.device) -> None:
        super().__init__()
        self.device = device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns ``x`` on ``device``."""
        return x.to(self.device)


def int8_latent_replay(cfg: DictConfig, place: Placement) -> LatentReplayOptions:
    """The SEER migration's options: quantized latents in a ``QuantizedStorage``, sized by bytes.

    The capacity comes from the bytes the pixel storage holds at the freeze (capped by
    ``cfg.seer.max_capacity``); the latent storage lives on ``place.latent_replay``.
    """
    return LatentReplayOptions(
        max_capacity=cfg.seer.max_capacity,
        storage_factory=functools.partial(
            QuantizedStorage,
            keys=LATENT_KEYS,
            dtype=cfg.seer.latent_dtype,
            device=place.latent_replay,
        ),
        progress=False,
    )


def latent_transform(
    encoder: SplitEncoder, place: Placement, **kwargs: Any
) -> LatentEncodeTransform:
    """The SEER encode-on-write transform, reading pixels from the pixel storage's device.

    When the pixel storage and the learner are on different devices (``DeltaFrameStorage`` on
    the CPU, the encoder on CUDA), the pixels are moved to the encoder first (after any
    augmentation).

    Args:
        encoder (SplitEncoder): the online encoder (its ``frozen_part`` encodes).
        place (Placement): the run's placement.
        **kwargs: ``num_copies``, ``augmentation`` of ``LatentEncodeTransform``.
    """
    if place.pixel_replay == place.learner:
        return LatentEncodeTransform(encoder, **kwargs)
    frozen = nn.Sequential(ToDevice(place.learner), encoder.frozen_part)
    return LatentEncodeTransform(frozen, latent_shape=encoder.latent_shape, **kwargs)


@torch.no_grad()
def actor_step_ms(policy: torch.nn.Module, example: TensorDictBase, *, repeats: int = 50) -> float:
    """Median milliseconds of one call of ``policy`` on ``example`` (the actors' batch shape)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy(example.clone())
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


class Actors(TrainerHookBase):
    """The actors: a CPU copy of the learner's policy (compressed or not), a collector per interval.

    With ``cfg.collector.workers > 0`` each checkpoint interval gets a TorchRL
    ``MultiAsyncCollector`` whose workers act while the learner learns (worker ``i``'s
    environment seeded with the interval's seed ``+ 1000 * i``); with ``0`` a TorchRL
    ``Collector`` acts in the learner's process (seeded with the interval's seed), which makes a
    run and its resumption from a checkpoint identical. Registered on a Trainer, the hook ships
    the learner's policy to the actors every ``accerl.ship_every`` batches: the learner's
    weights are copied into the actors' CPU copy (the learner may be on CUDA), then compressed
    into a weight packet (:class:`~torchrl_seer.collectors.CompressedWeightSyncScheme`) or
    synchronised by TorchRL's weight update (uncompressed actors).

    The hook is checkpointed (:meth:`state_dict`): batches counted, the packet the actors run
    and its version, and what :attr:`record` says of the actors (the compression chosen,
    why, the actor step time). A resumed run reuses the saved compression: ``auto`` is measured
    once per run. The worker processes' own generators are not saved: only ``workers=0`` runs
    resume exactly.

    Args:
        run (RecipeRun): the recipe's run (``collector.*``, ``accerl.*``, ``seed`` and
            ``parts.compressed_actors`` are read: act with a
            :class:`~torchrl_seer.collectors.CompressedPolicy`, or with a copy of ``policy``
            itself; a resumed run's saved actors are reused).
        make_env (callable): ``make_env(seed=...)`` builds one actor's environment.
        policy (nn.Module): the learner's acting policy (on any device).
        example (TensorDictBase): an observation at the actors' batch shape, on the CPU (auto
            compression and the step time are measured on it).

    Keyword Args:
        compression_view (callable, optional): ``compression_view(cpu_policy)`` returns the
            probabilistic policy ``select_compression`` compares (defaults to the policy).

    Attributes:
        record (dict): ``batch``, ``compression``, ``reason`` (when compressed), ``step_ms``.
        policy (nn.Module): what the collectors act with (on the CPU).
    """

    def __init__(
        self,
        run: RecipeRun,
        make_env: Callable[..., Any],
        policy: nn.Module,
        example: TensorDictBase,
        *,
        compression_view: Callable[[nn.Module], nn.Module] | None = None,
    ) -> None:
        cfg = run.cfg
        self.make_env = make_env
        self.learner_policy = policy
        on_cpu = all(p.device == CPU for p in policy.parameters())
        self.cpu_policy = policy if on_cpu else copy.deepcopy(policy).to(CPU)
        self.workers = cfg.collector.workers
        self.frames_per_batch = cfg.collector.frames_per_batch
        self.init_random_frames = cfg.collector.init_random_frames
        self.ship_every = cfg.accerl.ship_every
        self.batches = 0
        self.collector: Any = None
        saved = _saved_state(run, "actors")
        self.record: dict[str, Any] = {"batch": 1, "compression": "fp32 (uncompressed)"}
        self.scheme: CompressedWeightSyncScheme | None = None
        self.policy: nn.Module = self.cpu_policy
        if cfg.parts.compressed_actors:
            if saved is not None:  # the resumed run's choice: auto is measured once per run
                compressor = saved["packet"]["pipeline"]
            else:
                view = (
                    self.cpu_policy
                    if compression_view is None
                    else compression_view(self.cpu_policy)
                )
                compressor, self.record["reason"] = choose_compressor(
                    cfg.accerl.compression, view, example, kl_bound=cfg.accerl.kl_bound
                )
            self.record["compression"] = compressor.spec()
            self.policy = CompressedPolicy(self.cpu_policy, compressor)
            self.scheme = CompressedWeightSyncScheme(compressor)
        if saved is None:
            self.record["step_ms"] = actor_step_ms(self.policy, example)

    def collector_for(self, segment: FrameSegment) -> Any:
        """A fresh collector for the checkpoint interval ``segment`` (seeded from its seed).

        It acts at random for what is left of ``collector.init_random_frames``.
        """
        frames = segment.stop - segment.start
        random_frames = max(0, self.init_random_frames - segment.start)
        if self.scheme is not None and self.scheme.last_packet is not None:
            assert isinstance(self.policy, CompressedPolicy)
            self.policy.load_packet(self.scheme.last_packet)  # the workers' latest weights
        common = {
            "policy": self.policy,
            "frames_per_batch": self.frames_per_batch,
            "total_frames": frames,
            "init_random_frames": random_frames,
        }
        if self.workers == 0:
            self.collector = Collector(self.make_env(seed=segment.seed), **common)
            return self.collector
        scheme = None
        if self.scheme is not None:  # a weight-sync scheme connects to one collector only
            scheme = CompressedWeightSyncScheme(self.scheme.compressor)
        self.collector = MultiAsyncCollector(
            [
                functools.partial(self.make_env, seed=segment.seed + WORKER_SEED_STRIDE * worker)
                for worker in range(self.workers)
            ],
            weight_sync_schemes={"policy": scheme} if scheme is not None else None,
            **common,
        )
        return self.collector

    def ship(self) -> None:
        """Counts a batch; every ``accerl.ship_every`` batches, ships the learner's policy."""
        self.batches += 1
        if self.batches % self.ship_every:
            return
        if self.cpu_policy is not self.learner_policy:  # learner -> the actors' CPU copy
            self.cpu_policy.load_state_dict(self.learner_policy.state_dict())
        if self.scheme is not None:  # the next interval's collector starts from last_packet
            ship_weights(
                self.collector, self.cpu_policy, self.policy, self.scheme, workers=self.workers
            )
        elif self.workers > 0:  # in-process actors act with the CPU copy itself
            self.collector.update_policy_weights_(self.cpu_policy)

    def register(self, trainer: Trainer, name: str = "actors") -> None:
        """Ships the learner's weights after every batch's hooks (``post_steps``)."""
        trainer.register_op("post_steps", self.ship)

    def state_dict(self) -> dict[str, Any]:
        """Batches counted, the actors' packet and version, and :attr:`record`."""
        state: dict[str, Any] = {"batches": self.batches, "record": dict(self.record)}
        if self.cpu_policy is not self.learner_policy:
            state["cpu_policy"] = self.cpu_policy.state_dict()
        if self.scheme is not None:
            assert isinstance(self.policy, CompressedPolicy)
            shipped = self.scheme.last_packet
            state["packet"] = shipped if shipped is not None else self.policy.packet
            state["version"] = self.scheme.version
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned."""
        self.batches = int(state_dict["batches"])
        self.record.update(state_dict["record"])
        if "cpu_policy" in state_dict:
            self.cpu_policy.load_state_dict(state_dict["cpu_policy"])
        if self.scheme is not None:
            assert isinstance(self.policy, CompressedPolicy)
            self.policy.load_packet(state_dict["packet"])
            self.scheme.version = int(state_dict["version"])


def _saved_state(run: RecipeRun, name: str) -> Any:
    """The state saved under ``name`` by the checkpoint a resumed run continues, or ``None``."""
    if run.cfg.resume is None or not run.checkpointer.exists():
        return None
    return run.checkpointer.read()["state"].get(name)


class TrajectoryIds(TrainerHookBase):
    """Keeps the collectors' trajectory ids unique across checkpoint intervals.

    Every interval has a fresh collector, whose trajectory ids start at ``0`` again; registered
    on an interval's Trainer, the hook shifts them past every id written so far, so that a
    ``SliceSampler`` never joins two trajectories. Checkpointed (the next free id).

    Args:
        key (NestedKey): the trajectory-id key (``("collector", "traj_ids")``).
    """

    def __init__(self, key: NestedKey) -> None:
        self.key = key
        self.next_id = 0
        self.offset = 0

    def shift(self, batch: TensorDictBase) -> TensorDictBase:
        """Adds the interval's offset to the batch's trajectory ids."""
        ids = batch.get(self.key) + self.offset
        batch.set(self.key, ids)
        self.next_id = max(self.next_id, int(ids.max()) + 1)
        return batch

    def register(self, trainer: Trainer, name: str = "trajectory_ids") -> None:
        """Starts a new interval: its ids begin after every id written so far."""
        self.offset = self.next_id
        trainer.register_op("batch_process", self.shift)

    def state_dict(self) -> dict[str, Any]:
        """The next free trajectory id."""
        return {"next_id": self.next_id}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the next free trajectory id."""
        self.next_id = int(state_dict["next_id"])


class RunRecord(TrainerHookBase):
    """Records and logs what the composition report shows, inside a TorchRL ``Trainer``.

    Every scalar is logged at environment frames (agent steps x ``frames_per_step``):

    * ``batch_process`` (register it before any hook that drops keys): ``episode_return`` of
      every episode that ended in the batch (the toolkit's ``EpisodeReturns``);
    * ``post_steps``: ``replay_bytes`` and ``replay_length``, the last update's losses and
      ``update_ms``, the ``seer/*`` figures once the freeze has happened; every
      ``logger.report_every`` agent steps, :meth:`write_report`;
    * :meth:`time_update`: a context the optimization step runs in (learner seconds per update,
      tagged before/after the freeze); :meth:`record_losses` keeps the step's losses.

    Args:
        run: the recipe's run (its logger receives the scalars; ``logger.report_every``).
        replay_buffer: the replay buffer to measure.

    Keyword Args:
        freeze_hook: the ``FreezeEncoderHook`` (``None`` without SEER).
        frames_per_step: environment frames per agent step (frame skip / action repeat).
        title: the report's heading.
        actors: what the actors are (:attr:`Actors.record`).
        seeds: what :func:`~torchrl_seer.trainers.helpers.seed_everything` seeded.
        notes: paragraphs the report's notes start with (e.g. what ``auto`` settings chose).
    """

    def __init__(
        self,
        run: RecipeRun,
        replay_buffer: ReplayBuffer,
        *,
        freeze_hook: Any | None,
        frames_per_step: int,
        title: str,
        actors: dict[str, Any],
        seeds: dict[str, Any],
        notes: Sequence[str] = (),
    ) -> None:
        self.run = run
        self.notes = list(notes)
        self.replay_buffer = replay_buffer
        self.freeze_hook = freeze_hook
        self.frames_per_step = frames_per_step
        self.report_every = run.cfg.logger.report_every
        self.title = title
        self.actors = actors
        self.seeds = {
            **seeds,
            "environment": f"{run.cfg.seed} + 10000 x checkpoint interval + 1000 x actor worker",
        }
        self.steps = 0
        self.batch_steps = 0
        self.episodes = EpisodeReturns(run.log_scalar)
        self.replay: list[tuple[int, int, int, bool]] = []
        self.update_seconds: list[tuple[bool, float]] = []
        self.losses: dict[str, float] = {}
        self.freeze_logged = False
        self.start = time.perf_counter()
        self.wall_seconds = 0.0

    @property
    def frames(self) -> int:
        """Environment frames collected so far."""
        return self.steps * self.frames_per_step

    @property
    def returns(self) -> list[tuple[int, float]]:
        """``(environment frames, return)`` of every finished episode."""
        return self.episodes.history

    def frozen(self) -> bool:
        """Whether the encoder is frozen now."""
        return self.freeze_hook is not None and self.freeze_hook.frozen

    def record_batch(self, batch: TensorDictBase) -> TensorDictBase:
        """Counts the batch's agent steps and records the returns of finished episodes."""
        self.batch_steps = batch.numel()
        self.steps += self.batch_steps
        self.episodes.record(batch, frames=self.frames)
        return batch

    def post_steps(self) -> None:
        """Logs the replay, the losses and the freeze; rewrites the report when it is due."""
        frames = self.frames
        nbytes = storage_nbytes(self.replay_buffer.storage)
        self.replay.append((frames, nbytes, len(self.replay_buffer), self.frozen()))
        self.wall_seconds = time.perf_counter() - self.start
        self.run.log_scalar("replay_bytes", nbytes, frames)
        self.run.log_scalar("replay_length", len(self.replay_buffer), frames)
        for name, value in self.losses.items():
            self.run.log_scalar(name, value, frames)
        if self.update_seconds:
            self.run.log_scalar("update_ms", 1e3 * self.update_seconds[-1][1], frames)
        self.losses = {}
        if self.frozen() and not self.freeze_logged:
            self.freeze_logged = True
            report = self.freeze_hook.freeze_report
            for key, value in report.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    step = self.freeze_hook.freeze_step * self.frames_per_step
                    self.run.log_scalar(f"seer/{key}", value, step)
        every, last = self.report_every, self.run.cfg.collector.total_frames
        if self.steps // every > (self.steps - self.batch_steps) // every and self.steps < last:
            self.write_report()  # the last one is written by finish()

    @contextmanager
    def time_update(self) -> Iterator[None]:
        """Times one learner update (sample excluded), tagged with the freeze state."""
        frozen = self.frozen()
        start = time.perf_counter()
        yield
        self.update_seconds.append((frozen, time.perf_counter() - start))

    def record_losses(self, losses: TensorDictBase) -> None:
        """Keeps the update's ``loss*`` scalars (logged at the end of the batch)."""
        self.losses = {str(key): float(value) for key, value in losses.items()}

    def update_ms(self, *, frozen: bool) -> float:
        """Median learner update time in ms, before (``frozen=False``) or after the freeze."""
        values = [s for f, s in self.update_seconds if f == frozen]
        return 1e3 * statistics.median(values) if values else float("nan")

    def write_report(self) -> Path:
        """Rewrites ``report.md``, ``report.png`` and ``report.json`` in the run folder."""
        return write_composed_report(self)

    def finish(self) -> ComposedRun:
        """Writes the final report; returns what the run leaves behind."""
        path = self.write_report()
        print(f"report written to {path}")
        return ComposedRun(path, self.replay_buffer, self.freeze_hook, self)

    def state_dict(self) -> dict[str, Any]:
        """The records so far."""
        return {
            "steps": self.steps,
            "episodes": self.episodes.state_dict(),
            "replay": [(frames, length, frozen) for frames, _, length, frozen in self.replay],
            "replay_bytes": [nbytes for _, nbytes, _, _ in self.replay],  # caches included
            "update_seconds": list(self.update_seconds),
            "wall_seconds": self.wall_seconds,
            "freeze_logged": self.freeze_logged,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the records of :meth:`state_dict`."""
        self.steps = state_dict["steps"]
        self.episodes.load_state_dict(state_dict["episodes"])
        self.replay = [
            (frames, nbytes, length, frozen)
            for (frames, length, frozen), nbytes in zip(
                state_dict["replay"], state_dict["replay_bytes"], strict=True
            )
        ]
        self.update_seconds = [tuple(u) for u in state_dict["update_seconds"]]
        self.freeze_logged = state_dict["freeze_logged"]
        self.start = time.perf_counter() - state_dict["wall_seconds"]

    def register(self, trainer: Trainer, name: str = "run_record") -> None:
        """Registers the batch and post-steps records."""
        trainer.register_op("batch_process", self.record_batch)
        trainer.register_op("post_steps", self.post_steps)
        trainer.register_module(name, self)


def make_trainer(
    cfg: DictConfig,
    segment: FrameSegment,
    actors: Actors,
    stepper: Any,
    *,
    record: RunRecord,
    stored_keys: list,
    device: torch.device,
    hooks: Sequence[TrainerHookBase] = (),
    batch_ops: tuple[Callable[[TensorDictBase], TensorDictBase], ...] = (),
) -> Trainer:
    """TorchRL's ``Trainer`` of one checkpoint interval, counting agent steps, with its hooks.

    The Trainer collects the interval ``segment`` with a fresh collector of ``actors`` and
    optimizes with ``stepper`` (a TorchRL ``OptimizationStepper`` whose ``loss`` is the
    Trainer's loss module). The hooks, in order: the run record first (it reads episode
    returns before keys are dropped), then ``hooks`` and ``batch_ops``, TorchRL's
    ``SelectKeys`` (``stored_keys``), the record's freeze hook stepped at the run's agent
    steps, TorchRL's ``ReplayBufferTrainer`` on the record's replay buffer (samples moved to
    the learner's ``device``) and the actors' weight shipping (every ``accerl.ship_every``
    batches). The Trainer logs and checkpoints nothing
    itself: the record logs every scalar at environment frames through the run's logger, and
    the recipe checkpoints the run at the end of the interval.
    """
    trainer = Trainer(
        collector=actors.collector_for(segment),
        total_frames=segment.stop - segment.start,
        frame_skip=1,  # the Trainer counts agent steps
        optim_steps_per_batch=cfg.optim.updates_per_batch,
        loss_module=stepper.loss,
        optimization_stepper=stepper,
        logger=None,
        progress_bar=True,
        save_trainer_interval=10**12,
    )
    record.register(trainer)
    for hook in hooks:
        hook.register(trainer)
    for op in batch_ops:
        trainer.register_op("batch_process", op)
    SelectKeys(stored_keys).register(trainer)
    freeze_hook = record.freeze_hook
    if freeze_hook is not None:  # at the run's agent steps, not the interval's
        trainer.register_op("post_steps", lambda: freeze_hook.step(record.steps))
    ReplayBufferTrainer(record.replay_buffer, device=device, flatten_tensordicts=False).register(
        trainer
    )
    actors.register(trainer)
    return trainer


def _freeze_summary(freeze_hook: Any | None, frames_per_step: int) -> dict[str, Any]:
    if freeze_hook is None or not freeze_hook.frozen:
        return {}
    freeze = dict(freeze_hook.freeze_report)
    freeze["freeze_frame"] = freeze["freeze_step"] * frames_per_step
    return freeze


def _freeze_note(freeze: dict[str, Any]) -> str:
    if "latent_capacity" not in freeze:
        return f"At frame {freeze['freeze_frame']} the encoder froze (no latent migration)."
    ratio = freeze["latent_capacity"] / freeze["pixel_capacity"]
    verb = "grew" if ratio > 1 else "shrank" if ratio < 1 else "kept"
    return (
        f"At frame {freeze['freeze_frame']} the encoder froze and the buffer moved to latents: "
        f"its capacity {verb} from {freeze['pixel_capacity']} to {freeze['latent_capacity']} "
        f"transitions (x{ratio:.2f}) within the {freeze['budget_bytes'] / 2**20:.2f} MiB the "
        f"pixel storage held ({freeze['pixel_bytes_per_transition']:.0f} B per pixel slot, "
        f"{freeze['latent_bytes_per_transition']} B per latent transition; "
        f"{freeze['num_migrated']} migrated, {freeze['num_dropped']} dropped)."
    )


def write_composed_report(record: RunRecord) -> Path:
    """Writes the composition report with the toolkit's :func:`write_report`.

    ``report.md`` (parts, figures, the freeze), ``report.png`` (return curve, replay bytes,
    learner update time before/after the freeze) and ``report.json`` (the summary, the parts,
    the freeze, the actors and the curves).

    Returns:
        The path of ``report.md``.
    """
    cfg, actors = record.run.cfg, record.actors
    freeze = _freeze_summary(record.freeze_hook, record.frames_per_step)
    returns = [r for _, r in record.returns]
    last = returns[-10:]
    summary = {
        "episodes": len(returns),
        "mean_return_last_10": sum(last) / len(last) if last else float("nan"),
        "replay_bytes_final": record.replay[-1][1] if record.replay else 0,
        "replay_bytes_peak": max((r[1] for r in record.replay), default=0),
        "replay_length_final": record.replay[-1][2] if record.replay else 0,
        "update_ms_before_freeze": record.update_ms(frozen=False),
        "update_ms_after_freeze": record.update_ms(frozen=True),
        "updates": len(record.update_seconds),
        "wall_seconds": record.wall_seconds,
        "agent_steps": record.steps,
        "frames": record.frames,
    }
    parts = OmegaConf.to_container(cfg.parts)
    assert isinstance(parts, dict)
    figures = [
        ["agent steps (environment frames)", f"{record.steps} ({record.frames})"],
        ["wall time (s)", f"{summary['wall_seconds']:.1f}"],
        ["episodes finished", summary["episodes"]],
        ["mean return, last 10 episodes", f"{summary['mean_return_last_10']:.1f}"],
        [
            "replay bytes held at the end",
            f"{summary['replay_bytes_final'] / 2**20:.2f} MiB "
            f"({summary['replay_length_final']} transitions)",
        ],
        ["replay bytes held, peak", f"{summary['replay_bytes_peak'] / 2**20:.2f} MiB"],
        [
            "learner update, median, before the freeze",
            f"{summary['update_ms_before_freeze']:.1f} ms",
        ],
        [
            "learner update, median, after the freeze",
            f"{summary['update_ms_after_freeze']:.1f} ms",
        ],
        [f"actor policy step (batch {actors['batch']})", f"{actors['step_ms']:.2f} ms"],
        ["actor compression", actors["compression"]],
    ]
    paragraphs = [*record.notes]
    if actors.get("reason"):
        paragraphs.append(f"Actor compression: {actors['reason']}.")
    if freeze:
        paragraphs.append(_freeze_note(freeze))
    notes = [line for paragraph in paragraphs for line in ("", paragraph)][1:]
    vlines = {"freeze": freeze["freeze_frame"]} if freeze else {}
    update_ms = {
        label: ms
        for label, ms in (
            ("before freeze", summary["update_ms_before_freeze"]),
            ("after freeze", summary["update_ms_after_freeze"]),
        )
        if ms == ms  # not NaN
    }
    plots = [
        ReportPlot(
            record.title, "environment frames", "episode return", {"return": record.returns},
            kind="points", vlines=vlines,
        ),
        ReportPlot(
            "replay bytes held", "environment frames", "MiB",
            {"replay": [(frames, nbytes / 2**20) for frames, nbytes, _, _ in record.replay]},
            vlines=vlines,
        ),
        ReportPlot("learner update time", "", "median ms / update", update_ms, kind="bar"),
    ]  # fmt: skip
    path = write_report(
        record.run.dir,
        title=record.title,
        tables=[
            ReportTable(["part", "on"], [[name, on] for name, on in parts.items()], "Parts"),
            ReportTable(["measure", "value"], figures, "Figures"),
        ],
        plots=plots,
        config=OmegaConf.to_container(cfg, resolve=True),
        seeds=record.seeds,
        notes=notes,
        data={
            "parts": parts,
            "summary": summary,
            "freeze": freeze,
            "actors": actors,
            "returns": record.returns,
            "replay": record.replay,
            "update_seconds": record.update_seconds,
        },
    )
    return path
