"""What is specific to composing the parts: actors, the Trainer's hooks, latent replay, report.

Config checks, seeds, the run folder, the logger and the report writer come from the recipe
toolkit :mod:`torchrl_seer.trainers.helpers`; this module holds what the two composed recipes
add to it:

* :func:`check_composed_config`: the settings both recipes share (checked before anything is
  created);
* :func:`make_actors`: the actors' policy (compressed or not) on a collector whose workers act
  while the learner learns (a TorchRL ``MultiAsyncCollector``), compressed weights shipped by
  :class:`~torchrl_seer.collectors.CompressedWeightSyncScheme`;
* :func:`int8_latent_replay`: the SEER migration's options (int8 latents, capacity from bytes);
* :class:`RunRecord`: a TorchRL trainer hook that logs returns, losses, replay bytes and the
  freeze at environment frames, times the learner's updates before and after the freeze, and
  rewrites the report (the toolkit's ``write_report``) every ``logger.report_every`` agent
  steps and at the end;
* :func:`make_trainer`: the TorchRL ``Trainer`` and its hooks, in their order.
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tensordict import TensorDictBase
from torchrl.collectors import MultiAsyncCollector
from torchrl.data import ReplayBuffer
from torchrl.trainers import (
    ReplayBufferTrainer,
    SelectKeys,
    Trainer,
    TrainerHookBase,
    UpdateWeights,
)

from torchrl_seer.collectors import CompressedPolicy, CompressedWeightSyncScheme
from torchrl_seer.data import LatentReplayOptions, QuantizedStorage, storage_nbytes
from torchrl_seer.trainers.helpers import (
    EpisodeReturns,
    RecipeRun,
    ReportPlot,
    ReportTable,
    check_config,
    write_report,
)
from torchrl_seer.trainers.helpers.accerl import choose_compressor

__all__ = [
    "LATENT_KEYS",
    "ComposedRun",
    "RunRecord",
    "check_composed_config",
    "int8_latent_replay",
    "make_actors",
    "make_trainer",
]

LATENT_KEYS = ["latent", ("next", "latent")]
WORKER_SEED_STRIDE = 1000  # worker i's environment is seeded with seed + 1000 * i


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

    The composed recipes run on the CPU (the compressed actors' int8 kernels and
    ``DeltaFrameStorage``'s codec are CPU code) and do not checkpoint: their actors are worker
    processes acting while the learner learns, whose state a checkpoint cannot capture.

    Args:
        cfg (DictConfig): the recipe's configuration.

    Keyword Args:
        positive (list of str): the recipe's own settings that must be ``> 0``.

    Raises:
        ValueError: naming the setting.
    """
    settings = f"device={cfg.device!r}, checkpoint.interval={cfg.checkpoint.interval}"
    settings += f", resume={cfg.resume!r}"
    if str(cfg.device) not in ("cpu", "auto") or cfg.checkpoint.interval or cfg.resume:
        raise ValueError(
            "the composed recipes run on the CPU only and do not checkpoint (their actors act "
            "while the learner learns, in worker processes): keep device=cpu, "
            f"checkpoint.interval=0 and resume=null; got {settings}."
        )
    check_config(
        cfg,
        positive=[
            "collector.total_frames", "collector.frames_per_batch", "collector.workers",
            "replay_buffer.size", "replay_buffer.chunk_len", "optim.lr", "optim.batch_size",
            "optim.updates_per_batch", "accerl.kl_bound", "accerl.ship_every",
            "logger.report_every", *positive,
        ],
        non_negative=["collector.init_random_frames", "seer.freeze_at"],
        choices={"seer.latent_dtype": ["int8", "bf16", "fp16"]},
    )  # fmt: skip
    if cfg.seer.max_capacity is not None:
        check_config(cfg, positive=["seer.max_capacity"])


def int8_latent_replay(cfg: DictConfig) -> LatentReplayOptions:
    """The SEER migration's options: quantized latents in a ``QuantizedStorage``, sized by bytes.

    The capacity comes from the bytes the pixel storage holds at the freeze (capped by
    ``cfg.seer.max_capacity``).
    """
    return LatentReplayOptions(
        max_capacity=cfg.seer.max_capacity,
        storage_factory=functools.partial(
            QuantizedStorage, keys=LATENT_KEYS, dtype=cfg.seer.latent_dtype
        ),
        progress=False,
    )


@torch.no_grad()
def actor_step_ms(policy: torch.nn.Module, example: TensorDictBase, *, repeats: int = 50) -> float:
    """Median milliseconds of one call of ``policy`` on ``example`` (the actors' batch shape)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        policy(example.clone())
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def make_actors(
    cfg: DictConfig,
    make_env: Callable[[int], Any],
    policy: torch.nn.Module,
    example: TensorDictBase,
    *,
    compressed: bool,
    compression_view: torch.nn.Module | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The actors: ``cfg.collector.workers`` processes acting while the learner learns.

    Worker ``i``'s environment is built with the seed ``cfg.seed + 1000 * i``.

    Args:
        cfg: the recipe's configuration (``collector.*`` and ``accerl.*`` are read).
        make_env: ``make_env(seed=...)`` builds one worker's environment.
        policy: the learner's acting policy.
        example: an observation at the actors' batch shape (auto compression is timed on it).

    Keyword Args:
        compressed: act with a :class:`~torchrl_seer.collectors.CompressedPolicy` whose weights
            travel as compressed packets, or with ``policy`` itself.
        compression_view: the probabilistic policy ``select_compression`` compares (defaults
            to ``policy``).

    Returns:
        A TorchRL ``MultiAsyncCollector`` and a record of the actors (compression, why, and the
        median policy step time at batch 1).
    """
    actors: dict[str, Any] = {"batch": 1, "compression": "fp32 (uncompressed)"}
    weight_sync = None
    actor_policy = policy
    if compressed:
        view = compression_view if compression_view is not None else policy
        compressor, actors["reason"] = choose_compressor(
            cfg.accerl.compression, view, example, kl_bound=cfg.accerl.kl_bound
        )
        actors["compression"] = compressor.spec()
        actor_policy = CompressedPolicy(policy, compressor)
        weight_sync = CompressedWeightSyncScheme(compressor)
    actors["step_ms"] = actor_step_ms(actor_policy, example)
    collector = MultiAsyncCollector(
        [
            functools.partial(make_env, seed=cfg.seed + WORKER_SEED_STRIDE * worker)
            for worker in range(cfg.collector.workers)
        ],
        policy=actor_policy,
        frames_per_batch=cfg.collector.frames_per_batch,
        total_frames=cfg.collector.total_frames,
        init_random_frames=cfg.collector.init_random_frames,
        weight_sync_schemes={"policy": weight_sync} if weight_sync is not None else None,
    )
    return collector, actors


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
        actors: what :func:`make_actors` says of the actors.
        seeds: what :func:`~torchrl_seer.trainers.helpers.seed_everything` seeded.
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
    ) -> None:
        self.run = run
        self.replay_buffer = replay_buffer
        self.freeze_hook = freeze_hook
        self.frames_per_step = frames_per_step
        self.report_every = run.cfg.logger.report_every
        self.title = title
        self.actors = actors
        self.seeds = {**seeds, "environment": f"{run.cfg.seed} + 1000 x actor worker"}
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
            "replay": list(self.replay),
            "update_seconds": list(self.update_seconds),
            "wall_seconds": self.wall_seconds,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the records of :meth:`state_dict`."""
        self.steps = state_dict["steps"]
        self.episodes.load_state_dict(state_dict["episodes"])
        self.replay = [tuple(r) for r in state_dict["replay"]]
        self.update_seconds = [tuple(u) for u in state_dict["update_seconds"]]
        self.start = time.perf_counter() - state_dict["wall_seconds"]

    def register(self, trainer: Trainer, name: str = "run_record") -> None:
        """Registers the batch and post-steps records."""
        trainer.register_op("batch_process", self.record_batch)
        trainer.register_op("post_steps", self.post_steps)
        trainer.register_module(name, self)


def make_trainer(
    cfg: DictConfig,
    collector: Any,
    loss: torch.nn.Module,
    stepper: Any,
    *,
    record: RunRecord,
    stored_keys: list,
    policy: torch.nn.Module,
    batch_ops: tuple[Callable[[TensorDictBase], TensorDictBase], ...] = (),
) -> Trainer:
    """TorchRL's ``Trainer`` counting agent steps, with the hooks both recipes use, in order.

    The hooks: the run record first (it reads episode returns before keys are dropped), then
    ``batch_ops``, TorchRL's ``SelectKeys`` (``stored_keys``), the record's freeze hook
    (restored before the replay buffer it re-shapes), TorchRL's ``ReplayBufferTrainer`` on the
    record's replay buffer and ``UpdateWeights`` (shipping the learner's ``policy`` to the
    actors every ``accerl.ship_every`` batches). The Trainer logs nothing itself: the record
    logs every scalar at environment frames through the run's logger.
    """
    trainer = Trainer(
        collector=collector,
        total_frames=cfg.collector.total_frames,
        frame_skip=1,  # the Trainer counts agent steps
        optim_steps_per_batch=cfg.optim.updates_per_batch,
        loss_module=loss,
        optimization_stepper=stepper,
        logger=None,
        progress_bar=True,
        save_trainer_interval=10**12,
    )
    record.register(trainer)
    for op in batch_ops:
        trainer.register_op("batch_process", op)
    SelectKeys(stored_keys).register(trainer)
    if record.freeze_hook is not None:
        record.freeze_hook.register(trainer)
    ReplayBufferTrainer(record.replay_buffer, flatten_tensordicts=False).register(trainer)
    ship_every = cfg.accerl.ship_every
    UpdateWeights(collector, ship_every, policy_weights_getter=lambda: policy).register(trainer)
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
    notes = [f"Actor compression: {actors['reason']}."] if actors.get("reason") else []
    if freeze:
        notes += ["", _freeze_note(freeze)] if notes else [_freeze_note(freeze)]
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
